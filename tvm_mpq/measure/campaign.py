"""One measurement interface for every runner: ``measure`` / ``measure_many``.

A request is (workload, variant, w_bits, a_bits[, tune_trials]); a result is a
:class:`~tvm_mpq.measure.database.MeasureRecord`. Where it runs is a
:class:`~tvm_mpq.measure.runner.Runner`, given as an object or by its backend name:

* ``"spike"``, ``"qemu"`` (:class:`~tvm_mpq.measure.sim_runner.SimRunner`): bare-metal run
  on a RISC-V profile; retired-instruction count (deterministic). Many kernels are built
  into one ELF and run in one simulator process.
* ``"host"`` (:class:`~tvm_mpq.measure.host_runner.HostRunner`): the machine we run on
  (profile ``"host"``); wall time of one call (mean and standard deviation over repeats of
  TVM's time evaluator).
* :class:`~tvm_mpq.rpc.runner.RPCRunner`: the simulator hosts of a TVM RPC tracker key.

Every kernel runs on random full-range integer inputs (seeded, so reproducible) and its
output is compared with the numpy reference in the same run; a mismatch is recorded as
``wrong_result`` without a number. With ``tune_trials > 0`` the kernel is first tuned with
MetaSchedule (for instruction count on the simulators), the chosen record is re-validated,
and the tuned schedule is measured.

With a :class:`~tvm_mpq.measure.database.MeasurementDB`, cached records are returned without
running anything and new ones are committed as each chunk finishes, so an interrupted
campaign resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tvm_mpq.measure.database import (
    TRANSIENT_ATTEMPTS,
    MeasureKey,
    MeasurementDB,
    MeasureRecord,
    schedule_tag,
)
from tvm_mpq.measure.key import KernelKey
from tvm_mpq.measure.local_runner import default_work_dir
from tvm_mpq.measure.runner import DEFAULT_CHUNK, Runner, RunSettings, create_runner
from tvm_mpq.measure.toolchain import ToolchainError
from tvm_mpq.schedules.reference import check_bits
from tvm_mpq.schedules.registry import check_variant
from tvm_mpq.schedules.workload import Workload, workload_from_dict
from tvm_mpq.targets import Profile

REQUEST_VERSION = 1

__all__ = [
    "MeasureRequest", "ToolchainError", "default_work_dir", "format_record", "measure",
    "measure_many", "measure_request_json", "summarize",
]


@dataclass(frozen=True)
class MeasureRequest:
    """What to measure: one kernel, with the default schedule or a tuned one."""

    workload: Workload
    variant: str
    w_bits: int
    a_bits: int
    tune_trials: int = 0

    def __post_init__(self) -> None:
        check_variant(self.variant)
        check_bits(self.w_bits, self.a_bits)
        schedule_tag(self.tune_trials)  # validates >= 0

    def kernel_key(self, profile: str) -> KernelKey:
        """The kernel this request measures on ``profile``."""
        return KernelKey(self.workload.key(), self.variant, self.w_bits, self.a_bits, profile)

    def key(self, profile: str, backend: str) -> MeasureKey:
        """The database key of this request's record on ``profile``/``backend``."""
        return MeasureKey.of(self.kernel_key(profile), backend, schedule_tag(self.tune_trials))

    def describe(self) -> str:
        tag = schedule_tag(self.tune_trials)
        return f"{self.workload.key()} {self.variant} w{self.w_bits}a{self.a_bits} {tag}"

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload.to_dict(), "variant": self.variant,
                "w_bits": self.w_bits, "a_bits": self.a_bits, "tune_trials": self.tune_trials}

    def to_request(self, profile: str, backend: str, seed: int = 0) -> dict[str, Any]:
        """The JSON request of :func:`measure_request_json` (what an RPC server measures)."""
        return {**self.to_dict(), "profile": profile, "backend": backend, "seed": seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureRequest:
        wl = d["workload"]
        return cls(wl if not isinstance(wl, dict) else workload_from_dict(wl), str(d["variant"]),
                   int(d["w_bits"]), int(d["a_bits"]), int(d.get("tune_trials", 0)))


RequestLike = MeasureRequest | tuple | dict


def _as_request(r: RequestLike) -> MeasureRequest:
    if isinstance(r, MeasureRequest):
        return r
    if isinstance(r, dict):
        return MeasureRequest.from_dict(r)
    return MeasureRequest(*r)


# --------------------------------------------------------------------------------------------
# public API


def _open_db(db: MeasurementDB | str | os.PathLike[str] | None) -> tuple[MeasurementDB | None, bool]:
    if db is None or isinstance(db, MeasurementDB):
        return db, False
    return MeasurementDB(db), True


def measure_many(
    requests: Iterable[RequestLike],
    profile: str | Profile = "rv64gc_zbb",
    backend: str | Runner = "spike",
    *,
    db: MeasurementDB | str | os.PathLike[str] | None = None,
    progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    work_dir: str | None = None,
    seed: int = 0,
    force: bool = False,
    retry_failed: bool = False,
    timeout_per_kernel_s: float = 300.0,
) -> list[MeasureRecord]:
    """Measure many kernels on one profile with one runner; records in request order.

    Args:
        requests: :class:`MeasureRequest` objects, or tuples ``(workload, variant, w_bits,
            a_bits[, tune_trials])``, or their ``to_dict()`` dicts.
        profile: the target profile (``"host"`` for the host runner).
        backend: a :class:`~tvm_mpq.measure.runner.Runner` (e.g. an
            :class:`~tvm_mpq.rpc.runner.RPCRunner`) or a backend name from
            :data:`~tvm_mpq.measure.runner.BACKENDS`.
        db: database (or its path) for caching and storing; None: measure everything, store
            nothing. Records are keyed on the runner's backend tag.
        progress: show a tqdm progress bar.
        chunk_size: default-schedule kernels per simulator run; records are committed after
            each chunk, so a crash or kill loses at most one chunk.
        work_dir: root of the MetaSchedule work directories (one per kernel and budget).
        seed: seed of the random inputs.
        force: measure again even if the database has a record.
        retry_failed: measure again the keys whose stored record failed (transient failures
            -- a killed simulator, a lost server, a wall-clock timeout -- are measured again
            anyway, up to :data:`~tvm_mpq.measure.database.TRANSIENT_ATTEMPTS` times).
        timeout_per_kernel_s: wall-clock budget per kernel of a simulator run.

    Raises:
        ValueError: unknown variant/bits/profile/backend.
        ToolchainError: a compiler or simulator is missing (raised before measuring).
    """
    from tqdm.auto import tqdm

    runner = create_runner(backend)
    prof = runner.check_profile(profile)
    reqs = [_as_request(r) for r in requests]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    settings = RunSettings(seed, chunk_size, work_dir, timeout_per_kernel_s)
    database, owned = _open_db(db)
    try:
        prior: dict[MeasureKey, int] = {}
        results, todo = _cached(reqs, prof.name, runner.backend, database, force, retry_failed,
                                prior)
        if todo:
            runner.check_tools(prof)
        bar = tqdm(total=len(todo), disable=not progress, unit="kernel",
                   desc=f"measure {prof.name}/{runner.backend}")

        def done(recs: list[MeasureRecord]) -> None:
            for rec in recs:
                if rec.transient and rec.key in prior:  # count the campaigns that tried
                    rec.extra = {**rec.extra, "transient_attempts": prior[rec.key] + 1}
                if database is not None:
                    database.put(rec)
                results[rec.key] = rec
            bar.update(len(recs))
            failed = sum(1 for r in results.values() if not r.ok)
            bar.set_postfix(cached=len(results) - bar.n, failed=failed)

        runner.measure(list(todo.values()), prof, settings, done)
        bar.close()
    finally:
        if owned and database is not None:
            database.close()
    return [results[r.key(prof.name, runner.backend)] for r in reqs]


def _cached(reqs: list[MeasureRequest], profile: str, backend: str, db: MeasurementDB | None,
            force: bool, retry_failed: bool, prior: dict[MeasureKey, int]
            ) -> tuple[dict[MeasureKey, MeasureRecord], dict[MeasureKey, MeasureRequest]]:
    """The records ``db`` already holds, and the distinct requests still to measure: those
    not held, failed ones with ``retry_failed``, and transient failures (killed, lost, timed
    out under load) tried fewer than :data:`TRANSIENT_ATTEMPTS` times, whose attempts so far
    go to ``prior``."""
    results: dict[MeasureKey, MeasureRecord] = {}
    todo: dict[MeasureKey, MeasureRequest] = {}
    for r in reqs:
        k = r.key(profile, backend)
        if k in results or k in todo:
            continue
        cached = db.get(k) if db is not None and not force else None
        retry = retry_failed or (cached is not None and cached.transient
                                 and cached.attempts < TRANSIENT_ATTEMPTS)
        if cached is not None and (cached.ok or not retry):
            results[k] = cached
        else:
            todo[k] = r
            if cached is not None and cached.transient:
                prior[k] = cached.attempts
    return results, todo


def measure(
    workload: Workload,
    variant: str,
    w_bits: int,
    a_bits: int,
    profile: str | Profile = "rv64gc_zbb",
    backend: str | Runner = "spike",
    *,
    db: MeasurementDB | str | os.PathLike[str] | None = None,
    tune_trials: int = 0,
    work_dir: str | None = None,
    seed: int = 0,
    force: bool = False,
) -> MeasureRecord:
    """Measure one kernel (or return its cached record from ``db``).

    Args:
        workload: ``Conv2dWorkload`` or ``DenseWorkload``.
        variant: "fp32", "int8", "unpack", "bitserial" or "swar".
        w_bits, a_bits: bit-widths in {1, 2, 4, 8}.
        profile: target profile name (e.g. "rv64gc_zbb"; "host" for backend "host").
        backend: a runner, or "spike", "qemu" (instruction counts) or "host" (wall time).
        db: a :class:`MeasurementDB` or its path; None: no caching.
        tune_trials: 0 for the default schedule, else the MetaSchedule trial budget.
        work_dir: root of MetaSchedule work directories (default :func:`default_work_dir`).
        seed: seed of the random inputs.
        force: ignore a cached record.

    Returns:
        The record; ``record.status != "ok"`` means it failed (``record.message`` says why)
        and it has no number.
    """
    req = MeasureRequest(workload, variant, int(w_bits), int(a_bits), int(tune_trials))
    return measure_many([req], profile, backend, db=db, progress=False, work_dir=work_dir,
                        seed=seed, force=force)[0]


def measure_request_json(request_json: str, *, db: MeasurementDB | None = None) -> str:
    """JSON in, JSON out: the entry point RPC measurement servers expose.

    Request: ``{"workload": <Workload.to_dict()>, "variant": str, "w_bits": int,
    "a_bits": int, "profile": str, "backend": str, "tune_trials": int = 0, "seed": int = 0,
    "force": bool = false}``. Response: ``MeasureRecord.to_dict()`` as JSON.

    Raises:
        ValueError: malformed request (missing/unknown fields, bad values).
        ToolchainError: the serving machine lacks a tool for the backend.
    """
    try:
        d = json.loads(request_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"measurement request is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError("measurement request must be a JSON object")
    allowed = {"workload", "variant", "w_bits", "a_bits", "profile", "backend", "tune_trials",
               "seed", "force", "request_version"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"unknown request fields {unknown}; allowed: {sorted(allowed)}")
    missing = [k for k in ("workload", "variant", "w_bits", "a_bits") if k not in d]
    if missing:
        raise ValueError(f"measurement request lacks {missing}")
    if int(d.get("request_version", REQUEST_VERSION)) != REQUEST_VERSION:
        raise ValueError(f"request_version {d['request_version']} unsupported (this is {REQUEST_VERSION})")
    try:
        wl = workload_from_dict(d["workload"])
    except (TypeError, KeyError) as e:
        raise ValueError(f"bad workload {d['workload']!r}: {e}") from e
    rec = measure(wl, str(d["variant"]), int(d["w_bits"]), int(d["a_bits"]),
                  d.get("profile", "rv64gc_zbb"), d.get("backend", "spike"), db=db,
                  tune_trials=int(d.get("tune_trials", 0)), seed=int(d.get("seed", 0)),
                  force=bool(d.get("force", False)))
    return json.dumps(rec.to_dict(), sort_keys=True)


def summarize(records: Sequence[MeasureRecord]) -> str:
    """One line per record (used by the CLI's non-JSON mode)."""
    return "\n".join(format_record(r) for r in records)


def format_record(r: MeasureRecord) -> str:
    """A readable one-line description of a record."""
    head = f"{r.workload_key} {r.variant} w{r.w_bits}a{r.a_bits} {r.schedule} on {r.profile}/{r.backend}"
    if not r.ok:
        return f"{head}: {r.status.upper()}: {r.message}"
    if r.instructions is not None:
        return (f"{head}: {r.instructions:,} instructions "
                f"({r.macs / r.instructions:.3f} MACs/instruction, {r.macs:,} MACs)")
    std = f" ± {_fmt_s(r.seconds_std)}" if r.seconds_std is not None else ""
    return f"{head}: {_fmt_s(r.seconds)}{std} ({r.macs:,} MACs)"


def _fmt_s(s: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"

