"""Wall time on this machine: :class:`HostRunner` (backend ``"host"``, profile ``"host"``).

Each kernel is built for the host with TVM's LLVM backend, checked once against the numpy
reference, then timed with TVM's time evaluator: mean and standard deviation of one call
over repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mpq.measure.local_runner import (
    LocalRunner,
    PreparedKernel,
    RunResult,
    TuneHooks,
    count_mismatches,
)
from tvm_mpq.measure.runner import last_line
from tvm_mpq.targets import Profile, get_profile


class HostRunner(LocalRunner):
    """This machine, through TVM's time evaluator: wall seconds of one call.

    Args:
        repeat, min_repeat_ms: as in ``Module.time_evaluator`` (``number`` is 1).
    """

    backend = "host"
    unit = "seconds"
    default_profile = "host"
    max_chunk = 1  # timed one by one

    def __init__(self, repeat: int = 5, min_repeat_ms: int = 50) -> None:
        self.repeat, self.min_repeat_ms = int(repeat), int(min_repeat_ms)

    def check_profile(self, profile: str | Profile) -> Profile:
        prof = get_profile(profile)
        if not prof.is_host:
            raise ValueError(f"backend 'host' measures the host profile only, not {prof.name!r} "
                             "(use --profile host, or backend spike/qemu for RISC-V)")
        return prof

    def check_tools(self, profile: Profile) -> None:
        return None  # TVM's LLVM backend is part of the wheel

    def tune_hooks(self, kd: Any, variant: str, profile: Profile) -> TuneHooks:
        return TuneHooks("llvm")  # MetaSchedule's own local builder and runner

    def run(self, kernels: list[PreparedKernel], profile: Profile,
            timeout_s: float) -> list[RunResult]:
        return [self._run_one(p) for p in kernels]

    def _run_one(self, p: PreparedKernel) -> RunResult:
        import tvm

        from tvm_mpq.schedules.build import build_kernel

        sched = tvm.IRModule({"main": p.func}) if p.func is not None else None
        try:
            lib = build_kernel(p.kd, "llvm", schedule=sched)
        except Exception as e:  # noqa: BLE001
            return RunResult("build_error", f"{type(e).__name__}: {last_line(e)}")
        try:
            bufs = [tvm.runtime.tensor(a) for a in p.args]
            lib["kernel"](*bufs)
            got = bufs[-1].numpy()
            bad = count_mismatches(got, p.expected)
            if bad:
                return RunResult("wrong_result",
                                 f"{bad} of {got.size} outputs differ from the reference")
            f = lib.mod.time_evaluator("kernel", tvm.cpu(), number=1, repeat=self.repeat,
                                       min_repeat_ms=self.min_repeat_ms)
            res = np.asarray(f(*bufs).results, dtype=float)
        except Exception as e:  # noqa: BLE001
            return RunResult("run_error", f"{type(e).__name__}: {last_line(e)}")
        return RunResult("ok", numbers={
            "seconds": float(res.mean()),
            "seconds_std": float(res.std(ddof=1)) if res.size > 1 else 0.0})
