"""Stage ``beacons``: choose the best plan.

With ``qat_beacons=k > 0`` (MOHAQ beacons): fine-tune ``k`` front plans spread over the
cost axis with quantization-aware training (``qat/<key>_s<steps>/``, keyed on the plan,
the weights, the calibration and training data and the seed), correct the others' accuracy
by the nearest beacon's gain, then fine-tune and verify candidates (cheapest first) until
one meets the accuracy budget. Without beacons: the cheapest front plan meeting the budgets.
With ``ram_budget`` / ``flash_budget``, a candidate must also fit them: its standalone
artifact is built and run for its exact figures (:mod:`tvm_mpq.tuner.memory`) when it is
considered, before it is fine-tuned.
``search="hybrid"`` (Free Bits) ends with learned-step fine-tuning: its beacons use LSQ,
at least :data:`HYBRID_BEACONS` of them.
Checkpoint: ``stages/beacons.json`` (the front with its QAT results, the best plan's index).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from tvm_mpq.tuner.checkpoint import digest, read_json, write_json
from tvm_mpq.tuner.memory import fits_memory
from tvm_mpq.tuner.result import PlanPoint
from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.state import TuneState

__all__ = ["HYBRID_BEACONS", "BeaconsStage", "choose_with_beacons", "load_qat", "qat_plan",
           "qat_point"]

#: fewest beacons of a ``search="hybrid"`` run (Free Bits fine-tunes its result)
HYBRID_BEACONS = 2


def qat_plan(state: TuneState) -> tuple[int, str]:
    """``(beacons, method)`` of the run: ``qat_beacons`` / ``qat``, or for
    ``search="hybrid"`` at least :data:`HYBRID_BEACONS` beacons fine-tuned with LSQ."""
    q = state.config.qat
    if state.config.search.search == "hybrid":
        return max(q.beacons, HYBRID_BEACONS), "lsq"
    return q.beacons, q.method


def load_qat(directory: str) -> tuple[torch.nn.Module, Any]:
    """The fine-tuned model and its quantization parameters saved by :func:`qat_point`."""
    from tvm_mpq.quant.qparams import QuantParams

    model = torch.load(os.path.join(directory, "model.pt"), weights_only=False)
    return model, QuantParams.load(os.path.join(directory, "qparams"))


def qat_point(state: TuneState, point: PlanPoint) -> None:
    """Fine-tune ``point``'s plan (cached in ``workdir/qat/``) and record its real accuracy
    on the point; a fine-tuned model less accurate than the point's post-training one is
    not adopted (the point keeps its PTQ accuracy and says so in its notes)."""
    from tvm_mpq.quant.qat import qat_finetune

    fp, q = state.data_fingerprints, state.config.qat
    seed = state.config.search.seed
    _, method = qat_plan(state)
    key = digest(point.plan.to_dict(), fp["weights"], fp["calib"], fp["train"], seed)
    tag = "" if method == "fixed" else f"_{method}"  # fixed keeps older caches valid
    d = os.path.join(state.workdir, "qat", f"{key[:12]}_s{q.steps}{tag}")
    if not os.path.exists(os.path.join(d, "done")):
        ft, qp = qat_finetune(state.model, point.plan, state.calib, state.train_data,
                              qparams=state.qparams(point.plan), steps=q.steps, seed=seed,
                              progress=state.progress, method=method)
        os.makedirs(d, exist_ok=True)
        torch.save(ft, os.path.join(d, "model.pt"))
        qp.save(os.path.join(d, "qparams"))
        open(os.path.join(d, "done"), "w").close()
    ft, qp = load_qat(d)
    if not qp.tensors:  # integer-only inference needs the fine-tuned model's tensor ranges
        qp.tensors = _tensor_ranges(ft, state.calib)
        qp.save(os.path.join(d, "qparams"))
    acc = float(state.accuracy_of(state.forward(point.plan, ft, qp), state.n_eval))
    if point.accuracy is not None and acc < point.accuracy:
        # fine-tuning made it worse (e.g. a near-lossless plan): the PTQ model is kept
        point.notes = (point.notes + f" QAT fine-tuned to {100 * acc:.2f}%: worse, "
                       "PTQ kept").strip()
        return
    point.qat_dir = d
    point.accuracy = acc
    point.drop = state.fp32_accuracy - point.accuracy
    point.notes = (point.notes + " QAT fine-tuned").strip()


def _tensor_ranges(model: torch.nn.Module, calib: Any) -> dict[str, tuple[float, float]]:
    """The observed value ranges of a fine-tuned model on the calibration data (what
    :func:`~tvm_mpq.quant.calibration.calibrate` stores in ``QuantParams.tensors``)."""
    from tvm_mpq.quant.exported import observe_tensor_ranges
    from tvm_mpq.quant.folding import fold_bn
    from tvm_mpq.quant.observers import iter_batches

    return observe_tensor_ranges(fold_bn(model).eval(), iter_batches(calib, 64))


def choose_with_beacons(state: TuneState) -> PlanPoint | None:
    """MOHAQ beacons over ``state.pareto`` (see the module docstring); the chosen plan, or
    None."""
    from tvm_mpq.quant.qat import beacon_correction

    k, max_drop_pt = qat_plan(state)[0], state.config.budgets.max_accuracy_drop
    cands = sorted([p for p in state.pareto if p.measured_cost is not None
                    and p.plan.quantized_layers()], key=lambda p: p.measured_cost)
    if not cands:
        return None
    idx = sorted({int(round(i)) for i in np.linspace(0, len(cands) - 1, min(k, len(cands)))})
    beacons = []
    for i in idx:
        p = cands[i]
        ptq = p.accuracy
        qat_point(state, p)
        beacons.append((p.plan, ptq, p.accuracy))
    tried = {id(cands[i]) for i in idx}  # (a rejected fine-tuning leaves qat_dir None)
    others = [p for p in cands if id(p) not in tried]
    for p, est in zip(others, beacon_correction([p.accuracy for p in others],
                                                [p.plan for p in others], beacons), strict=True):
        p.estimated_accuracy = est

    def meets(p: PlanPoint) -> bool:  # measured accuracy (PTQ, or QAT for beacons)
        return p.drop is not None and p.drop * 100 <= max_drop_pt + 1e-9

    budget = k  # verification runs allowed on top of the beacons
    for p in cands:  # cheapest first
        if not meets(p) and id(p) not in tried and budget > 0:
            est = p.estimated_accuracy
            if est is not None and (state.fp32_accuracy - est) * 100 <= max_drop_pt + 1e-9 \
                    and fits_memory(state, p):
                budget -= 1  # the estimate says QAT would make it: fine-tune and verify
                tried.add(id(p))
                qat_point(state, p)
        if meets(p) and fits_memory(state, p):
            p.meets_constraints = True
            return p
    return None


class BeaconsStage(Stage):
    """``state.best``: labelled "best", one of ``state.pareto`` (or None)."""

    name = "beacons"
    depends = ("price",)

    def inputs(self, state: TuneState) -> dict[str, Any]:
        q = state.config.qat
        b = state.config.budgets
        beacons, method = qat_plan(state)
        mem = {k: v for k, v in (("ram_budget", b.ram_budget), ("flash_budget", b.flash_budget))
               if v is not None}  # absent when unset: older checkpoints stay valid
        if method != "fixed":
            mem["method"] = method
        if beacons > 0:  # fine-tuning that loses accuracy is not adopted (since session 9)
            mem["keep_better"] = True
        return {**mem, "beacons": beacons, "steps": q.steps, "seed": state.config.search.seed,
                "train": state.data_fingerprints["train"] if beacons > 0 else None}

    def load(self, state: TuneState, workdir: str) -> bool:
        d = read_json(stage_file(workdir, self.name), "best plan")
        if not isinstance(d, dict) or "pareto" not in d:
            return False
        state.pareto = [PlanPoint.from_dict(p) for p in d["pareto"]]
        state.best = None if d["best"] is None else state.pareto[int(d["best"])]
        return True

    def run(self, state: TuneState) -> None:
        if qat_plan(state)[0] > 0:
            best = choose_with_beacons(state)
        else:
            feasible = sorted([p for p in state.pareto if p.meets_constraints
                               and p.measured_cost is not None], key=lambda p: p.measured_cost)
            best = next((p for p in feasible if fits_memory(state, p)), None)
        if best is not None:
            best.label = "best"
        state.best = best

    def save(self, state: TuneState, workdir: str) -> None:
        best = next((i for i, p in enumerate(state.pareto) if p is state.best), None)
        write_json(stage_file(workdir, self.name),
                   {"pareto": [p.to_dict() for p in state.pareto], "best": best})
