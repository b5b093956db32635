"""Stage ``search``: cost model + NSGA-II (or the DNAS / Free Bits search), with active
learning.

Each round fits the cost model on the measurements (``search/round<r>/costmodel.json``, the
measured set beside it: ``measured.json``), builds the problem (costs = measured where
measured, predicted elsewhere, + each layer's passes) and runs NSGA-II
(``search/round<r>/nsga_state.npz``, every generation); between rounds the kernels the
front uses are measured. A killed search resumes inside its round. ``search/stage.json``
stamps the round files with the stage's fingerprint: files of other inputs are set aside
(``search.stale``). The final front: ``stages/search.json``.

``search="dnas"`` / ``"hybrid"`` replace NSGA-II by the supernet sweep of
:mod:`tvm_mpq.search.dnas` (see :meth:`SearchStage.run`).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from tvm_mpq.measure.key import KernelKey
from tvm_mpq.tuner.checkpoint import read_json, set_aside, write_json
from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.state import TuneState

__all__ = ["SearchStage", "build_problem"]

log = logging.getLogger(__name__)


def budget_inputs(b: Any) -> dict[str, Any]:
    """The budgets the search sees (``flash_budget`` bounds the plan's packed weights, a
    lower bound of its artifact's flash; listed only when set, so that runs without it keep
    their checkpoints)."""
    out = {"latency_budget": b.latency_budget, "size_budget": b.size_budget}
    if b.flash_budget is not None:
        out["flash_budget"] = b.flash_budget
    return out


def build_problem(state: TuneState) -> Any:
    """The search problem of the state's cost model, measured set, sensitivity and budgets."""
    from tvm_mpq.search.problem import MPQProblem
    from tvm_mpq.tuner.costs import MeasuredFirst

    s, b = state.config.search, state.config.budgets
    return MPQProblem(state.table, MeasuredFirst(state.cm, state.measured, state.overhead), state.sens,
                      state.profile.name, bits=list(s.bits), variants=list(s.variants),
                      metric=state.sens.default_metric(),
                      max_latency=b.latency_budget, max_size=b.size_budget,
                      max_flash=b.flash_budget, layers=state.table.quantizable_names(),
                      # with a flash budget the kernel is a gene too: the fastest one may store
                      # its weights wider (swar w8a8: 4 bytes each, int8: 1)
                      search_variant=b.flash_budget is not None)


def _load_model(path: str) -> Any:
    """A round's cost model, or None (another feature schema: refit; unreadable: set aside)."""
    from tvm_mpq.costmodel.model import CostModel, CostModelMismatchError

    if not os.path.exists(path):
        return None
    try:
        return CostModel.load(path)
    except CostModelMismatchError as e:  # another feature schema: refit
        log.warning("%s; refitting the cost model", e)
    except (ValueError, KeyError, TypeError, OSError) as e:
        log.warning("unreadable cost model %s (%s): kept as %s, refitting", path, e, set_aside(path))
    return None


def _load_measured(path: str) -> dict[KernelKey, float] | None:
    d = read_json(path, "measured set")
    try:
        return None if d is None else {KernelKey(*k): float(v) for k, v in d}
    except (TypeError, ValueError) as e:
        log.warning("%s is not a measured set (%s): kept as %s", path, e, set_aside(path))
        return None


class SearchStage(Stage):
    """Cost model, search and active-learning rounds; times its parts itself ("cost model",
    "search", "active learning")."""

    name = "search"
    depends = ("measure", "sensitivity")
    timed = False

    def inputs(self, state: TuneState) -> dict[str, Any]:
        s, b = state.config.search, state.config.budgets
        out = {"bits": s.bits, "variants": s.variants, "pop_size": s.pop_size,
               "generations": s.generations, "active_rounds": s.active_rounds, "seed": s.seed,
               **budget_inputs(b)}
        if s.search != "nsga2":  # (only then: NSGA-II runs keep their checkpoints)
            out.update(search=s.search, dnas_cost=s.dnas_cost, dnas_steps=s.dnas_steps,
                       dnas_cost_weights=s.dnas_cost_weights,
                       train=state.data_fingerprints["train"])
        return out

    # ------------------------------------------------------------------ checkpoint
    def load(self, state: TuneState, workdir: str) -> bool:
        from tvm_mpq.search.front import SearchResult

        d = read_json(stage_file(workdir, self.name), "search checkpoint")
        stamp = read_json(os.path.join(workdir, "search", "stage.json"), "search stamp")
        if not isinstance(d, dict) or stamp != {"fingerprint": state.fingerprints[self.name]}:
            return False
        rdirs = [os.path.join(workdir, "search", f"round{r}") for r in range(int(d["round"]) + 1)]
        models = [_load_model(os.path.join(r, "costmodel.json")) for r in rdirs]
        measured = _load_measured(os.path.join(rdirs[-1], "measured.json"))
        if any(m is None for m in models) or measured is None:
            return False  # e.g. a round's model of another feature schema: search again
        state.cm, state.measured = models[-1], measured
        state.problem = build_problem(state)
        state.front = SearchResult.from_dict(d["front"])
        return True

    def save(self, state: TuneState, workdir: str) -> None:
        write_json(stage_file(workdir, self.name), {"round": self.last_round,
                                                    "front": state.front.to_dict()})

    def _claim(self, state: TuneState) -> str:
        """The search directory, emptied if its files belong to other inputs."""
        sdir = os.path.join(state.workdir, "search")
        stamp_path = os.path.join(sdir, "stage.json")
        want = {"fingerprint": state.fingerprints[self.name]}
        stamp = read_json(stamp_path, "search stamp")
        if stamp is not None and stamp != want:
            shutil.rmtree(sdir + ".stale", ignore_errors=True)
            os.replace(sdir, sdir + ".stale")
            log.warning("%s holds a search of other inputs: kept as %s.stale, searching again",
                        sdir, sdir)
        write_json(stamp_path, want)  # (a directory without a stamp: an older workdir, kept)
        return sdir

    # ------------------------------------------------------------------ rounds
    def _round_model(self, state: TuneState, rdir: str) -> None:
        """The round's cost model and measured set: reloaded (so a resumed run rebuilds the
        identical problem and its NSGA-II checkpoint applies), else fitted and saved."""
        from tvm_mpq.costmodel.model import CostModel

        cm_path, meas_path = os.path.join(rdir, "costmodel.json"), os.path.join(rdir, "measured.json")
        cm = _load_model(cm_path) if os.path.exists(meas_path) else None
        measured = _load_measured(meas_path) if cm is not None else None
        if cm is None or measured is None:
            cm = CostModel(seed=state.config.search.seed, schedule=state.schedule).fit(
                state.db.records(state.profile.name, state.runner.backend, status="ok"))
            measured = state.measured_costs()
            cm.save(cm_path)
            write_json(meas_path, [[list(k), v] for k, v in measured.items()], indent=None)
        state.cm, state.measured = cm, measured
        cm.save(os.path.join(state.workdir, "costmodel.json"))

    def _unmeasured(self, state: TuneState) -> list[Any]:
        """Kernels of the front's plans and of the uniform int8 / w4a4 plans not measured yet."""
        from tvm_mpq.search.problem import plan_queries
        from tvm_mpq.tuner.plans import uniform_plan

        prob, table = state.problem, state.table
        todo = [q for m in state.front.members for q in prob.plan_queries(m.plan, table)
                if q.key() not in state.measured]
        for base in ((8, 8, "int8"), (4, 4, None)):
            plan = uniform_plan(state.model, *base, prob)
            todo += [q for q in plan_queries(plan, table, state.profile.name)
                     if q.key() not in state.measured]
        return todo

    def run(self, state: TuneState) -> None:
        """The rounds. ``search="dnas"`` / ``"hybrid"``: the supernet sweep runs on the round-0
        costs (logits cached per cost weight in ``workdir/dnas/``, keyed on the supernet's
        settings, the problem, the weights and the data) and later rounds price the
        same plans again (the supernet is not retrained); hybrid raises free bits before
        pricing (its costly bits go down in the repair stage, on real accuracy)."""
        from tvm_mpq.search.dnas import price_plans
        from tvm_mpq.search.nsga import run_nsga

        s = state.config.search
        sdir = self._claim(state)
        plans = None
        for rnd in range(s.active_rounds + 1):
            self.last_round = rnd
            rdir = os.path.join(sdir, f"round{rnd}")
            os.makedirs(rdir, exist_ok=True)
            with state.timer("cost model"):
                self._round_model(state, rdir)
            with state.timer("search"):
                state.problem = build_problem(state)
                if s.search == "nsga2":
                    state.front = run_nsga(state.problem, pop_size=s.pop_size,
                                           n_gen=s.generations, seed=s.seed + rnd, workdir=rdir,
                                           progress=state.progress)
                else:
                    plans = plans or self._dnas_plans(state)
                    state.front = price_plans(state.problem, plans,
                                              f"{s.search} ({s.dnas_cost} cost)")
            if rnd == s.active_rounds:
                break
            with state.timer("active learning"):
                todo = self._unmeasured(state)
                if not todo:
                    break
                state.measure(todo)

    # ------------------------------------------------------------------ DNAS / Free Bits
    def _dnas_plans(self, state: TuneState) -> list[Any]:
        from tvm_mpq.quant.folding import fold_bn
        from tvm_mpq.quant.plan import QuantPlan
        from tvm_mpq.schedules.workload import workload_from_layer
        from tvm_mpq.search.dnas import DNASSettings, dnas_search, free_bits

        s, prob = state.config.search, state.problem
        settings = DNASSettings(steps=s.dnas_steps, cost_weights=s.dnas_cost_weights,
                                cost=s.dnas_cost, seed=s.seed)
        macs: dict[str, int] = {}
        for r in state.table:
            macs[r.name] = macs.get(r.name, 0) + workload_from_layer(r).macs

        def qparams_of(w: int, a: int) -> Any:
            return state.qparams(QuantPlan.uniform(state.model, w_bits=w, a_bits=a))

        refine = (lambda p: free_bits(prob, p)) if s.search == "hybrid" else None
        fp = state.data_fingerprints
        res = dnas_search(prob, fold_bn(state.model), qparams_of, state.train_data, settings,
                          macs=macs, workdir=os.path.join(state.workdir, "dnas"),
                          progress=state.progress, refine_plan=refine,
                          cache_key=[fp["weights"], fp["calib"], fp["train"]])
        return res.plans
