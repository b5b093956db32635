"""Stage ``refine``: the real accuracy of every front member (the torch reference of the
run's glue on the held-out data: ``fake_quant(..., integer_only=True)`` for the integer
glue) replaces the sensitivity proxy; and the fp32 accuracy (``stages/refine.json``).
Depends on the front, the weights, the calibration and evaluation data and the glue."""

from __future__ import annotations

from typing import Any

from tvm_mpq.tuner.checkpoint import read_json, write_json
from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.state import TuneState

__all__ = ["RefineStage", "load_front"]


def load_front(path: str, state: TuneState) -> bool:
    """Put a saved refined front (and the fp32 accuracy) on ``state``; False if unusable."""
    from tvm_mpq.search.front import SearchResult

    d = read_json(path, "refined front")
    if not isinstance(d, dict) or "front" not in d:
        return False
    state.refined = SearchResult.from_dict(d["front"])
    state.fp32_accuracy = d["fp32_accuracy"]
    return True


def save_front(path: str, state: TuneState) -> None:
    """Write the state's refined front and fp32 accuracy."""
    write_json(path, {"fp32_accuracy": state.fp32_accuracy, "front": state.refined.to_dict()})


class RefineStage(Stage):
    """Measured accuracy of the front members (dominated ones kept for repair)."""

    name = "refine"
    depends = ("search",)

    def inputs(self, state: TuneState) -> dict[str, Any]:
        fp = state.data_fingerprints
        return {"weights": fp["weights"], "calib": fp["calib"], "eval": fp["eval"],
                "glue": state.glue}

    def load(self, state: TuneState, workdir: str) -> bool:
        return load_front(stage_file(workdir, self.name), state)

    def run(self, state: TuneState) -> None:
        from tvm_mpq.quant.plan import QuantPlan
        from tvm_mpq.search.refine import refine

        state.fp32_accuracy = state.accuracy_of(state.forward(QuantPlan.fp32(state.model)),
                                                state.n_eval)
        state.refined = refine(state.front, state.plan_accuracy, baseline=state.fp32_accuracy,
                               keep_dominated=True, progress=state.progress)

    def save(self, state: TuneState, workdir: str) -> None:
        save_front(stage_file(workdir, self.name), state)
