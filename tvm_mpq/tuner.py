"""``tvm_mpq.tune()``: the end-to-end hardware-aware mixed-precision search.

Stages (each checkpointed in ``workdir``; an interrupted run resumes where it stopped):

1. import: ``torch.export`` -> Relax, the layer table (``layers.md``);
2. sensitivity: per-layer post-training quantization on a small labelled subset
   (``sensitivity.json``);
3. measurement campaign: a designed sample of (workload, variant, bits) kernels measured
   on the target (``measurements.sqlite``; every finished record is committed);
4. cost model: XGBoost on the measurements (``costmodel.json``), its held-out accuracy
   (``costmodel_report.json``);
5. search: NSGA-II over per-layer bits (``search/``), costs = measured where measured,
   predicted elsewhere; active learning: the kernels the front uses are measured, the
   model refitted and the search re-run (``active_rounds`` times);
6. refinement: the front members' accuracy evaluated for real (``eval_fn``);
7. final measurement: every front plan's cost summed from measured kernels; the chosen
   plan and the baselines (fp32, uniform int8, uniform w4a4) measured end to end as the
   standalone artifact (whole-model retired instructions) and evaluated through the
   TVM-compiled model.

The result (:class:`TuneResult`) is saved to ``workdir/result`` and can be reloaded with
:func:`load_result`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from .calibration import fold_bn
from .plan import FP32, LayerConfig, QuantPlan
from .targets import PROFILES, Profile, get_profile

log = logging.getLogger(__name__)

#: user-facing target names -> profiles
TARGET_ALIASES = {
    "riscv": "rv64gc_zbb", "riscv64": "rv64gc", "riscv64-zbb": "rv64gc_zbb",
    "riscv64-gc": "rv64gc", "riscv64-v": "rv64gcv", "riscv64-rvv": "rv64gcv",
    "riscv32": "rv32imc", "host": "host", "llvm": "host",
}
DEFAULT_BITS: tuple[tuple[int, int], ...] = ((8, 8), (4, 8), (4, 4), (2, 4), (2, 2))
DEFAULT_VARIANTS: tuple[str, ...] = ("int8", "bitserial", "unpack", "swar")
#: Uniform baselines: (w_bits, a_bits, variant); variant None = each layer's fastest measured
#: kernel for those bits. "int8" runs the int8 kernel everywhere (the issue's baseline);
#: "w8a8" is every layer at 8 bits with the faster of the int8 and swar kernels, the
#: strongest 8-bit baseline we can build (on cores without vectors swar w8a8 is 2-4x cheaper).
BASELINES: dict[str, tuple[int, int, str | None] | None] = {
    "fp32": None, "int8": (8, 8, "int8"), "w8a8": (8, 8, None), "w4a4": (4, 4, None)}


def resolve_profile(target: str | Profile) -> Profile:
    """Profile for ``target`` ("riscv", "riscv64-zbb", "riscv64", a profile name, ...)."""
    if isinstance(target, Profile):
        return target
    name = TARGET_ALIASES.get(str(target).lower(), str(target))
    if name not in PROFILES:
        raise ValueError(f"unknown target {target!r}; use one of {sorted(TARGET_ALIASES)} or a "
                         f"profile name {sorted(PROFILES)}")
    return get_profile(name)


@dataclass
class PlanPoint:
    """One evaluated plan.

    Attributes:
        label: "front", "best", or a baseline name ("fp32", "int8", "w8a8", "w4a4").
        predicted_cost: sum of the cost model's per-kernel predictions (measured kernels
            enter with their measured cost).
        measured_cost: sum of measured per-kernel costs plus, for quantized layers, their
            measured quantize/dequantize passes (None if a kernel failed or was not
            measured); instructions on simulators, seconds on wall-clock backends.
        model_cost: whole-model cost of the standalone artifact (instructions), if run.
        accuracy: accuracy on the held-out evaluation data (fake-quant reference in torch).
        compiled_accuracy: accuracy through the TVM-compiled model, if evaluated.
        drop: fp32 accuracy minus ``accuracy`` (fraction).
        proxy_drop: sensitivity proxy of the drop.
        size_bytes: weight bytes.
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
            layer) and uniform w4a4 plans, measured the same way.
        message: outcome in words (e.g. why no plan meets the constraints).
        profile, backend, cost_unit: where and how costs were measured.
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

    def compile(self, plan: QuantPlan | None = None, target: str | Profile | None = None):
        """Compile ``plan`` (default: :attr:`best`) for the tuned target (see
        :func:`tvm_mpq.compile`)."""
        from .compiler import compile as mpq_compile

        if plan is None:
            if self.best is None:
                raise ValueError(f"no plan met the constraints ({self.message}); pass one of "
                                 "result.pareto[i].plan explicitly")
            plan = self.best.plan
        for p in [*self.pareto, *([self.best] if self.best else [])]:
            if p.plan == plan and p.qat_dir:  # fine-tuned weights and their quantization
                ft, qp = _load_qat(p.qat_dir)
                return mpq_compile(ft, self._example_inputs, plan, target or self.profile,
                                   qparams=qp)
        if self._model is None or self._calib is None:
            raise ValueError("this result has no model/calibration data attached; "
                             "load it with load_result(dir) from a saved tune() run")
        return mpq_compile(self._model, self._example_inputs, plan, target or self.profile,
                           calib_data=self._calib)

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
        from .report import write_report

        directory = directory or os.path.join(self.workdir or ".", "result")
        return write_report(self, directory)

    def table(self) -> str:
        """The Markdown table of baselines and chosen plans."""
        from .report import summary_table

        return summary_table(self)


def load_result(directory: str) -> TuneResult:
    """Load a result saved by :meth:`TuneResult.save` (or ``tune(..., workdir=...)``)."""
    path = os.path.join(directory, "result.json")
    if not os.path.exists(path) and os.path.exists(os.path.join(directory, "result", "result.json")):
        directory = os.path.join(directory, "result")
        path = os.path.join(directory, "result.json")
    with open(path) as f:
        d = json.load(f)
    res = TuneResult(
        [PlanPoint.from_dict(p) for p in d["pareto"]],
        PlanPoint.from_dict(d["best"]) if d.get("best") else None,
        {k: PlanPoint.from_dict(v) for k, v in d.get("baselines", {}).items()},
        d["message"], d["profile"], d["backend"], d["cost_unit"], d.get("fp32_accuracy"),
        d.get("costmodel_report", {}), d.get("timings", {}), d.get("settings", {}), directory)
    mp = os.path.join(directory, "model.pt")
    if os.path.exists(mp):
        blob = torch.load(mp, weights_only=False)
        res._model, res._example_inputs, res._calib = blob["model"], blob["example_inputs"], blob["calib"]
    return res


# ---------------------------------------------------------------------- helpers
def _split_xy(data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        return torch.as_tensor(x), torch.as_tensor(y)
    return torch.as_tensor(data), None


class _Stage:
    """Times a stage and logs it."""

    def __init__(self, timings: dict[str, float], name: str, progress: bool):
        self.timings, self.name, self.progress = timings, name, progress

    def __enter__(self) -> _Stage:
        self.t0 = time.time()
        if self.progress:
            print(f"[tvm-mpq] {self.name} ...", flush=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.time() - self.t0
        if self.progress and exc[0] is None:
            print(f"[tvm-mpq] {self.name} done in {self.timings[self.name]:.1f}s", flush=True)


#: search cost of a kernel whose measurement failed: finite (the search needs numbers) but
#: far above any real cost, so another variant or bit-width always wins
FAILED_COST = 1e15
#: overhead key suffix of an fp32 layer's bias pass (see :func:`measure_qdq_overhead`)
FP32_SUFFIX = "|fp32"
#: version of the compiler's passes around a kernel; a cache of another one is re-measured
#: (2: quantize rounds with llvm.lrint; fp32 layers' bias pass)
PASSES_REVISION = 2


class _MeasuredFirst:
    """Cost function for the search: the measured cost where the DB has one, else the
    cost model's prediction; a quantized layer also pays its measured quantize +
    dequantize passes, an fp32 layer its bias pass (``overhead``, see :func:`_qdq`)."""

    def __init__(self, cm: Any, measured: dict[tuple, float], overhead: dict[str, float]):
        self.cm, self.measured, self.overhead = cm, measured, overhead

    def __call__(self, queries: Sequence[Any]) -> np.ndarray:
        pred = np.asarray(self.cm(list(queries)), dtype=np.float64)
        cost = np.asarray([self.measured.get(q.key(), p) + _qdq(q, self.overhead)
                           for q, p in zip(queries, pred, strict=True)])
        # a kernel that failed its measurement (e.g. a wrong result) is never worth picking
        return np.where(np.isfinite(cost), cost, FAILED_COST)


def _qdq(q: Any, overhead: dict[str, float]) -> float:
    """The passes the compiler adds around a layer's kernel: quantize + dequantize for a
    quantized layer (by workload key), the bias pass for an fp32 one (``<key>|fp32``)."""
    key = q.workload.key()
    return overhead.get(key + FP32_SUFFIX, 0.0) if q.variant == "fp32" else overhead.get(key, 0.0)


def measure_qdq_overhead(table: Any, profile: Profile, backend: str, path: str) -> dict[str, float]:
    """Measured cost of the quantize (input) and dequantize (output) passes a quantized
    call site adds, per distinct workload, and of the bias pass an fp32 call site with a
    bias adds (key ``<workload key>|fp32``); cached in the JSON file ``path``.

    Built from the compiler's own quantize/dequantize computations, run on the simulator
    with outputs checked against numpy; a failed measurement raises (no guessed number).
    """
    from tvm import te

    from .calibration import LayerQParams
    from .compiler import _bias_te, _dequantize_te, _quantize_te
    from .rpc.baremetal import KernelCase, run_kernels
    from .search.features import layer_workload

    cache: dict[str, float] = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("passes_revision") == PASSES_REVISION:  # else: stale, measure again
            cache = saved["costs"]
    rng = np.random.default_rng(0)
    cases, owners = [], {}
    for r in table:
        if not r.quantizable:
            continue
        key = layer_workload(r).key()
        k = int(r.output_shape[1])
        per_channel = [1] * len(r.output_shape)  # broadcast shape of a per-channel vector
        per_channel[1] = -1
        if r.has_bias and key + FP32_SUFFIX not in cache and key + FP32_SUFFIX not in owners.values():
            name = f"bias{len(owners)}"
            owners[name] = key + FP32_SUFFIX
            y = te.placeholder(r.output_shape, "float32", "y")
            bias = te.placeholder((k,), "float32", "bias")
            yv = rng.standard_normal(r.output_shape).astype(np.float32)
            bv = rng.standard_normal(k).astype(np.float32)
            cases.append(KernelCase(name, te.create_prim_func([y, bias, _bias_te(y, bias)]),
                                    [yv, bv, np.zeros(r.output_shape, np.float32)],
                                    {2: yv + bv.reshape(per_channel)}))
        if key in cache or key in owners.values():
            continue
        qp = LayerQParams(r.name, r.kind, 8, 8, np.float32(0.05), 7, np.full(k, 0.01, np.float32),
                          np.zeros((k, 1), np.int8), np.zeros(k, np.float32))
        x = te.placeholder(r.input_shape, "float32", "x")
        acc = te.placeholder(r.output_shape, "int32", "acc")
        corr = te.placeholder((k,), "int32", "corr")
        scale = te.placeholder((k,), "float32", "scale")
        bias = te.placeholder((k,), "float32", "bias")
        xq = _quantize_te(x, qp)
        y = _dequantize_te(acc, corr, scale, bias)
        xv = rng.standard_normal(r.input_shape).astype(np.float32)
        av = rng.integers(-5000, 5000, r.output_shape).astype(np.int32)
        cv = rng.integers(-100, 100, k).astype(np.int32)
        sv = rng.uniform(1e-4, 1e-2, k).astype(np.float32)
        bv = rng.standard_normal(k).astype(np.float32)
        ref_q = np.clip(np.round(xv / np.float32(0.05)) + 7, 0, 255).astype(np.uint8)
        ref_y = ((av - cv.reshape(per_channel)).astype(np.float32) * sv.reshape(per_channel)
                 + bv.reshape(per_channel)).astype(np.float32)
        name = f"qdq{len(owners)}"
        owners[name] = key
        cases.append(KernelCase(name + "_q", te.create_prim_func([x, xq]),
                                [xv, np.zeros(r.input_shape, np.uint8)], {1: ref_q}))
        cases.append(KernelCase(name + "_d", te.create_prim_func([acc, corr, scale, bias, y]),
                                [av, cv, sv, bv, np.zeros(r.output_shape, np.float32)], {4: ref_y}))
    if cases:
        runs = {c.name: c for c in run_kernels(cases, profile, backend)}
        bad = [f"{n}: {c.status} {c.message}" for n, c in runs.items() if c.status != "ok"]
        if bad:
            raise RuntimeError("quantize/dequantize overhead measurement failed: " + "; ".join(bad[:3]))
        for name, key in owners.items():
            cache[key] = (float(runs[name].instructions) if key.endswith(FP32_SUFFIX) else
                          float(runs[name + "_q"].instructions + runs[name + "_d"].instructions))
        with open(path, "w") as f:
            json.dump({"passes_revision": PASSES_REVISION, "costs": cache}, f, indent=1)
    return cache


def _open_db(workdir: str) -> Any:
    """The workdir's measurement database. One of an older kernel revision (a workdir from
    an earlier version) is kept aside as ``measurements.sqlite.rev<N>``, with the search
    checkpoints built on it (``search.rev<N>``), and the campaign starts over."""
    from .rpc.database import MeasurementDB, StaleDatabaseError

    path = os.path.join(workdir, "measurements.sqlite")
    try:
        return MeasurementDB(path)
    except StaleDatabaseError as e:
        tag, n = f".rev{e.stored_revision}", 1
        while os.path.exists(path + tag) or os.path.exists(os.path.join(workdir, "search" + tag)):
            n += 1  # an earlier upgrade's copies stay too
            tag = f".rev{e.stored_revision}.{n}"
        for suffix in ("", "-wal", "-shm"):  # a stray WAL must not replay into the new file
            if os.path.exists(path + suffix):
                os.replace(path + suffix, path + tag + suffix)
        search = os.path.join(workdir, "search")
        if os.path.isdir(search):
            os.replace(search, search + tag)
        log.warning("%s; kept it as %s and measuring again", e, path + tag)
        return MeasurementDB(path)


def _measured_costs(db: Any, profile: str, backend: str, unit: str) -> dict[tuple, float]:
    """Measured cost per query key (default schedules); ``inf`` for a kernel whose
    measurement failed for good (wrong result, build or run error): the search must not
    pick it, and the compiled model must not run it."""
    out: dict[tuple, float] = {}
    for r in db.records(profile, backend):
        d = r.to_dict() if hasattr(r, "to_dict") else r
        if d.get("schedule", "default") != "default":
            continue
        key = (d["workload_key"], d["variant"], int(d["w_bits"]), int(d["a_bits"]), profile)
        v = d.get(unit)
        if d["status"] == "ok" and v is not None:
            out[key] = float(v)
        elif d["status"] in ("wrong_result", "build_error", "run_error"):
            out.setdefault(key, math.inf)
    return out


def _plan_queries(plan: QuantPlan, table: Any, profile: Profile) -> list[Any]:
    from .plan import resolve_variant
    from .search.features import CostQuery, layer_workload

    out = []
    for r in table:
        cfg = plan[r.name] if r.name in plan else LayerConfig(FP32, FP32)
        if cfg.is_fp32 or not r.quantizable:
            out.append(CostQuery(layer_workload(r), "fp32", 8, 8, profile.name))
        else:
            cg = r.weight_shape[1] if r.kind == "conv2d" else None
            v = cfg.variant or resolve_variant(cfg.w_bits, cfg.a_bits, profile.name, cg)
            out.append(CostQuery(layer_workload(r), v, cfg.w_bits, cfg.a_bits, profile.name))
    return out


def _uniform(model: torch.nn.Module, w: int, a: int, variant: str | None,
             problem: Any | None = None) -> QuantPlan:
    plan = QuantPlan.uniform(model, w_bits=w, a_bits=a, variant=variant)
    if variant is None and problem is not None:  # the variant the costs say is fastest
        try:
            plan = problem.decode(problem.encode(plan))
        except (KeyError, ValueError):
            pass
    return plan


# ---------------------------------------------------------------------- tune()
def tune(  # noqa: C901 - one orchestrating function, stage by stage
    model: torch.nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: str | Profile = "riscv",
    *,
    calib_data: Any,
    eval_data: Any = None,
    eval_fn: Callable[[Callable[[Any], Any]], float] | None = None,
    max_accuracy_drop: float = 1.0,
    latency_budget: float | None = None,
    size_budget: float | None = None,
    backend: str = "spike",
    workdir: str = "tvm_mpq_tune",
    bits: Sequence[tuple[int, int]] = DEFAULT_BITS,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    measure_budget: int | None = None,
    active_rounds: int = 1,
    pop_size: int = 40,
    generations: int = 40,
    sensitivity_samples: int = 512,
    final_eval_samples: int | None = None,
    final_measure: bool = True,
    compiled_eval: bool = True,
    train_data: Any = None,
    qat_beacons: int = 0,
    qat_steps: int = 300,
    repair_plans: int = 8,
    prior_workloads: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Search per-layer bit-widths that minimise measured cost on ``target``.

    Args:
        model: trained float torch model.
        example_inputs: example input (fixes static shapes, batch included).
        target: "riscv" (rv64gc_zbb), "riscv64-zbb", "riscv64" (rv64gc, no Zbb),
            "riscv64-v", "riscv32", "host", or a profile name.
        calib_data: calibration inputs (tensor or iterable of batches).
        eval_data: ``(images, labels)`` held-out data: the first ``sensitivity_samples``
            are used for per-layer sensitivity, all of it (or ``final_eval_samples``) for
            the real accuracy of front members and baselines.
        eval_fn: ``eval_fn(forward) -> accuracy`` (fraction), called with a callable that
            maps a batch of inputs to logits; default: top-1 accuracy on ``eval_data``.
        max_accuracy_drop: budget in accuracy POINTS (1.0 = one percentage point) vs fp32.
        latency_budget: cost budget (instructions for simulators, seconds for "host").
        size_budget: weight bytes budget.
        backend: "spike", "qemu" (retired instructions) or "host" (wall seconds).
        workdir: where every stage checkpoints; re-running resumes.
        bits: candidate (w_bits, a_bits) per layer (fp32 is always allowed).
        variants: candidate kernel variants.
        measure_budget: kernels in the initial measurement design (default: every distinct
            workload at every (variant, bits) -- exhaustive for small nets).
        active_rounds: measure the front's unmeasured kernels, refit, re-search; this often.
        pop_size, generations: NSGA-II settings.
        final_measure: measure the chosen plan and baselines end to end (standalone
            artifact on the simulator) and evaluate them through the compiled model.
        train_data: ``(images, labels)`` training tensors, needed for ``qat_beacons``.
        qat_beacons: MOHAQ beacons: this many front plans are fine-tuned with
            quantization-aware training (``qat_steps`` steps each); the others' accuracy is
            corrected by their nearest beacon's gain, and the chosen plan is fine-tuned and
            verified. 0 (default) keeps pure post-training quantization.
        repair_plans: after refinement, this many of the cheapest front plans that miss
            the accuracy budget (and are cheaper than every plan within it) get their most
            sensitive layers' bits raised, one measured step at a time, until they meet it
            (:func:`tvm_mpq.search.nsga.repair`; 0: off).
        prior_workloads: also measure this many model-independent layer shapes
            (:func:`tvm_mpq.search.prior.generic_workloads`, every variant and bits), so
            the cost model sees shapes beyond the model's own (better predictions for
            another model's layers; a few minutes on Spike for 24). 0: the model's only.
        seed: random seed.

    Returns:
        A :class:`TuneResult` (also saved to ``workdir/result``).
    """
    from .data import evaluate
    from .frontend import import_model
    from .rpc.measure import measure_many
    from .search.costmodel import CostModel, CostModelMismatchError, evaluate_holdout, initial_design
    from .search.nsga import SearchResult, refine, repair, run_nsga
    from .search.problem import MPQProblem
    from .search.sensitivity import SensitivityTable, layer_sensitivity

    profile = resolve_profile(target)
    if backend == "host" and not profile.is_host:
        raise ValueError("backend 'host' measures wall time on this machine: use target='host'")
    if backend in ("spike", "qemu") and profile.is_host:
        raise ValueError(f"backend {backend!r} simulates RISC-V: pick a RISC-V target")
    if eval_data is None and eval_fn is None:
        raise ValueError("tune needs eval_data=(images, labels) or eval_fn to measure accuracy")
    if qat_beacons > 0 and train_data is None:
        raise ValueError("qat_beacons needs train_data=(images, labels) (training split)")
    unit = "seconds" if backend == "host" else "instructions"
    os.makedirs(workdir, exist_ok=True)
    timings: dict[str, float] = {}
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    model = model.eval()
    calib_x = calib_data
    ex, ey = _split_xy(eval_data) if eval_data is not None else (None, None)
    if ex is not None and ey is None:
        raise ValueError("eval_data must be (images, labels)")

    def accuracy_of(forward: Callable[[Any], Any], n: int | None = None) -> float:
        if eval_fn is not None:
            return float(eval_fn(forward))
        x, y = (ex, ey) if n is None else (ex[:n], ey[:n])
        return float(evaluate(forward, x, y, batch_size=256))

    qcache = _QParamsCache(model, calib_x)

    def torch_forward(plan: QuantPlan) -> Callable[[Any], Any]:
        from .fakequant import fake_quant

        if not plan.quantized_layers():
            return fold_bn(model).eval()
        return fake_quant(model, plan, qparams=qcache(plan))

    # 1. import ----------------------------------------------------------------------
    with _Stage(timings, "import", progress):
        imported = import_model(fold_bn(model), example_inputs)
        table = imported.table
        with open(os.path.join(workdir, "layers.md"), "w") as f:
            f.write(table.to_markdown())
        layers = table.quantizable_names()

    # 2. sensitivity -------------------------------------------------------------------
    sens_path = os.path.join(workdir, "sensitivity.json")
    with _Stage(timings, "sensitivity", progress):
        sens = SensitivityTable.load(sens_path) if os.path.exists(sens_path) else None
        want = {(int(w), int(a)) for w, a in bits}
        if sens is not None and (not want <= {tuple(b) for b in sens.bits}
                                 or not set(layers) <= set(sens.layers)
                                 or (ex is not None and sens.meta.get("n_eval")
                                     != min(sensitivity_samples, len(ex)))):
            # computed for other bits, layers or another subset: keep it aside, recompute
            os.replace(sens_path, sens_path + ".old")
            log.warning("%s was computed with other settings; recomputing (old one: .old)",
                        sens_path)
            sens = None
        if sens is None:
            if ex is None:
                raise ValueError("per-layer sensitivity needs eval_data=(images, labels)")
            sens = layer_sensitivity(model, calib_x, (ex[:sensitivity_samples], ey[:sensitivity_samples]),
                                     bits=list(bits), layers=layers, progress=progress)
            sens.save(sens_path)

    # 3. measurement campaign -----------------------------------------------------------
    db = _open_db(workdir)
    kwork = os.path.join(workdir, "kernels")

    def measure(queries: Sequence[Any]) -> None:
        reqs = list({q.key(): q.request() for q in queries}.values())
        if reqs:
            measure_many(reqs, profile.name, backend, db=db, progress=progress, work_dir=kwork)

    with _Stage(timings, "measure", progress):
        n_wl = len(table.distinct_workloads())
        budget = measure_budget or n_wl * (1 + len(variants) * len(bits))
        design = initial_design(table, list(variants), list(bits), profile.name, budget, seed=seed)
        if prior_workloads > 0:
            from .search.prior import generic_workloads

            prior = generic_workloads(prior_workloads, seed=seed)
            design += initial_design(prior, list(variants), list(bits), profile.name,
                                     len(prior) * (1 + len(variants) * len(bits)), seed=seed)
        measure(design)
        overhead = (measure_qdq_overhead(table, profile, backend, os.path.join(workdir, "qdq_overhead.json"))
                    if backend in ("spike", "qemu") else {})

    # 4.-5. cost model + search, with active learning ----------------------------------
    search_dir = os.path.join(workdir, "search")
    cm = None
    front = None
    problem = None
    for rnd in range(active_rounds + 1):
        with _Stage(timings, "cost model", progress):
            # each round's model and measured set are kept, so a resumed run rebuilds the
            # identical problem and its NSGA-II checkpoint applies
            rdir = os.path.join(search_dir, f"round{rnd}")
            os.makedirs(rdir, exist_ok=True)
            cm_path, meas_path = os.path.join(rdir, "costmodel.json"), os.path.join(rdir, "measured.json")
            cm = None
            if os.path.exists(cm_path) and os.path.exists(meas_path):
                try:
                    cm = CostModel.load(cm_path)
                except CostModelMismatchError as e:  # another feature schema: refit below
                    log.warning("%s; refitting the cost model", e)
            if cm is not None:
                with open(meas_path) as f:
                    measured = {tuple(k): v for k, v in json.load(f)}
            else:
                cm = CostModel(seed=seed).fit(db.records(profile.name, backend, status="ok"))
                measured = _measured_costs(db, profile.name, backend, unit)
                cm.save(cm_path)
                with open(meas_path, "w") as f:
                    json.dump([[list(k), v] for k, v in measured.items()], f)
            cm.save(os.path.join(workdir, "costmodel.json"))
        with _Stage(timings, "search", progress):
            problem = MPQProblem(table, _MeasuredFirst(cm, measured, overhead), sens, profile.name,
                                 bits=list(bits), variants=list(variants), metric="loss",
                                 max_latency=latency_budget, max_size=size_budget, layers=layers)
            front = run_nsga(problem, pop_size=pop_size, n_gen=generations, seed=seed + rnd,
                             workdir=rdir, progress=progress)
        if rnd == active_rounds:
            break
        with _Stage(timings, "active learning", progress):
            todo = [q for m in front.members for q in problem.plan_queries(m.plan, table)
                    if q.key() not in measured]
            for base in ((8, 8, "int8"), (4, 4, None)):
                todo += [q for q in _plan_queries(_uniform(model, *base, problem), table, profile)
                         if q.key() not in measured]
            if not todo:
                break
            measure(todo)

    with _Stage(timings, "cost model report", progress):
        recs = db.records(profile.name, backend, status="ok")
        report: dict[str, Any] = {}
        try:
            rep = evaluate_holdout(recs, groups="workload")
            report = {"mape": rep.mape, "within_10pct": rep.within_10pct,
                      "spearman": rep.spearman, "spearman_within": rep.spearman_within,
                      "n": rep.n, "n_folds": rep.n_folds, "groups": rep.groups,
                      "summary": rep.summary()}
        except Exception as e:  # too few workloads for a held-out split: say so, keep going
            report = {"error": f"{type(e).__name__}: {e}"}
        with open(os.path.join(workdir, "costmodel_report.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)

    # 6. refinement: real accuracy of front members ---------------------------------------
    n_eval = final_eval_samples
    with _Stage(timings, "refine", progress):
        fp32_plan = QuantPlan.fp32(model)
        fp32_acc = accuracy_of(torch_forward(fp32_plan), n_eval)
        def plan_accuracy(p: QuantPlan) -> float:
            return accuracy_of(torch_forward(_full_plan(p, model)), n_eval)

        refined = refine(front, plan_accuracy, baseline=fp32_acc, keep_dominated=True,
                         progress=progress)
    if repair_plans > 0 and problem is not None:
        with _Stage(timings, "repair", progress):
            fixed = repair(problem, refined, plan_accuracy, max_drop=max_accuracy_drop / 100,
                           baseline=fp32_acc, max_members=repair_plans, progress=progress)
            if fixed:
                refined = SearchResult(refined.members + fixed, refined.feasible,
                                       refined.message + f" | repaired: {len(fixed)} plans raised "
                                       "into the accuracy budget", refined.n_gen, refined.n_evals,
                                       refined.objective_names, refined=True)

    # 7. costs from measurements, baselines, final end-to-end measurement ---------------
    with _Stage(timings, "final", progress):
        def point(label: str, plan: QuantPlan, acc: float | None = None,
                  proxy: float | None = None) -> PlanPoint:
            qs = _plan_queries(plan, table, profile)
            measure([q for q in qs if q.key() not in measured])
            measured.update(_measured_costs(db, profile.name, backend, unit))
            extra = sum(_qdq(q, overhead) for q in qs)
            pred = float(np.sum(cm(qs))) + extra
            meas = [measured.get(q.key()) for q in qs]
            mcost = (float(sum(meas)) + extra
                     if all(v is not None and math.isfinite(v) for v in meas) else None)
            if acc is None:
                acc = accuracy_of(torch_forward(plan), n_eval)
            drop = fp32_acc - acc
            size = float(plan.weight_bytes(table))
            ok = (drop * 100 <= max_accuracy_drop + 1e-9
                  and (latency_budget is None or (mcost if mcost is not None else pred) <= latency_budget)
                  and (size_budget is None or size <= size_budget))
            notes = "" if mcost is not None else "a kernel of this plan failed to measure"
            return PlanPoint(label, plan, pred, mcost, None, acc, None, drop, proxy, size, ok, notes)

        pareto = [point("front", _full_plan(m.plan, model), m.accuracy, m.proxy_drop)
                  for m in refined.members]
        # keep the measured non-dominated set (cost measured, drop, size), fastest first
        pareto = _non_dominated(pareto)
        baselines = {name: point(name, fp32_plan, fp32_acc) if spec is None
                     else point(name, _uniform(model, spec[0], spec[1], spec[2], problem))
                     for name, spec in BASELINES.items()}
        if qat_beacons > 0:
            best = _beacons(pareto, qat_beacons, model, calib_x, train_data, qcache, qat_steps,
                            lambda m, p, qp: accuracy_of(_fq(m, p, qcache, qp), n_eval),
                            fp32_acc, max_accuracy_drop, workdir, seed, progress)
        else:
            feasible = [p for p in pareto if p.meets_constraints and p.measured_cost is not None]
            best = min(feasible, key=lambda p: p.measured_cost) if feasible else None
        if best is not None:
            best.label = "best"
            ratios = [f"{best.measured_cost / baselines[b].measured_cost:.2f}x uniform {b}"
                      for b in ("int8", "w8a8") if baselines[b].measured_cost]
            message = (f"best plan: {best.measured_cost:.4g} {unit} ({', '.join(ratios)})"
                       if ratios else "best plan found")
        else:
            closest = min(pareto, key=lambda p: p.drop if p.drop is not None else math.inf,
                          default=None)
            message = ("no plan meets the constraints (max accuracy drop "
                       f"{max_accuracy_drop} points"
                       + (f", latency <= {latency_budget:g}" if latency_budget else "")
                       + (f", size <= {size_budget:g} B" if size_budget else "") + ")"
                       + (f"; the most accurate front plan drops {closest.drop * 100:.2f} points"
                          if closest and closest.drop is not None else "")
                       + "; the front is returned anyway")
        if final_measure:
            _final_measure([best] + list(baselines.values()), model, example_inputs, qcache,
                           profile, backend, workdir, accuracy_of if compiled_eval else None,
                           n_eval, progress)
            if best is not None and best.model_cost:
                whole = [f"{best.model_cost / baselines[b].model_cost:.3f}x uniform {b}"
                         for b in ("int8", "w8a8") if baselines[b].model_cost]
                if whole:
                    message += f"; whole model {best.model_cost:.4g} {unit} ({', '.join(whole)})"

    res = TuneResult(pareto, best, baselines, message, profile.name, backend, unit, fp32_acc,
                     report, timings,
                     {"bits": [list(b) for b in bits], "variants": list(variants),
                      "max_accuracy_drop": max_accuracy_drop, "latency_budget": latency_budget,
                      "size_budget": size_budget, "pop_size": pop_size,
                      "generations": generations, "active_rounds": active_rounds,
                      "measured_kernels": db.count(profile.name, backend)},
                     workdir, model, example_inputs, calib_x)
    res.save(os.path.join(workdir, "result"))
    try:
        res.report(os.path.join(workdir, "result"))
    except Exception as e:  # a plotting problem must not lose the result
        log.warning("report failed: %s", e)
    return res


def _fq(model: torch.nn.Module, plan: QuantPlan, qcache: Any, qparams: Any = None):
    from .fakequant import fake_quant

    if not plan.quantized_layers():
        return fold_bn(model).eval()
    return fake_quant(model, plan, qparams=qparams if qparams is not None else qcache(plan))


def _load_qat(directory: str) -> tuple[torch.nn.Module, Any]:
    from .calibration import QuantParams

    model = torch.load(os.path.join(directory, "model.pt"), weights_only=False)
    return model, QuantParams.load(os.path.join(directory, "qparams"))


def _qat(point: PlanPoint, model: torch.nn.Module, calib: Any, train_data: Any, qcache: Any,
         steps: int, acc_fn: Callable[..., float], fp32_acc: float,
         workdir: str, seed: int, progress: bool) -> None:
    """Fine-tune ``point``'s plan (cached in ``workdir/qat/<plan hash>``) and record its
    real accuracy on the point."""
    import hashlib

    from .search.qat import qat_finetune

    h = hashlib.sha256(json.dumps(point.plan.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    d = os.path.join(workdir, "qat", f"{h}_s{steps}")
    if not os.path.exists(os.path.join(d, "done")):
        ft, qp = qat_finetune(model, point.plan, calib, train_data, qparams=qcache(point.plan),
                              steps=steps, seed=seed, progress=progress)
        os.makedirs(d, exist_ok=True)
        torch.save(ft, os.path.join(d, "model.pt"))
        qp.save(os.path.join(d, "qparams"))
        open(os.path.join(d, "done"), "w").close()
    ft, qp = _load_qat(d)
    point.qat_dir = d
    point.accuracy = float(acc_fn(ft, point.plan, qp))
    point.drop = fp32_acc - point.accuracy
    point.notes = (point.notes + " QAT fine-tuned").strip()


def _beacons(pareto: list[PlanPoint], k: int, model: torch.nn.Module, calib: Any,
             train_data: Any, qcache: Any, steps: int,
             acc_fn: Callable[..., float], fp32_acc: float,
             max_drop_pt: float, workdir: str, seed: int, progress: bool) -> PlanPoint | None:
    """MOHAQ beacons: fine-tune ``k`` front plans spread over the cost axis, correct the
    others' accuracy by the nearest beacon's gain, then fine-tune and verify candidates
    (cheapest first) until one meets the accuracy budget; returns it (or None)."""
    from .search.qat import beacon_correction

    cands = sorted([p for p in pareto if p.measured_cost is not None
                    and p.plan.quantized_layers()], key=lambda p: p.measured_cost)
    if not cands:
        return None
    idx = sorted({int(round(i)) for i in np.linspace(0, len(cands) - 1, min(k, len(cands)))})
    beacons = []
    for i in idx:
        p = cands[i]
        ptq = p.accuracy
        _qat(p, model, calib, train_data, qcache, steps, acc_fn, fp32_acc, workdir, seed, progress)
        beacons.append((p.plan, ptq, p.accuracy))
    others = [p for p in cands if p.qat_dir is None]
    for p, est in zip(others, beacon_correction([p.accuracy for p in others],
                                                [p.plan for p in others], beacons), strict=True):
        p.estimated_accuracy = est
    def meets(p: PlanPoint) -> bool:  # measured accuracy (PTQ, or QAT for beacons)
        return p.drop is not None and p.drop * 100 <= max_drop_pt + 1e-9

    budget = k  # verification runs allowed on top of the beacons
    for p in cands:  # cheapest first
        if not meets(p) and p.qat_dir is None and budget > 0:
            est = p.estimated_accuracy
            if est is not None and (fp32_acc - est) * 100 <= max_drop_pt + 1e-9:
                budget -= 1  # the estimate says QAT would make it: fine-tune and verify
                _qat(p, model, calib, train_data, qcache, steps, acc_fn, fp32_acc, workdir,
                     seed, progress)
        if meets(p):
            p.meets_constraints = True
            return p
    return None


class _QParamsCache:
    """Quantization parameters of any plan from one calibration per bits pair.

    Activation ranges are observed on the float model, where a layer's input does not
    depend on how the other layers are planned, so a uniform plan's parameters of a layer
    are that layer's parameters in every plan with the same bits (as in sensitivity).
    """

    def __init__(self, model: torch.nn.Module, calib: Any):
        self.model, self.calib = model, calib
        self.by_bits: dict[tuple[int, int], Any] = {}

    def __call__(self, plan: QuantPlan) -> Any:
        from .calibration import QuantParams, calibrate

        qp = QuantParams()
        for name in plan.quantized_layers():
            cfg = plan[name]
            key = (cfg.w_bits, cfg.a_bits)
            if key not in self.by_bits:
                self.by_bits[key] = calibrate(self.model, QuantPlan.uniform(
                    self.model, w_bits=cfg.w_bits, a_bits=cfg.a_bits), self.calib)
            qp.layers[name] = self.by_bits[key][name]
        return qp


def _full_plan(plan: QuantPlan, model: torch.nn.Module) -> QuantPlan:
    """The search's plan covers the searched layers; give every other layer fp32."""
    full = QuantPlan.fp32(model)
    for name in plan.layers():
        cfg = plan[name]
        if name in full:
            full.set(name, w_bits=cfg.w_bits, a_bits=cfg.a_bits, variant=cfg.variant)
    return full


def _non_dominated(points: list[PlanPoint]) -> list[PlanPoint]:
    def cost(p: PlanPoint) -> float:
        return p.measured_cost if p.measured_cost is not None else p.predicted_cost

    keep = []
    for p in points:
        dominated = any(
            cost(q) <= cost(p) and (q.drop or 0) <= (p.drop or 0) and q.size_bytes <= p.size_bytes
            and (cost(q) < cost(p) or (q.drop or 0) < (p.drop or 0) or q.size_bytes < p.size_bytes)
            for q in points if q is not p)
        if not dominated:
            keep.append(p)
    uniq: dict[str, PlanPoint] = {}
    for p in keep:
        uniq.setdefault(json.dumps(p.plan.to_dict(), sort_keys=True), p)
    return sorted(uniq.values(), key=cost)


def _final_measure(points: list[PlanPoint | None], model: torch.nn.Module, example_inputs: Any,
                   qcache: _QParamsCache, profile: Profile, backend: str, workdir: str,
                   accuracy_of: Callable[..., float] | None, n_eval: int | None,
                   progress: bool) -> None:
    """Whole-model cost of the standalone artifact + accuracy through the compiled model."""
    from .compiler import compile as mpq_compile

    for p in points:
        if p is None:
            continue
        try:
            x1 = example_inputs[0][:1]
            m_p, qp_p = _load_qat(p.qat_dir) if p.qat_dir else (model, qcache(p.plan))
            cm1 = mpq_compile(m_p, (x1,), p.plan, profile, qparams=qp_p)
            if backend in ("spike", "qemu"):
                from .standalone import export_standalone, run_standalone

                d = os.path.join(workdir, "standalone", p.label)
                art = export_standalone(cm1, d)
                r = run_standalone(art, x1.numpy(), backend=backend)
                if r.status == "ok":
                    p.model_cost = float(r.instructions)
                else:
                    p.notes += f" standalone run {r.status}: {r.message}"
            if accuracy_of is not None:
                b = 64
                cmb = mpq_compile(m_p, (torch.zeros(b, *x1.shape[1:]),), p.plan, "host",
                                  qparams=cm1.qparams)
                p.compiled_accuracy = accuracy_of(_Padded(cmb), n_eval)
        except Exception as e:  # record the failure on the point; the others still run
            log.warning("final measurement of %s failed: %s", p.label, e)
            p.notes += f" final measurement failed: {type(e).__name__}: {e}"
        if progress:
            print(f"[tvm-mpq]   {p.label}: whole-model {p.model_cost} instructions, "
                  f"compiled accuracy {p.compiled_accuracy}", flush=True)


class _Padded:
    """Runs a static-batch compiled model on any batch size (pads the last chunk)."""

    def __init__(self, cm: Any):
        self.cm = cm

    def __call__(self, xb: Any) -> np.ndarray:
        if isinstance(xb, torch.Tensor):
            xb = xb.numpy()
        return self.cm.predict(np.asarray(xb, dtype=np.float32))
