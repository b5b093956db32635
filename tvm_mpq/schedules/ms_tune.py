"""MetaSchedule tuning of one kernel, with numerical validation of the chosen schedule.

Kernel-level only (:func:`tune_kernel`: one :class:`~tvm_mpq.schedules.kernel.KernelDef`,
one target); the whole-model pipeline is :func:`tvm_mpq.tune` (:mod:`tvm_mpq.tuner`). Also
the validation helpers other code checks kernels with: :func:`validation_inputs`,
:func:`reference_output`, :func:`host_validator`.

MetaSchedule never checks numerics and has been seen to pick schedules that
read uninitialised memory; every record we use is first re-checked against the
numpy reference, best first, and rejected records are reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms

from tvm_mpq.schedules.build import build_kernel, is_host_target, resolve_target, run_built
from tvm_mpq.schedules.kernel import KernelDef
from tvm_mpq.schedules.reference import act_range, conv2d_ref, dense_ref, weight_range
from tvm_mpq.schedules.workload import Conv2dWorkload

log = logging.getLogger(__name__)

# Validator: (kernel, scheduled IRModule, target) -> None if correct, else an error message.
Validator = Callable[[KernelDef, tvm.IRModule, tvm.target.Target], str | None]


def fast_build(mod: tvm.IRModule, target: tvm.target.Target, _params=None):
    """Builder function: plain ``tvm.compile``.

    The default MetaSchedule build imports the tensor intrinsics in every fresh
    worker (~27 s on these machines), so most builds time out on 2 cores.
    """
    return tvm.compile(mod, target=target).mod


def reference_output(kd: KernelDef, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    wl = kd.workload
    if isinstance(wl, Conv2dWorkload):
        return conv2d_ref(x, w, wl, kd.pad_value)
    return dense_ref(x, w).reshape([int(d) for d in kd.output.shape])


def validation_inputs(kd: KernelDef, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random full-range inputs plus the extreme corner (max activations, min weights)."""
    rng = np.random.default_rng(seed)
    wl = kd.workload
    a_lo, a_hi = act_range(kd.a_bits)
    w_lo, w_hi = weight_range(kd.w_bits)
    x = rng.integers(a_lo, a_hi + 1, wl.input_shape)
    w = rng.integers(w_lo, w_hi + 1, wl.weight_shape)
    if kd.w_bits == 1:
        w = np.where(w == 0, 1, w)
    cases = [(x, w)]
    if kd.variant != "fp32":  # the float baseline is exact only below 2^24
        cases.append((np.full(wl.input_shape, a_hi), np.full(wl.weight_shape, w_lo)))
    return cases


def host_validator(kd: KernelDef, mod: tvm.IRModule, target: tvm.target.Target) -> str | None:
    """Build ``mod`` for the host and compare with the reference on validation inputs."""
    lib = build_kernel(kd, target, schedule=mod)
    for x, w in validation_inputs(kd):
        got = run_built(lib, kd, x, w)
        ref = reference_output(kd, x, w)
        bad = int(np.count_nonzero(np.rint(got).astype(np.int64) != ref))
        if bad:
            return f"{bad} of {ref.size} outputs differ from the reference"
    return None


@dataclass
class TunedKernel:
    """The best validated schedule found for a kernel."""

    kernel: KernelDef
    mod: tvm.IRModule | None  # scheduled module; None if no record passed validation
    run_secs: float | None  # MetaSchedule's measured mean for that record
    trials: int
    rejected: list[str] = field(default_factory=list)  # why better-ranked records were rejected

    @property
    def ok(self) -> bool:
        return self.mod is not None


def _runner_for(target: tvm.target.Target, runner: Any) -> Any:
    if runner is not None:
        return runner
    if not is_host_target(target):
        raise ValueError(
            f"no runner given for non-host target {target}; pass a RISC-V runner "
            "(tvm_mpq.measure.ms_runner.BareMetalRunner) to tune for it")
    return ms.runner.LocalRunner(
        evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=3, min_repeat_ms=20,
                                                   enable_cpu_cache_flush=False),
        timeout_sec=30)


def prepare_ms_logger() -> None:
    """MetaSchedule re-runs ``logging.config.dictConfig`` on every tune, listing the handlers
    already on its logger by name; one without a name (added by a test harness or an
    application) makes it crash in ``str.format`` of None, and one it did not create makes
    dictConfig fail. Detach those; MetaSchedule re-attaches its own."""
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    for h in list(ms_log.handlers):
        if not (h.get_name() or "").startswith("tvm.s_tir.meta_schedule"):
            ms_log.removeHandler(h)


def tune_kernel(kd: KernelDef, target: Any = "llvm", work_dir: str = "ms_work",
                max_trials: int = 64, *, num_trials_per_iter: int = 32, runner: Any = None,
                builder: Any = None, top_k: int = 8, validator: Validator | None = None,
                seed: int = 0) -> TunedKernel:
    """Tune ``kd`` with MetaSchedule (automatic design space, XGBoost cost model,
    evolutionary search) and return its best schedule that passes validation.

    Records go to a JSON database in ``work_dir``; calling again with the same
    directory reuses them (tuning runs only for the trials still missing).
    """
    tgt = resolve_target(target)
    mod = tvm.IRModule({"main": kd.prim_func("main")})
    os.makedirs(work_dir, exist_ok=True)
    db = ms.database.JSONDatabase(work_dir=work_dir)
    done = len(db.get_top_k(db.commit_workload(mod), 10**6)) if db.has_workload(mod) else 0
    if done < max_trials:
        prepare_ms_logger()
        db = ms.tune_tir(
            mod, tgt, work_dir, max_trials_global=max_trials - done,
            num_trials_per_iter=min(num_trials_per_iter, max_trials - done),
            builder=builder or ms.builder.LocalBuilder(f_build=fast_build, max_workers=2,
                                                       timeout_sec=60),
            runner=_runner_for(tgt, runner), database=db,
            cost_model=ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                                              adaptive_training=True),
            strategy=ms.search_strategy.EvolutionarySearch(), seed=seed, num_tuning_cores=2)
    validator = validator or (host_validator if is_host_target(tgt) else None)
    records = db.get_top_k(db.commit_workload(mod), top_k)
    rejected: list[str] = []
    for rec in records:
        sch = tvm.s_tir.Schedule(mod)
        try:
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            err = validator(kd, sch.mod, tgt) if validator else None
        except Exception as e:  # noqa: BLE001 - a broken record is rejected, not fatal
            err = f"{type(e).__name__}: {e}"
        secs = float(np.mean([float(s) for s in rec.run_secs])) if rec.run_secs else None
        if err is None:
            return TunedKernel(kd, sch.mod, secs, max(done, max_trials), rejected)
        log.warning("rejected MetaSchedule record for %s: %s", kd.describe(), err)
        rejected.append(err)
    return TunedKernel(kd, None, None, max(done, max_trials), rejected)
