"""Wall time on a riscv64 Linux board behind a TVM RPC tracker: :class:`BoardRunner`.

Each kernel is built for the profile's riscv64 Linux target, exported as a shared library
with the cross compiler, uploaded to a board server registered under the key (the
``tvm_rpc`` of ``tvm-mpq rpc build-runtime``, on the board or under qemu-riscv64; all boards
of the key measure at once, one kernel each, through the tracker's queue), checked
once against the numpy reference there and timed with the runtime's time evaluator
(:func:`~tvm_mpq.rpc.client.measure_on_board`: ``repeat`` timings of ``number`` calls; the
median is the cost, the spread ``(max - min) / median`` is stored, and a measurement whose
spread exceeds ``max_spread`` is repeated once with twice the repeats).

Records are stored under the backend tag of the key (``board-rv64gc``), so every board key
has its own records and its own cost model (one per device). Under QEMU (a key starting with
``qemu``, or ``qemu_user=True``) the seconds are QEMU's wall time, which models no timing:
the records and the tune report say so; never present them as hardware latency.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
from tvm_mpq.measure.toolchain import ToolchainError
from tvm_mpq.rpc.tracker import DEFAULT_PORT, parse_addr, tracker_status
from tvm_mpq.targets import Profile, get_profile

__all__ = ["BoardRunner", "server_info"]


def server_info(session: Any) -> dict[str, Any]:
    """What the board server reports about itself (``tvm_mpq.server_info`` of our
    ``tvm_rpc``: uname fields and TVM runtime version); a server without it (TVM's own
    ``tvm_rpc``) is recorded as unknown."""
    import json

    try:
        return json.loads(session.get_function("tvm_mpq.server_info")())
    except Exception as e:  # noqa: BLE001 - another server: no identity to record
        return {"server": f"unknown (no tvm_mpq.server_info: {type(e).__name__})"}


class BoardRunner(LocalRunner):
    """The boards of one tracker key (see the module docstring).

    Args:
        tracker: ``"HOST:PORT"`` of the tracker; key: the boards' key.
        number, repeat, min_repeat_ms: as in ``Module.time_evaluator``.
        max_spread: a timing whose ``(max - min) / median`` exceeds it is repeated once.
        qemu_user: the board is QEMU user mode (default: the key starts with ``qemu``).
        cross_compiler: the riscv64 Linux C++ compiler that links the kernel libraries.
        max_retries: how many other boards a kernel is tried on after its board was lost.
        parallel: boards used at once (None: all registered under the key).
    """

    unit = "seconds"
    times_models = True
    design_fraction = 0.25  # a board measures slowly: a quarter, then the cost model
    max_chunk = 16  # kernels per run() call, fanned out over the key's boards

    def __init__(self, tracker: str | tuple[str, int], key: str, *, number: int = 10,
                 repeat: int = 5, min_repeat_ms: int = 0, max_spread: float = 0.25,
                 qemu_user: bool | None = None, session_timeout: float = 300.0,
                 cross_compiler: str = "riscv64-linux-gnu-g++", max_retries: int = 2,
                 parallel: int | None = None) -> None:
        self.tracker_host, self.tracker_port = parse_addr(tracker, DEFAULT_PORT)
        self.key, self.backend = key, key
        self.number, self.repeat, self.min_repeat_ms = int(number), int(repeat), int(min_repeat_ms)
        self.max_spread, self.session_timeout = float(max_spread), float(session_timeout)
        self.under_qemu = key.startswith("qemu") if qemu_user is None else bool(qemu_user)
        self.cross_compiler = cross_compiler
        self.max_retries, self.parallel = int(max_retries), parallel

    @property
    def unit_note(self) -> str:
        """How to read the seconds (said in the tune report)."""
        return ("QEMU user-mode wall time: not hardware latency" if self.under_qemu
                else f"wall time on the boards of key {self.key!r}")

    def check_profile(self, profile: str | Profile) -> Profile:
        prof = get_profile(profile)
        if prof.is_host or prof.xlen != 64:
            raise ValueError(f"a board server runs riscv64 Linux: profile {prof.name!r} cannot "
                             "be measured on it (rv64gc, rv64gc_zbb, rv64gcv)")
        return prof

    def check_tools(self, profile: Profile) -> None:
        """The cross compiler exists, the tracker answers and the key has a server."""
        if shutil.which(self.cross_compiler) is None:
            raise ToolchainError(f"{self.cross_compiler} not found: install "
                                 "g++-riscv64-linux-gnu (scripts/setup.sh does)")
        status = tracker_status(self.tracker_host, self.tracker_port)
        ks = status.keys.get(self.key)
        if ks is None or not ks.servers:
            raise ValueError(f"no board server is registered under key {self.key!r} at tracker "
                             f"{self.tracker_host}:{self.tracker_port} (docs/boards.md: start "
                             "tvm_rpc server --tracker=... --key=...)")

    def tune_hooks(self, kd: Any, variant: str, profile: Profile) -> TuneHooks:
        raise ValueError("MetaSchedule tuning on a board is not supported yet (tune_trials=0)")

    def run(self, kernels: list[PreparedKernel], profile: Profile,
            timeout_s: float) -> list[RunResult]:
        """Build every kernel's library here, then time them on all boards of the key at once:
        one worker per board (:class:`~tvm_mpq.rpc.client.RPCMeasurer`), so a key with N
        boards measures N kernels at a time; a board lost mid-measurement has its kernel
        retried on another (``max_retries``), then recorded as a failure of the run (retried
        on resume). Each record says which board measured it (``extra["rpc"]["server"]``)."""
        from tvm_mpq.rpc.client import RPCMeasurer

        results: list[RunResult | None] = [None] * len(kernels)
        with tempfile.TemporaryDirectory(prefix="tvm_mpq_board_") as d:
            libs: dict[int, str] = {}
            for i, p in enumerate(kernels):
                built = self._build(p, profile, os.path.join(d, f"kernel{i}.so"))
                if isinstance(built, RunResult):
                    results[i] = built
                else:
                    libs[i] = built

            def job(sess: Any, request: dict[str, Any]) -> dict[str, Any]:
                i = int(request["index"])
                return self._timed(sess, libs[i], kernels[i])

            if libs:
                recs = RPCMeasurer(self.tracker_host, self.tracker_port, self.key, job=job,
                                   max_retries=self.max_retries, timeout_s=self.session_timeout,
                                   parallel=self.parallel).measure_many(
                    [{"index": i} for i in libs])
                for i, rec in zip(libs, recs, strict=True):
                    results[i] = self._result(kernels[i], rec)
        assert all(r is not None for r in results)  # each kernel: a build error or a record
        return results  # type: ignore[return-value]

    def _build(self, p: PreparedKernel, profile: Profile, lib: str) -> str | RunResult:
        """The kernel as a riscv64 Linux shared library at ``lib`` (a build_error result
        when it does not build)."""
        import tvm
        from tvm.support import cc

        from tvm_mpq.schedules.build import build_kernel

        sched = tvm.IRModule({"main": p.func}) if p.func is not None else None
        try:
            build_kernel(p.kd, profile.target("linux"), schedule=sched).export_library(
                lib, fcompile=cc.cross_compiler(self.cross_compiler))
        except Exception as e:  # noqa: BLE001
            return RunResult("build_error", f"{type(e).__name__}: {last_line(e)}")
        return lib

    def _result(self, p: PreparedKernel, rec: dict[str, Any]) -> RunResult:
        """A board's record -> the kernel's result; its provenance goes to ``p.extra``."""
        extra = rec.get("extra") or {}
        if rec.get("status") != "ok":
            return RunResult(str(rec.get("status", "run_error")), str(rec.get("message", "")))
        p.extra = {**p.extra, "device": rec["device"], "rpc": extra.get("rpc"),
                   "board": {"key": self.key, "tracker": f"{self.tracker_host}:{self.tracker_port}",
                             "under_qemu": self.under_qemu},
                   **{k: rec[k] for k in ("spread", "results", "number", "repeat")}}
        return RunResult("ok", numbers={"seconds": rec["seconds"],
                                        "seconds_std": rec["seconds_std"]})

    def _timed(self, sess: Any, lib: str, p: PreparedKernel) -> dict[str, Any]:
        """Check and time one library in a board session: its outputs against the reference
        once, then ``repeat`` timings, again with twice the repeats when the spread is over
        ``max_spread``. A transport error propagates (the board is lost)."""
        from tvm_mpq.rpc.client import measure_on_board

        device = server_info(sess)
        repeat = self.repeat
        for attempt in range(2):
            res = measure_on_board(sess, lib, "kernel", p.args, number=self.number,
                                   repeat=repeat, min_repeat_ms=self.min_repeat_ms,
                                   return_outputs=attempt == 0)
            if attempt == 0:
                got = res.pop("outputs")[-1]
                bad = count_mismatches(got, p.expected)
                if bad:
                    return {"status": "wrong_result",
                            "message": f"{bad} of {got.size} outputs differ from the reference"}
            if res["spread"] <= self.max_spread:
                break
            repeat *= 2  # noisy: once more, with more repeats
        return {**res, "status": "ok", "device": device}

    def remote_model(self, compiled: Any) -> Any:
        """``compiled`` loaded on a board of the key (:class:`~tvm_mpq.rpc.remote.RemoteModel`,
        one session; use ``with``)."""
        from tvm_mpq.rpc.remote import RemoteModel

        return RemoteModel(compiled, (self.tracker_host, self.tracker_port), self.key,
                           qemu_user=self.under_qemu)

    def time_model(self, compiled: Any, x: Any) -> float | None:
        """Median wall seconds of one inference of ``compiled`` on a board of the key
        (:func:`~tvm_mpq.rpc.remote.run_remote`, its output checked against the host
        build); None when the board's output differs."""
        from tvm_mpq.rpc.remote import run_remote

        run = run_remote(compiled, x, tracker=(self.tracker_host, self.tracker_port),
                         key=self.key, number=self.number, repeat=self.repeat,
                         qemu_user=self.under_qemu)
        scale = max(float(np.abs(run.output).max()), 1e-12)
        return run.seconds if (run.max_abs_diff or 0.0) <= 1e-4 * scale else None
