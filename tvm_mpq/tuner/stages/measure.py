"""Stage ``measure``: the measurement campaign -- a designed sample of (workload, variant,
bits) kernels measured through the runner (``measurements.sqlite``, every finished record
committed), and the passes the compiler adds around each layer's kernel
(``qdq_overhead.json``, bare-metal runners, per glue). Depends on the layer table, the
target, the runner, the design settings, the kernel and passes revisions and the glue (the
passes are the glue's)."""

from __future__ import annotations

import math
import os
from typing import Any

from tvm_mpq.tuner.checkpoint import read_json, write_json
from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.state import TuneState

__all__ = ["MeasureStage"]


class MeasureStage(Stage):
    """Initial measurements and the per-layer pass overhead."""

    name = "measure"
    depends = ("import",)

    def inputs(self, state: TuneState) -> dict[str, Any]:
        from tvm_mpq.measure.overhead import PASSES_REVISION
        from tvm_mpq.schedules import KERNELS_REVISION

        s, m = state.config.search, state.config.measure
        return {"profile": state.profile.name, "backend": state.runner.backend, "bits": s.bits,
                "variants": s.variants, "seed": s.seed, "budget": m.measure_budget,
                "prior": m.prior_workloads, "kernels": KERNELS_REVISION, "passes": PASSES_REVISION,
                "glue": m.glue, **({"tune_trials": m.tune_trials} if m.tune_trials else {})}

    def load(self, state: TuneState, workdir: str) -> bool:
        d = read_json(stage_file(workdir, self.name), "measurement checkpoint")
        if not isinstance(d, dict) or "overhead" not in d:
            return False
        # a database set aside (another kernel revision) or replaced has lost the campaign
        if state.db.count(state.profile.name, state.runner.backend) < d.get("n_records", 0):
            return False
        state.overhead = {k: float(v) for k, v in d["overhead"].items()}
        return True

    def run(self, state: TuneState) -> None:
        from tvm_mpq.costmodel.design import initial_design
        from tvm_mpq.measure.overhead import measure_qdq_overhead
        from tvm_mpq.tuner.contexts import layer_contexts

        s, m = state.config.search, state.config.measure
        bits, variants, table = list(s.bits), list(s.variants), state.table
        full = len(table.distinct_workloads()) * (1 + len(variants) * len(bits))
        # where every kernel is expensive to measure (a board), the default design is a
        # fraction of them; the cost model predicts the rest, active learning adds the front's
        budget = m.measure_budget or max(1, math.ceil(full * state.runner.design_fraction))
        design = initial_design(table, variants, bits, state.profile.name, budget, seed=s.seed)
        if m.prior_workloads > 0:
            from tvm_mpq.costmodel.prior import generic_workloads

            prior = generic_workloads(m.prior_workloads, seed=s.seed)
            design += initial_design(prior, variants, bits, state.profile.name,
                                     len(prior) * (1 + len(variants) * len(bits)), seed=s.seed)
        state.measure(design)
        # bare-metal runners only ({} otherwise); an unreadable cache is measured again. The
        # integer glue's passes depend on each layer's neighbours in the graph
        contexts = (layer_contexts(state.model, state.example_inputs[0])
                    if m.glue == "integer" and state.runner.bare_metal else None)
        state.overhead = measure_qdq_overhead(table, state.profile, state.runner,
                                              os.path.join(state.workdir, "qdq_overhead.json"),
                                              glue=m.glue, contexts=contexts)

    def save(self, state: TuneState, workdir: str) -> None:
        write_json(stage_file(workdir, self.name),
                   {"n_records": state.db.count(state.profile.name, state.runner.backend),
                    "overhead": state.overhead})
