"""Stage ``final``: the chosen plan and the baselines measured end to end -- the standalone
artifact run on a bare-metal runner (whole-model cost), or the model run on a board, and
accuracy through the TVM-compiled model (on the board where there is one), all compiled
with the run's glue -- and the
:class:`~tvm_mpq.tuner.result.TuneResult`, saved with its report to ``workdir/result``."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from typing import Any

import torch

from tvm_mpq.tuner.result import PlanPoint, TuneResult, load_result
from tvm_mpq.tuner.stages.base import Stage
from tvm_mpq.tuner.state import TuneState

__all__ = ["FinalStage", "best_uniform", "measure_end_to_end", "outcome_message"]

log = logging.getLogger(__name__)


def measure_end_to_end(state: TuneState, p: PlanPoint, compiled_eval: bool) -> None:
    """Whole-model cost and memory figures of the standalone artifact (bare-metal runners;
    :func:`~tvm_mpq.tuner.memory.standalone_point`, reused when the memory check already
    built it) and accuracy through the compiled model, recorded on ``p`` (a failure is noted
    on it, not raised)."""
    from tvm_mpq.compiler.compiled import compile as mpq_compile
    from tvm_mpq.tuner.memory import memory_problem, standalone_point
    from tvm_mpq.tuner.stages.beacons import load_qat

    if state.runner.bare_metal and p.model_cost is None:
        standalone_point(state, p, os.path.join(state.workdir, "standalone", p.label))
        why = memory_problem(state, p)
        if why is not None and p.meets_constraints:
            p.meets_constraints = False
            p.notes = (p.notes + f" does not fit: {why}").strip()
    try:
        x1 = state.example_inputs[0][:1]
        m_p, qp_p = load_qat(p.qat_dir) if p.qat_dir else (state.model, state.qparams(p.plan))
        if state.runner.times_models and p.model_cost is None:  # e.g. a board: run it there
            cm = mpq_compile(m_p, (x1,), p.plan, state.profile, qparams=qp_p, glue=state.glue,
                             schedule_for=state.schedule_for)
            p.model_cost = state.runner.time_model(cm, x1.numpy())
        if compiled_eval:
            _compiled_accuracy(state, p, m_p, qp_p, x1)
        if p.drop_se is None and state.eval_fn is None and p.drop is not None:
            from tvm_mpq.tuner.plans import full_plan

            fwd = state.forward(full_plan(p.plan, state.model), m_p, qp_p)
            p.drop_se = state.drop_se(state.outcomes(fwd, state.n_eval))
    except Exception as e:  # record the failure on the point; the others still run
        log.warning("final measurement of %s failed: %s", p.label, e)
        p.notes += f" final measurement failed: {type(e).__name__}: {e}"
    if state.progress:
        print(f"[tvm-mpq]   {p.label}: whole-model {p.model_cost} {state.unit}, RAM "
              f"{p.ram_bytes}, flash {p.flash_bytes} bytes, compiled accuracy "
              f"{p.compiled_accuracy}", flush=True)


def _compiled_accuracy(state: TuneState, p: PlanPoint, model: Any, qparams: Any,
                       x1: torch.Tensor) -> None:
    """Accuracy of ``p`` through the TVM-compiled model, batches of 64: on the runner's
    device where it runs whole models (a board: the board's own outputs), else a host
    build of the same plan (the same numbers: the compiled model is exact)."""
    from tvm_mpq.compiler.compiled import compile as mpq_compile

    batch = (torch.zeros(64, *x1.shape[1:]),)
    if state.runner.times_models:
        cm = mpq_compile(model, batch, p.plan, state.profile, qparams=qparams, glue=state.glue,
                         schedule_for=state.schedule_for)
        remote = state.runner.remote_model(cm)
        if remote is not None:
            with remote as device:
                _record_accuracy(state, p, device.predict)
            p.notes = (p.notes + " compiled accuracy through the board").strip()
            return
    cmb = mpq_compile(model, batch, p.plan, "host", qparams=qparams, glue=state.glue)
    _record_accuracy(state, p, cmb.predict)  # (pads the last batch)


def _record_accuracy(state: TuneState, p: PlanPoint, predict: Any) -> None:
    """``p``'s compiled accuracy and, with eval_data, its drop's standard error from the
    same per-image outcomes (no second pass)."""
    if state.eval_fn is not None:
        p.compiled_accuracy = state.accuracy_of(predict, state.n_eval)
        return
    out = state.outcomes(predict, state.n_eval)
    p.compiled_accuracy = float(out.mean())
    p.drop_se = state.drop_se(out)


def best_uniform(baselines: dict[str, PlanPoint]) -> PlanPoint | None:
    """The strongest uniform baseline: the cheaper of uniform fp32 and uniform w8a8 (each
    layer's fastest 8-bit kernel), by whole-model cost where both were run end to end, else
    by summed measured cost; a copy labelled ``best_uniform`` (None: neither has a cost)."""
    cands = [baselines[k] for k in ("fp32", "w8a8") if k in baselines]
    key = "model_cost" if cands and all(p.model_cost for p in cands) else "measured_cost"
    costed = [p for p in cands if getattr(p, key)]
    if not costed:
        return None
    p = min(costed, key=lambda q: getattr(q, key))
    return replace(p, label="best_uniform", notes=(
        f"uniform {p.label}: the cheaper of fp32 and w8a8 by {key.replace('_', ' ')} "
        + p.notes).strip())


def _ratios(best: PlanPoint, baselines: dict[str, PlanPoint], key: str, fmt: str) -> list[str]:
    """``best``'s cost over best_uniform's, int8's and w8a8's (those that have one)."""
    out = []
    for k in ("best_uniform", "int8", "w8a8"):
        p = baselines.get(k)
        if p is None or not getattr(p, key):
            continue
        what = f"uniform {k}"
        if k == "best_uniform":
            src = next((u for u in ("fp32", "w8a8") if u in baselines and baselines[u].plan == p.plan), "?")
            what = f"best uniform = {src}"
        out.append(f"{getattr(best, key) / getattr(p, key):{fmt}}x {what}")
    return out


def outcome_message(state: TuneState) -> str:
    """The best plan's cost against the strongest uniform baseline, then the uniform 8-bit
    ones (and the glue every plan is compiled with), or why no plan meets the budgets."""
    best, baselines, b = state.best, state.baselines, state.config.budgets
    if best is not None:
        ratios = _ratios(best, baselines, "measured_cost", ".2f") if best.measured_cost else []
        note = f" [{state.runner.unit_note}]" if state.runner.unit_note else ""
        return (f"best plan ({state.glue} glue): {best.measured_cost:.4g} {state.unit}{note} "
                f"({', '.join(ratios)})" if ratios else f"best plan found ({state.glue} glue){note}")
    closest = min(state.pareto, key=lambda p: p.drop if p.drop is not None else math.inf,
                  default=None)
    return ("no plan meets the constraints (max accuracy drop "
            f"{b.max_accuracy_drop} points"
            + (f", latency <= {b.latency_budget:g}" if b.latency_budget else "")
            + (f", size <= {b.size_budget:g} B" if b.size_budget else "")
            + (f", RAM <= {b.ram_budget:g} B" if b.ram_budget else "")
            + (f", flash <= {b.flash_budget:g} B" if b.flash_budget else "") + ")"
            + (f"; the most accurate front plan drops {closest.drop * 100:.2f} points"
               if closest and closest.drop is not None else "")
            + "; the front is returned anyway")


def _noise_note(state: TuneState) -> str:
    """A warning for the message when the best plan's drop has a standard error over half
    the accuracy budget: its images cannot tell a plan within the budget from one over it
    (the search's choices near the budget are then chosen by noise)."""
    best, budget = state.best, state.config.budgets.max_accuracy_drop
    if best is None or best.drop_se is None or not budget or 200 * best.drop_se <= budget:
        return ""
    n = len(state.fp32_outcomes)
    need = math.ceil(n * (400 * best.drop_se / budget) ** 2)
    return (f"; caution: on {n} evaluation images the best plan's drop is "
            f"{100 * best.drop:.2f} ± {100 * best.drop_se:.2f} points (one standard error), "
            f"noise comparable to the {budget:g}-point budget: about {need} images would "
            "bring the error to a quarter of it")


class FinalStage(Stage):
    """``state.result``; depends on every setting (the result records them all)."""

    name = "final"
    depends = ("beacons", "cost model report")

    def inputs(self, state: TuneState) -> dict[str, Any]:
        return {"config": state.config.to_dict()}

    def load(self, state: TuneState, workdir: str) -> bool:
        try:
            state.result = load_result(os.path.join(workdir, "result"))
        except (OSError, ValueError) as e:
            log.warning("%s; finishing the run again", e)
            return False
        state.result.workdir = workdir
        return True

    def run(self, state: TuneState) -> None:
        best, baselines, m = state.best, state.baselines, state.config.measure
        baselines.pop("best_uniform", None)  # (a copy: chosen again from the measured ones)
        if m.final_measure:
            for p in [best, *baselines.values()]:
                if p is not None:
                    measure_end_to_end(state, p, m.compiled_eval)
        bu = best_uniform(baselines)
        if bu is not None:
            baselines["best_uniform"] = bu
        message = outcome_message(state)
        if m.final_measure and best is not None and best.model_cost:
            whole = _ratios(best, baselines, "model_cost", ".3f")
            if whole:
                message += f"; whole model {best.model_cost:.4g} {state.unit} ({', '.join(whole)})"
        message += _noise_note(state)
        settings = {**state.config.to_dict(),
                    "measured_kernels": state.db.count(state.profile.name, state.runner.backend)}
        state.result = TuneResult(state.pareto, best, baselines, message, state.profile.name,
                                  state.runner.backend, state.unit, state.fp32_accuracy,
                                  state.costmodel_report, state.timings, settings, state.workdir,
                                  state.model, state.example_inputs, state.calib)

    def save(self, state: TuneState, workdir: str) -> None:
        d = os.path.join(workdir, "result")
        state.result.save(d)
        try:
            state.result.report(d)
        except Exception as e:  # a plotting problem must not lose the result
            log.warning("report failed: %s", e)
