"""Stage ``repair``: the cheapest near misses of the refined front (over the accuracy budget,
cheaper than every plan within it) get their bits raised one measured step at a time until
they meet it (:func:`tvm_mpq.search.refine.repair`; ``stages/repair.json``)."""

from __future__ import annotations

from typing import Any

from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.stages.refine import load_front, save_front
from tvm_mpq.tuner.state import TuneState

__all__ = ["RepairStage"]


class RepairStage(Stage):
    """Adds the repaired plans to the refined front (``repair_plans=0``: nothing to do)."""

    name = "repair"
    depends = ("refine",)

    def inputs(self, state: TuneState) -> dict[str, Any]:
        return {"repair_plans": state.config.search.repair_plans,
                "max_accuracy_drop": state.config.budgets.max_accuracy_drop}

    def load(self, state: TuneState, workdir: str) -> bool:
        return load_front(stage_file(workdir, self.name), state)

    def run(self, state: TuneState) -> None:
        from tvm_mpq.search.front import SearchResult
        from tvm_mpq.search.refine import repair

        n = state.config.search.repair_plans
        if n <= 0 or state.problem is None:
            return
        ref = state.refined
        fixed = repair(state.problem, ref, state.plan_accuracy,
                       max_drop=state.config.budgets.max_accuracy_drop / 100,
                       baseline=state.fp32_accuracy, max_members=n, progress=state.progress)
        if fixed:
            state.refined = SearchResult(ref.members + fixed, ref.feasible,
                                         ref.message + f" | repaired: {len(fixed)} plans raised "
                                         "into the accuracy budget", ref.n_gen, ref.n_evals,
                                         ref.objective_names, refined=True)

    def save(self, state: TuneState, workdir: str) -> None:
        save_front(stage_file(workdir, self.name), state)
