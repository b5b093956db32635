"""Measuring on this machine: :class:`LocalRunner`, the base of the simulator and host runners.

A local campaign prepares each kernel (arguments: random full-range integer inputs, seeded;
the expected output from the numpy reference), tunes it with MetaSchedule if a trial budget is
given (the chosen record is re-validated), and runs prepared kernels in chunks: default
schedules batched (``chunk_size`` per run), tuned ones one by one. A subclass says how a chunk
runs (:meth:`LocalRunner.run`) and which MetaSchedule hooks tune for it
(:meth:`LocalRunner.tune_hooks`); the records are built here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tvm_mpq.measure.database import MeasureRecord, failed_record, record_for, utc_now
from tvm_mpq.measure.runner import RecordSink, Runner, RunSettings, last_line
from tvm_mpq.measure.toolchain import ToolchainError
from tvm_mpq.schedules.ms_tune import reference_output, tune_kernel, validation_inputs
from tvm_mpq.schedules.registry import make_kernel
from tvm_mpq.targets import Profile

if TYPE_CHECKING:
    from tvm_mpq.measure.campaign import MeasureRequest

log = logging.getLogger(__name__)


@dataclass
class PreparedKernel:
    """One kernel ready to run.

    Attributes:
        request: what is measured.
        started: ISO-8601 UTC time its measurement started.
        kd: the kernel definition (:func:`tvm_mpq.schedules.registry.make_kernel`).
        args: one array per parameter (inputs, then the output buffer).
        expected: the reference output.
        func: the PrimFunc to run (a tuned schedule); None: the default schedule.
        trace, trace_hash: the tuned schedule's MetaSchedule trace and its sha256.
        extra: what the record's ``extra`` keeps (tuning statistics).
    """

    request: MeasureRequest
    started: str
    kd: Any
    args: list[np.ndarray]
    expected: np.ndarray
    func: Any = None
    trace: str | None = None
    trace_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """How one prepared kernel ran: a status, why it failed, and the numbers when ok
    (``instructions``/``cycles`` or ``seconds``/``seconds_std``)."""

    status: str
    message: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneHooks:
    """What MetaSchedule tunes with for a runner: target, builder, runner and a validator
    ``(kd, mod, target) -> error or None`` of the chosen records (None: MetaSchedule's own)."""

    target: Any
    builder: Any = None
    runner: Any = None
    validator: Any = None


def count_mismatches(got: np.ndarray, expected: np.ndarray) -> int:
    """Outputs of a run that differ from the reference: exact for integer kernels, within
    float rounding (rtol 1e-5, atol 1e-6) for fp32 ones."""
    if got.dtype.kind == "f":
        return int(np.count_nonzero(~np.isclose(got, expected, rtol=1e-5, atol=1e-6)))
    return int(np.count_nonzero(got != expected))


def prepare_kernel(req: MeasureRequest, profile: Profile, seed: int,
                   started: str | None = None) -> PreparedKernel:
    """Kernel, arguments and expected output of ``req`` on random full-range inputs."""
    word_bits = 64 if profile.is_host else profile.word_bits
    kd = make_kernel(req.workload, req.variant, req.w_bits, req.a_bits, word_bits=word_bits)
    x, w = validation_inputs(kd, seed=seed)[0]
    args = kd.make_args(x, w)
    out = args[-1]
    expected = np.asarray(reference_output(kd, x, w)).reshape(out.shape).astype(out.dtype)
    return PreparedKernel(req, started or utc_now(), kd, args, expected)


def validation_cases(kd: Any) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """(arguments, expected output) of ``kd`` on the validation inputs (random and
    extreme-corner), which a tuned schedule must pass."""
    out = []
    for x, w in validation_inputs(kd, seed=1):
        args = kd.make_args(x, w)
        exp = np.asarray(reference_output(kd, x, w)).reshape(args[-1].shape).astype(args[-1].dtype)
        out.append((args, exp))
    return out


def kernel_work_dir(root: str, profile: Profile, backend: str, req: MeasureRequest) -> str:
    """MetaSchedule work directory of one kernel and trial budget under ``root``."""
    # the budget is part of the path: a directory reused with a larger budget would otherwise
    # report e.g. 128 trials' best under the tag "tuned16"
    return os.path.join(root, profile.name, backend, req.workload.key(),
                        f"{req.variant}_w{req.w_bits}a{req.a_bits}_t{req.tune_trials}")


def default_work_dir() -> str:
    """Root of MetaSchedule work directories: ``$TVM_MPQ_TUNE_DIR`` or ~/.cache/tvm-mpq/tune."""
    from pathlib import Path

    return os.environ.get("TVM_MPQ_TUNE_DIR") or str(Path.home() / ".cache" / "tvm-mpq" / "tune")


def _chosen_trace(work_dir: str, kd: Any, index: int) -> str | None:
    """Trace text of the ``index``-th best record (the one tune_kernel accepted)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mod = tvm.IRModule({"main": kd.prim_func("main")})
    db = ms.database.JSONDatabase(work_dir=work_dir)
    if not db.has_workload(mod):
        return None
    recs = db.get_top_k(db.commit_workload(mod), index + 1)
    if len(recs) <= index:
        return None
    return "\n".join(str(line) for line in recs[index].trace.as_python())


class LocalRunner(Runner):
    """A runner on this machine: prepare, tune, run in chunks (see the module docstring)."""

    #: prepared kernels per :meth:`run` call at most (None: the campaign's chunk size)
    max_chunk: int | None = None

    @abstractmethod
    def run(self, kernels: list[PreparedKernel], profile: Profile,
            timeout_s: float) -> list[RunResult]:
        """Run prepared kernels, checking each output; one result per kernel, in order.

        Raises:
            ToolchainError: a tool is missing.
        """

    @abstractmethod
    def tune_hooks(self, kd: Any, variant: str, profile: Profile) -> TuneHooks:
        """MetaSchedule's target, builder, runner and validator for tuning ``kd`` here."""

    # ---- the campaign on this machine ----

    def measure(self, requests: Sequence[MeasureRequest], profile: Profile,
                settings: RunSettings, done: RecordSink) -> None:
        pending: list[PreparedKernel] = []
        chunk = min(settings.chunk_size, self.max_chunk or settings.chunk_size)

        def flush() -> None:
            if pending:
                items = list(pending)
                pending.clear()
                done(self._run_chunk(items, profile, settings))

        # default schedules first (cheap, batched), then the tuned ones one by one
        for r in sorted(requests, key=lambda r: r.tune_trials > 0):
            started = utc_now()
            try:
                p = prepare_kernel(r, profile, settings.seed, started)
            except Exception as e:  # noqa: BLE001 - unsupported shape etc.: this kernel's failure
                done([failed_record(r.to_request(profile.name, self.backend, settings.seed),
                                    "build_error", f"{type(e).__name__}: {last_line(e)}",
                                    started_at=started, finished_at=utc_now())])
                continue
            if r.tune_trials > 0:
                flush()
                err = self.tune(p, profile, settings.work_dir or default_work_dir())
                if err is not None:
                    done([self._record(p, profile, settings.seed, p.started,
                                       RunResult("tune_error", err))])
                    continue
            pending.append(p)
            if r.tune_trials > 0 or len(pending) >= chunk:
                flush()
        flush()

    def tune(self, p: PreparedKernel, profile: Profile, work_root: str) -> str | None:
        """Tune ``p.kd`` with MetaSchedule; set ``p.func`` and its trace. Returns an error
        message (the kernel's ``tune_error``) or None."""
        req = p.request
        wd = kernel_work_dir(work_root, profile, self.backend, req)
        hooks = self.tune_hooks(p.kd, req.variant, profile)
        try:
            tuned = tune_kernel(p.kd, hooks.target, wd, max_trials=req.tune_trials,
                                runner=hooks.runner, builder=hooks.builder,
                                validator=hooks.validator)
        except ToolchainError:
            raise
        except Exception as e:  # noqa: BLE001 - a tuning crash is this kernel's tune_error
            return f"MetaSchedule failed: {type(e).__name__}: {last_line(e)}"
        p.extra = {"rejected_records": len(tuned.rejected), "work_dir": wd}
        if not tuned.ok:
            why = "; ".join(tuned.rejected[:3]) or "no records measured"
            return f"no MetaSchedule record passed validation ({len(tuned.rejected)} rejected): {why}"
        mod = tuned.mod
        p.func = mod["main"] if "main" in mod else next(iter(mod.functions.values()))
        try:
            p.trace = _chosen_trace(wd, p.kd, len(tuned.rejected))
        except Exception as e:  # noqa: BLE001 - provenance only; fall back to the scheduled TIR
            log.warning("could not read the tuned trace of %s: %s", req.describe(), e)
        text = p.trace if p.trace is not None else mod.script()
        p.trace_hash = hashlib.sha256(text.encode()).hexdigest()
        if p.trace is None:
            p.trace = text
        return None

    def _run_chunk(self, items: list[PreparedKernel], profile: Profile,
                   settings: RunSettings) -> list[MeasureRecord]:
        results = self.run(items, profile, settings.timeout_per_kernel_s * len(items))
        started = items[0].started  # one run: one start time
        return [self._record(p, profile, settings.seed, started, res)
                for p, res in zip(items, results, strict=True)]

    def _record(self, p: PreparedKernel, profile: Profile, seed: int, started: str,
                res: RunResult) -> MeasureRecord:
        build = record_for if res.status == "ok" else failed_record
        return build(p.request.to_request(profile.name, self.backend, seed), res.status,
                     res.message, schedule_trace=p.trace, schedule_hash=p.trace_hash, extra=p.extra or {},
                     started_at=started, finished_at=utc_now(), **res.numbers)
