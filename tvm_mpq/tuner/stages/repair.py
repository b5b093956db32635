"""Stage ``repair``: the cheapest near misses of the refined front (over the accuracy budget,
cheaper than every plan within it) get their bits raised one measured step at a time until
they meet it (:func:`tvm_mpq.search.refine.repair`; ``stages/repair.json``).

With ``search="hybrid"`` (Free Bits) the cheapest plan within the budget then has its costly
bits lowered while its real accuracy stays within it
(:func:`tvm_mpq.search.dnas.lower_costly_bits`, at most :data:`LOWER_EVALS` evaluations);
the lowered plan joins the front. With ``eval_data`` a lowering is kept only while the drop
plus :data:`LOWER_CONFIDENCE` standard errors (per-image outcomes paired with fp32's) stays
within the budget: the step tests up to a dozen neighbours at the budget's edge on the same
images, and keeping whichever passes by the point estimate selects noise (MobileNetV2 on
1000 Fashion-MNIST images, rv64gc_zbb: a lowering kept at 0.80 points dropped 1.20 on 5000
unseen images; its start plan, 0.70, dropped 0.80)."""

from __future__ import annotations

from typing import Any

from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.tuner.checkpoint import digest
from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.stages.refine import load_front, save_front
from tvm_mpq.tuner.state import TuneState

__all__ = ["LOWER_CONFIDENCE", "LOWER_EVALS", "DropBound", "RepairStage", "drop_bound"]

#: accuracy evaluations Free Bits' "costly bits down" may spend on the cheapest plan
LOWER_EVALS = 12
#: standard errors of the drop a lowered plan must keep within the budget (see the module)
LOWER_CONFIDENCE = 1.0


class DropBound:
    """``plan -> drop + z * its standard error`` (fractions) on the run's evaluation images;
    with ``eval_fn`` (no per-image outcomes) the drop itself. ``accuracy`` keeps every
    evaluated plan's accuracy (keyed by the digest of the plan), so the kept plan is not
    evaluated again."""

    def __init__(self, state: TuneState, z: float) -> None:
        self.state, self.z = state, z
        self.accuracy: dict[str, float] = {}

    def __call__(self, plan: QuantPlan) -> float:
        from tvm_mpq.tuner.plans import full_plan

        st = self.state
        if st.eval_fn is not None:
            acc, se = st.plan_accuracy(plan), None
        else:
            out = st.outcomes(st.forward(full_plan(plan, st.model)), st.n_eval)
            acc, se = float(out.mean()), st.drop_se(out)  # (se None on a single image)
        self.accuracy[digest(plan.to_dict())] = acc
        return st.fp32_accuracy - acc + self.z * (se or 0.0)


def drop_bound(state: TuneState, z: float) -> DropBound:
    """``plan -> drop + z * its standard error`` (fractions) on the run's evaluation images;
    with ``eval_fn`` (no per-image outcomes) the drop itself (:class:`DropBound`)."""
    return DropBound(state, z)


class RepairStage(Stage):
    """Adds the repaired plans to the refined front (``repair_plans=0``: nothing to do)."""

    name = "repair"
    depends = ("refine",)

    def inputs(self, state: TuneState) -> dict[str, Any]:
        out = {"repair_plans": state.config.search.repair_plans,
               "max_accuracy_drop": state.config.budgets.max_accuracy_drop}
        if state.config.search.search == "hybrid":  # (only then: older checkpoints stay valid)
            out.update(search="hybrid", lower_evals=LOWER_EVALS,
                       lower_confidence=LOWER_CONFIDENCE)
        return out

    def load(self, state: TuneState, workdir: str) -> bool:
        return load_front(stage_file(workdir, self.name), state)

    def run(self, state: TuneState) -> None:
        n = state.config.search.repair_plans
        if state.problem is None:
            return
        if n > 0:
            self._repair(state, n)
        if state.config.search.search == "hybrid":
            self._lower_costly(state)

    def _repair(self, state: TuneState, n: int) -> None:
        from tvm_mpq.search.front import SearchResult
        from tvm_mpq.search.refine import repair

        ref = state.refined
        fixed = repair(state.problem, ref, state.plan_accuracy,
                       max_drop=state.config.budgets.max_accuracy_drop / 100,
                       baseline=state.fp32_accuracy, max_members=n, progress=state.progress)
        if fixed:
            state.refined = SearchResult(ref.members + fixed, ref.feasible,
                                         ref.message + f" | repaired: {len(fixed)} plans raised "
                                         "into the accuracy budget", ref.n_gen, ref.n_evals,
                                         ref.objective_names, refined=True)

    def _lower_costly(self, state: TuneState) -> None:
        """Free Bits' costly bits down on the cheapest plan within the accuracy budget."""
        from tvm_mpq.search.dnas import lower_costly_bits
        from tvm_mpq.search.front import SearchResult, measured_member

        ref, prob = state.refined, state.problem
        max_drop = state.config.budgets.max_accuracy_drop / 100
        ok = [m for m in ref.members if m.drop is not None and m.drop <= max_drop]
        if not ok:
            return
        start = min(ok, key=lambda m: m.latency)
        fp32 = state.fp32_accuracy
        guarded = state.eval_fn is None  # the start's bound is measured (one of the evals)
        bound = drop_bound(state, LOWER_CONFIDENCE)
        plan = lower_costly_bits(prob, start.plan, bound, max_drop, max_evals=LOWER_EVALS,
                                 start_drop=None if guarded else start.drop)
        if plan == start.plan:
            return
        acc = bound.accuracy.get(digest(plan.to_dict()))  # (the kept plan was one of the evals)
        m = measured_member(prob, plan, state.plan_accuracy(plan) if acc is None else acc,
                            fp32)
        state.refined = SearchResult(ref.members + [m], ref.feasible,
                                     ref.message + " | costly bits lowered (Free Bits)",
                                     ref.n_gen, ref.n_evals, ref.objective_names, refined=True)

    def save(self, state: TuneState, workdir: str) -> None:
        save_front(stage_file(workdir, self.name), state)
