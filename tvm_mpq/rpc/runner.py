"""Measuring through a TVM RPC tracker: :class:`RPCRunner`.

A :class:`~tvm_mpq.measure.runner.Runner` whose campaign is fanned out by
:class:`~tvm_mpq.rpc.client.RPCMeasurer` over the simulator hosts registered under one
tracker key (``tvm-mpq rpc serve``), so that::

    measure_many(requests, "rv64gc_zbb", RPCRunner("127.0.0.1:9190", "spike-rv64gc_zbb"), db=db)

caches and stores exactly as a local campaign does: records are keyed on the backend of the
servers (``"spike"`` here), and their counts equal a local run's (instruction counts are
deterministic).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tvm_mpq.measure.database import MeasureRecord
from tvm_mpq.measure.runner import SIM_BACKENDS, RecordSink, Runner, RunSettings
from tvm_mpq.measure.sim_runner import SimRunner
from tvm_mpq.rpc.tracker import DEFAULT_HOST, DEFAULT_PORT, parse_addr, tracker_status
from tvm_mpq.targets import Profile

if TYPE_CHECKING:
    from tvm_mpq.measure.baremetal import KernelCase, KernelRun
    from tvm_mpq.measure.campaign import MeasureRequest
    from tvm_mpq.measure.toolchain import SimResult


class RPCRunner(Runner):
    """The simulator hosts of one tracker key (see the module docstring).

    Args:
        tracker: the tracker, ``"HOST:PORT"`` or ``(host, port)``.
        key: device key, ``"<backend>-<profile>"`` by convention (``tvm-mpq rpc status``).
        backend: the servers' backend (``"spike"`` or ``"qemu"``); None: the key's prefix.
        max_retries, timeout_s, queue_timeout_s, parallel: see
            :class:`~tvm_mpq.rpc.client.RPCMeasurer`.

    Bare-metal runs that are no measurement request (the quantize/dequantize passes, a
    standalone artifact: :meth:`run_cases`, :meth:`run_elf`) run on this machine's
    simulator of the same backend; their counts equal the servers'.
    """

    unit = "instructions"
    bare_metal = True

    def __init__(self, tracker: str | tuple[str, int] = f"{DEFAULT_HOST}:{DEFAULT_PORT}",
                 key: str = "spike-rv64gc_zbb", *, backend: str | None = None,
                 max_retries: int = 2, timeout_s: float = 900.0, queue_timeout_s: float = 60.0,
                 parallel: int | None = None) -> None:
        self.tracker_host, self.tracker_port = parse_addr(tracker, DEFAULT_PORT)
        self.key = key
        backend = backend or key.split("-", 1)[0]
        if backend not in SIM_BACKENDS:
            raise ValueError(f"RPCRunner: cannot tell the backend of key {key!r}; pass "
                             f"backend= one of {SIM_BACKENDS}")
        self.backend = backend
        self.local = SimRunner(backend)
        self.platform = self.local.platform
        self.max_retries, self.timeout_s = max_retries, timeout_s
        self.queue_timeout_s, self.parallel = queue_timeout_s, parallel

    def check_profile(self, profile: str | Profile) -> Profile:
        return self.local.check_profile(profile)

    def check_tools(self, profile: Profile) -> None:
        """The tracker answers (:class:`~tvm_mpq.rpc.tracker.TrackerUnreachableError`
        otherwise), at least one server is registered under the key (ValueError naming the
        keys it has), and this machine has the simulator for the runs that stay local (the
        quantize / dequantize passes, standalone artifacts); the servers check their own."""
        status = tracker_status(self.tracker_host, self.tracker_port)
        ks = status.keys.get(self.key)
        if ks is None or not ks.servers:
            have = ", ".join(f"{k} ({len(v.servers)})" for k, v in status.keys.items()) or "none"
            raise ValueError(
                f"no server is registered under key {self.key!r} at tracker "
                f"{self.tracker_host}:{self.tracker_port} (keys: {have}); start one with "
                f"tvm-mpq rpc serve --tracker {self.tracker_host}:{self.tracker_port} "
                f"--key {self.key}")
        self.local.check_tools(profile)

    def measure(self, requests: Sequence[MeasureRequest], profile: Profile,
                settings: RunSettings, done: RecordSink) -> None:
        from tvm_mpq.rpc.client import RPCMeasurer

        lock = threading.Lock()  # records arrive on the measurer's worker threads

        def on_record(_index: int, rec: dict) -> None:
            with lock:
                done([MeasureRecord.from_dict(rec)])

        RPCMeasurer(self.tracker_host, self.tracker_port, self.key, profile=profile.name,
                    backend=self.backend, max_retries=self.max_retries, timeout_s=self.timeout_s,
                    queue_timeout_s=self.queue_timeout_s, parallel=self.parallel,
                    on_record=on_record).measure_many(
            [r.to_request(profile.name, self.backend, settings.seed) for r in requests])

    def run_elf(self, elf: str, profile: Profile, max_instructions: int,
                timeout_s: float) -> SimResult:
        return self.local.run_elf(elf, profile, max_instructions, timeout_s)

    def run_cases(self, cases: list[KernelCase], profile: Profile,
                  timeout_s: float = 600) -> list[KernelRun]:
        return self.local.run_cases(cases, profile, timeout_s)

    def __repr__(self) -> str:
        return (f"RPCRunner('{self.tracker_host}:{self.tracker_port}', {self.key!r}, "
                f"backend={self.backend!r})")
