"""What :func:`tvm_mpq.tune` returns: a :class:`TuneResult` of :class:`PlanPoint` objects, saved to
``workdir/result`` and reloaded with :func:`load_result`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.targets import Profile

__all__ = ["PlanPoint", "TuneResult", "load_result", "pareto_points"]


@dataclass
class PlanPoint:
    """One evaluated plan.

    Attributes:
        label: "front", "best", or a baseline name ("fp32", "int8", "w8a8", "w4a4", and
            "best_uniform": a copy of the cheaper of fp32 and w8a8, the strongest uniform
            baseline, which the result message compares with first).
        predicted_cost: sum of the cost model's per-kernel predictions (measured kernels
            enter with their measured cost).
        measured_cost: sum of measured per-kernel costs plus each layer's measured passes
            for the run's glue (:mod:`tvm_mpq.measure.overhead`; None if a kernel failed or
            was not measured); instructions on simulators, seconds on wall-clock backends.
        model_cost: whole-model cost of the standalone artifact (instructions), if run.
        accuracy: accuracy on the held-out evaluation data (the glue's torch reference:
            ``fake_quant(..., integer_only=True)`` for the integer glue).
        compiled_accuracy: accuracy through the TVM-compiled model, if evaluated.
        drop: fp32 accuracy minus ``accuracy`` (fraction). With ``metric_mode="min"`` the
            accuracies are scores, minus ``eval_fn``'s value (higher is better), and the drop
            is the metric's increase.
        drop_se: standard error of ``drop`` (fraction) from the paired per-image outcomes of
            the plan and fp32 on the evaluation images (compiled model where it was
            evaluated, else the reference; :func:`~tvm_mpq.zoo.fashion_mnist.paired_drop_se`),
            set by the final stage on the best plan and the baselines; None with ``eval_fn``
            (a score has no per-image outcomes).
        proxy_drop: sensitivity proxy of the drop.
        size_bytes: weight bytes.
        ram_bytes, flash_bytes: the standalone artifact's exact RAM (data + bss + arena +
            measured stack) and flash (text + rodata + data), where it was built and run
            (the final stage's plans; front plans checked against ``ram_budget`` /
            ``flash_budget``): :mod:`tvm_mpq.tuner.memory`.
        memory: those and the other figures of
            :attr:`~tvm_mpq.deploy.StandaloneArtifact.memory` (arena, its lower bound,
            workspace, stack, code, weights).
        standalone_dir: the artifact's directory.
    """

    label: str
    plan: QuantPlan
    predicted_cost: float
    measured_cost: float | None = None
    model_cost: float | None = None
    accuracy: float | None = None
    compiled_accuracy: float | None = None
    drop: float | None = None
    proxy_drop: float | None = None
    size_bytes: float = 0.0
    meets_constraints: bool = False
    notes: str = ""
    qat_dir: str | None = None  # QAT-fine-tuned weights + qparams of this plan (beacons)
    estimated_accuracy: float | None = None  # PTQ accuracy corrected by the nearest beacon
    ram_bytes: float | None = None
    flash_bytes: float | None = None
    memory: dict[str, Any] | None = None
    standalone_dir: str | None = None
    drop_se: float | None = None

    @property
    def cost(self) -> float:
        """The measured cost where there is one, else the predicted one."""
        return self.measured_cost if self.measured_cost is not None else self.predicted_cost

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plan"] = self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanPoint:
        d = dict(d)
        d["plan"] = QuantPlan.from_dict(d["plan"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        pareto: the Pareto front (latency, accuracy drop, size), fastest first.
        best: the fastest front plan meeting the budgets (None if none does).
        baselines: fp32, uniform int8 (int8 kernels), uniform w8a8 (fastest 8-bit kernel per
            layer) and uniform w4a4 plans, measured the same way, and ``best_uniform``: the
            cheaper of fp32 and w8a8 (whole model where both ran end to end), the baseline
            the message compares the best plan with first.
        message: outcome in words (e.g. why no plan meets the constraints).
        profile, backend, cost_unit: where and how costs were measured.
        settings: the :class:`~tvm_mpq.tuner.config.TuneConfig` as a flat dict (with the
            ``glue`` of every compiled plan, see :attr:`glue`).
        costmodel_report: held-out accuracy of the cost model.
        timings: wall seconds per stage.
    """

    pareto: list[PlanPoint]
    best: PlanPoint | None
    baselines: dict[str, PlanPoint]
    message: str
    profile: str
    backend: str
    cost_unit: str
    fp32_accuracy: float | None = None
    costmodel_report: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    workdir: str | None = None
    _model: torch.nn.Module | None = field(default=None, repr=False)
    _example_inputs: Any = field(default=None, repr=False)
    _calib: Any = field(default=None, repr=False)

    @property
    def glue(self) -> str:
        """The glue the plans were priced, evaluated and compiled with (``settings["glue"]``;
        a result saved before the setting existed was made with the float glue)."""
        return str(self.settings.get("glue", "float"))

    def compile(self, plan: QuantPlan | None = None, target: str | Profile | None = None,
                glue: str | None = None, integer_io: bool = False):
        """Compile ``plan`` (default: :attr:`best`) for the tuned target (see
        :func:`tvm_mpq.compile`) with the tuned :attr:`glue` (or ``glue``): the model whose
        cost and accuracy the result reports. ``integer_io=True`` gives the model that takes
        input codes and returns output codes (integer glue; for an MCU firmware)."""
        from tvm_mpq.compiler.compiled import compile as mpq_compile

        glue = self.glue if glue is None else glue
        plan = self._plan_or_best(plan)
        model, qp = self._model_for(plan)
        kw: dict[str, Any] = {"qparams": qp} if qp is not None else {"calib_data": self._calib}
        return mpq_compile(model, self._example_inputs, plan, target or self.profile,
                           glue=glue, integer_io=integer_io,
                           schedule_for=self._tuned_schedules(target), **kw)

    def _tuned_schedules(self, target: Any) -> Any:
        """The run's tuned schedules (``tune_trials``) for its own target, else None."""
        from tvm_mpq.targets import get_profile

        trials = int(self.settings.get("tune_trials", 0) or 0)
        if trials <= 0 or self.workdir is None or (
                target is not None and get_profile(target).name != self.profile):
            return None
        from tvm_mpq.measure.tuned import tuned_schedule_provider
        from tvm_mpq.tuner.costs import open_db

        return tuned_schedule_provider(open_db(self.workdir), self.profile, self.backend, trials)

    def reference(self, compiled) -> torch.nn.Module:
        """The torch reference that a model from :meth:`compile` equals: ``fake_quant`` of
        the same (possibly fine-tuned) model, plan and quantization parameters, integer-only
        for the integer glue (see :func:`tvm_mpq.fake_quant`)."""
        from tvm_mpq.quant.fakequant import fake_quant

        model, _ = self._model_for(compiled.plan)
        if compiled.glue == "integer":
            return fake_quant(model, compiled.plan, qparams=compiled.qparams,
                              integer_only=True, integer_io=compiled.integer_io)
        return fake_quant(model, compiled.plan, qparams=compiled.qparams,
                          integer_accumulate=True)

    def _plan_or_best(self, plan: QuantPlan | None) -> QuantPlan:
        if plan is not None:
            return plan
        if self.best is None:
            raise ValueError(f"no plan met the constraints ({self.message}); pass one of "
                             "result.pareto[i].plan explicitly")
        return self.best.plan

    def _model_for(self, plan: QuantPlan) -> tuple[torch.nn.Module, Any]:
        """The model a plan compiles from and its quantization (None: calibrate), with the
        fine-tuned weights of a QAT'd plan."""
        for p in [*self.pareto, *([self.best] if self.best else [])]:
            if p.plan == plan and p.qat_dir:
                from tvm_mpq.tuner.stages.beacons import load_qat

                return load_qat(p.qat_dir)
        if self._model is None or self._calib is None:
            raise ValueError("this result has no model/calibration data attached; "
                             "load it with load_result(dir) from a saved tune() run")
        return self._model, None

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1, "message": self.message, "profile": self.profile,
            "backend": self.backend, "cost_unit": self.cost_unit,
            "fp32_accuracy": self.fp32_accuracy,
            "pareto": [p.to_dict() for p in self.pareto],
            "best": self.best.to_dict() if self.best else None,
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "costmodel_report": self.costmodel_report, "timings": self.timings,
            "settings": self.settings,
        }

    def save(self, directory: str) -> str:
        """Write ``result.json`` (+ the model and calibration inputs, so :func:`load_result`
        gives a result that can still :meth:`compile`)."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "result.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        if self._model is not None:
            torch.save({"model": self._model, "example_inputs": self._example_inputs,
                        "calib": self._calib}, os.path.join(directory, "model.pt"))
        return directory

    def report(self, directory: str | None = None) -> str:
        """Write plots (Pareto front, per-layer bits of the best plan) and ``summary.md``;
        returns the summary's path."""
        from tvm_mpq.tuner.report import write_report

        directory = directory or os.path.join(self.workdir or ".", "result")
        return write_report(self, directory)

    def table(self) -> str:
        """The Markdown table of baselines and chosen plans."""
        from tvm_mpq.tuner.report import summary_table

        return summary_table(self)


def load_result(directory: str) -> TuneResult:
    """Load a result saved by :meth:`TuneResult.save` (or ``tune(..., workdir=...)``).

    Raises:
        FileNotFoundError: no ``result.json`` in ``directory`` or ``directory/result``.
        ValueError: ``result.json`` is not a readable result (the message names the file).
    """
    path = os.path.join(directory, "result.json")
    if not os.path.exists(path) and os.path.exists(os.path.join(directory, "result", "result.json")):
        directory = os.path.join(directory, "result")
        path = os.path.join(directory, "result.json")
    try:
        with open(path) as f:
            d = json.load(f)
        res = TuneResult(
            [PlanPoint.from_dict(p) for p in d["pareto"]],
            PlanPoint.from_dict(d["best"]) if d.get("best") else None,
            {k: PlanPoint.from_dict(v) for k, v in d.get("baselines", {}).items()},
            d["message"], d["profile"], d["backend"], d["cost_unit"], d.get("fp32_accuracy"),
            d.get("costmodel_report", {}), d.get("timings", {}), d.get("settings", {}), directory)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a readable tune() result ({type(e).__name__}: {e}); "
                         "delete it (re-running tune() in its workdir rebuilds it)") from e
    mp = os.path.join(directory, "model.pt")
    if os.path.exists(mp):
        blob = torch.load(mp, weights_only=False)
        res._model, res._example_inputs, res._calib = blob["model"], blob["example_inputs"], blob["calib"]
    return res


def pareto_points(points: list[PlanPoint]) -> list[PlanPoint]:
    """The non-dominated points under (cost, accuracy drop, weight bytes), each plan once,
    cheapest first; cost is the measured one where there is one, else the predicted one."""
    from tvm_mpq.search.front import non_dominated

    F = np.asarray([[p.cost, p.drop or 0.0, p.size_bytes] for p in points], dtype=np.float64)
    keep = [points[i] for i in non_dominated(F.reshape(len(points), 3), unique=False)]
    uniq: dict[str, PlanPoint] = {}
    for p in keep:
        uniq.setdefault(json.dumps(p.plan.to_dict(), sort_keys=True), p)
    return sorted(uniq.values(), key=lambda p: p.cost)
