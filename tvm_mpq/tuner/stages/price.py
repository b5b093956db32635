"""Stage ``price``: every refined front plan and the baselines (fp32, uniform int8, w8a8,
w4a4) priced from measured kernels (the missing ones measured now) plus each layer's passes,
with real accuracy, weight bytes and the budgets checked; the front filtered to its measured
non-dominated plans (``stages/price.json``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.tuner.checkpoint import read_json, write_json
from tvm_mpq.tuner.result import PlanPoint
from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.state import TuneState

__all__ = ["PriceStage", "price"]


def price(state: TuneState, label: str, plan: QuantPlan, acc: float | None = None,
          proxy: float | None = None) -> PlanPoint:
    """One plan as a :class:`PlanPoint`: cost measured (its unmeasured kernels measured
    first) and predicted, accuracy (evaluated unless given), drop, size, budgets met.

    ``state.measured`` must hold the database's costs (:meth:`PriceStage.run` reads them
    once); it is read again only after this plan's missing kernels were measured."""
    from tvm_mpq.search.problem import plan_queries
    from tvm_mpq.tuner.costs import passes_cost

    qs = plan_queries(plan, state.table, state.profile.name)
    todo = [q for q in qs if q.key() not in state.measured]
    if todo:  # the database only changes when something is measured
        state.measure(todo)
        state.measured.update(state.measured_costs())
    extra = sum(passes_cost(q, state.overhead) for q in qs)
    pred = float(np.sum(state.cm(qs))) + extra
    meas = [state.measured.get(q.key()) for q in qs]
    mcost = (float(sum(meas)) + extra
             if all(v is not None and math.isfinite(v) for v in meas) else None)
    if acc is None:
        acc = state.accuracy_of(state.forward(plan), state.n_eval)
    drop = state.fp32_accuracy - acc
    size = float(plan.weight_bytes(state.table))
    b = state.config.budgets
    ok = (drop * 100 <= b.max_accuracy_drop + 1e-9
          and (b.latency_budget is None or (mcost if mcost is not None else pred) <= b.latency_budget)
          and (b.size_budget is None or size <= b.size_budget))
    notes = "" if mcost is not None else "a kernel of this plan failed to measure"
    return PlanPoint(label, plan, pred, mcost, None, acc, None, drop, proxy, size, ok, notes)


class PriceStage(Stage):
    """The priced front (``state.pareto``, cheapest first) and ``state.baselines``."""

    name = "price"
    depends = ("repair",)

    def inputs(self, state: TuneState) -> dict[str, Any]:
        b = state.config.budgets
        return {"max_accuracy_drop": b.max_accuracy_drop, "latency_budget": b.latency_budget,
                "size_budget": b.size_budget}

    def load(self, state: TuneState, workdir: str) -> bool:
        d = read_json(stage_file(workdir, self.name), "priced plans")
        if not isinstance(d, dict) or "pareto" not in d:
            return False
        state.pareto = [PlanPoint.from_dict(p) for p in d["pareto"]]
        state.baselines = {k: PlanPoint.from_dict(v) for k, v in d["baselines"].items()}
        return True

    def run(self, state: TuneState) -> None:
        from tvm_mpq.tuner.config import BASELINES
        from tvm_mpq.tuner.plans import full_plan, uniform_plan
        from tvm_mpq.tuner.result import pareto_points

        model = state.model
        state.measured.update(state.measured_costs())  # kernels measured since the search
        front = [price(state, "front", full_plan(m.plan, model), m.accuracy, m.proxy_drop)
                 for m in state.refined.members]
        # keep the measured non-dominated set (cost measured, drop, size), fastest first
        state.pareto = pareto_points(front)
        state.baselines = {
            name: price(state, name, QuantPlan.fp32(model), state.fp32_accuracy) if spec is None
            else price(state, name, uniform_plan(model, *spec, state.problem))
            for name, spec in BASELINES.items()}

    def save(self, state: TuneState, workdir: str) -> None:
        write_json(stage_file(workdir, self.name),
                   {"pareto": [p.to_dict() for p in state.pareto],
                    "baselines": {k: v.to_dict() for k, v in state.baselines.items()}})
