"""One measurement interface for every backend: ``measure`` / ``measure_many``.

A request is (workload, variant, w_bits, a_bits[, tune_trials]); a result is a
:class:`~tvm_mpq.rpc.database.MeasureRecord`. Backends:

* ``"spike"``, ``"qemu"``: bare-metal run on a RISC-V profile; retired-instruction count
  (deterministic). Many kernels are built into one ELF and run in one simulator process.
* ``"host"``: the machine we run on (profile ``"host"``); wall time of one call (mean and
  standard deviation over repeats of TVM's time evaluator).

Every kernel runs on random full-range integer inputs (seeded, so reproducible) and its
output is compared with the numpy reference in the same run; a mismatch is recorded as
``wrong_result`` without a number. With ``tune_trials > 0`` the kernel is first tuned with
MetaSchedule (for instruction count on the simulators), the chosen record is re-validated,
and the tuned schedule is measured.

With a :class:`~tvm_mpq.rpc.database.MeasurementDB`, cached records are returned without
running anything and new ones are committed as each chunk finishes, so an interrupted
campaign resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..schedules.reference import check_bits
from ..schedules.registry import check_variant, make_kernel
from ..schedules.tune import reference_output, tune_kernel, validation_inputs
from ..schedules.workload import Workload, workload_from_dict
from ..targets import Profile, get_profile
from . import simulators
from .database import MeasureKey, MeasurementDB, MeasureRecord, schedule_tag
from .simulators import ToolchainError

log = logging.getLogger(__name__)

BACKENDS = ("spike", "qemu", "host")
SIM_BACKENDS = ("spike", "qemu")
DEFAULT_CHUNK = 8
REQUEST_VERSION = 1

__all__ = [
    "BACKENDS", "MeasureRequest", "ToolchainError", "check_backend", "default_work_dir",
    "format_record", "measure", "measure_many", "measure_request_json", "summarize",
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

    def key(self, profile: str, backend: str) -> MeasureKey:
        return MeasureKey(profile, backend, self.workload.key(), self.variant, self.w_bits,
                          self.a_bits, schedule_tag(self.tune_trials))

    def describe(self) -> str:
        tag = schedule_tag(self.tune_trials)
        return f"{self.workload.key()} {self.variant} w{self.w_bits}a{self.a_bits} {tag}"

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload.to_dict(), "variant": self.variant,
                "w_bits": self.w_bits, "a_bits": self.a_bits, "tune_trials": self.tune_trials}

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


def check_backend(profile: str | Profile, backend: str) -> Profile:
    """The profile, after checking that ``backend`` can measure it (ValueError otherwise)."""
    prof = get_profile(profile)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "host" and not prof.is_host:
        raise ValueError(f"backend 'host' measures the host profile only, not {prof.name!r} "
                         "(use --profile host, or backend spike/qemu for RISC-V)")
    if backend in SIM_BACKENDS and prof.is_host:
        raise ValueError(f"backend {backend!r} simulates a RISC-V profile; 'host' needs backend 'host'")
    return prof


def _check_tools(prof: Profile, backend: str) -> None:
    """Raise ToolchainError (naming the fix) before any work if a tool is missing."""
    if backend not in SIM_BACKENDS:
        return
    simulators.find_picolibc(simulators.find_gcc())
    if backend == "spike":
        simulators.find_spike()
    else:
        simulators.find_qemu(prof.xlen)


def default_work_dir() -> str:
    """Root of MetaSchedule work directories: ``$TVM_MPQ_TUNE_DIR`` or ~/.cache/tvm-mpq/tune."""
    return os.environ.get("TVM_MPQ_TUNE_DIR") or str(Path.home() / ".cache" / "tvm-mpq" / "tune")


def _kernel_work_dir(root: str, prof: Profile, backend: str, req: MeasureRequest) -> str:
    # the budget is part of the path: a directory reused with a larger budget would otherwise
    # report e.g. 128 trials' best under the tag "tuned16"
    return os.path.join(root, prof.name, backend, req.workload.key(),
                        f"{req.variant}_w{req.w_bits}a{req.a_bits}_t{req.tune_trials}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _provenance() -> dict[str, str]:
    import tvm

    from .. import __version__

    return {"tvm_version": str(tvm.__version__), "tvm_mpq_version": __version__,
            "host": socket.gethostname()}


# --------------------------------------------------------------------------------------------
# one kernel's inputs


@dataclass
class _Prepared:
    kd: Any
    args: list[np.ndarray]
    expected: np.ndarray
    func: Any = None  # PrimFunc to run (scheduled or default)
    trace: str | None = None
    trace_hash: str | None = None
    extra: dict[str, Any] | None = None


def _prepare(req: MeasureRequest, prof: Profile, seed: int) -> _Prepared:
    """Kernel, arguments and expected output on random full-range inputs."""
    word_bits = 64 if prof.is_host else prof.word_bits
    kd = make_kernel(req.workload, req.variant, req.w_bits, req.a_bits, word_bits=word_bits)
    x, w = validation_inputs(kd, seed=seed)[0]
    args = kd.make_args(x, w)
    out = args[-1]
    expected = np.asarray(reference_output(kd, x, w)).reshape(out.shape).astype(out.dtype)
    return _Prepared(kd, args, expected, extra={})


# --------------------------------------------------------------------------------------------
# tuning


def _sim_validator(prof: Profile, backend: str):
    """MetaSchedule record validator: run the scheduled kernel on the simulator against the
    reference on the validation inputs (random and extreme-corner)."""
    from .baremetal import KernelCase, run_kernels

    def validate(kd, mod, _target) -> str | None:
        func = mod["main"] if "main" in mod else next(iter(mod.functions.values()))
        cases = []
        for i, (x, w) in enumerate(validation_inputs(kd, seed=1)):
            args = kd.make_args(x, w)
            exp = np.asarray(reference_output(kd, x, w)).reshape(args[-1].shape).astype(args[-1].dtype)
            cases.append(KernelCase(f"val{i}", func, args, {len(args) - 1: exp}))
        bad = [f"{r.status}: {r.message}" for r in run_kernels(cases, prof, backend) if r.status != "ok"]
        return "; ".join(bad) or None

    return validate


def _chosen_trace(work_dir: str, kd, index: int) -> str | None:
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


def _tune(p: _Prepared, req: MeasureRequest, prof: Profile, backend: str,
          work_root: str) -> str | None:
    """Tune ``p.kd``; set ``p.func``/trace. Returns an error message or None."""
    wd = _kernel_work_dir(work_root, prof, backend, req)
    if backend == "host":
        target, runner, builder, validator = "llvm", None, None, None
    else:
        from .ms_runner import BareMetalRunner, bare_metal_builder, ms_target, reference_from_primfunc

        target = ms_target(prof)
        # float candidates run on normal-distributed inputs: summation order changes the
        # rounding, so only the exact integer validation below judges fp32 schedules
        ref = None if req.variant == "fp32" else reference_from_primfunc(p.kd.prim_func("main"))
        runner = BareMetalRunner(prof, backend, reference=ref)
        builder = bare_metal_builder()
        validator = _sim_validator(prof, backend)
    try:
        tuned = tune_kernel(p.kd, target, wd, max_trials=req.tune_trials, runner=runner,
                            builder=builder, validator=validator)
    except ToolchainError:
        raise
    except Exception as e:  # noqa: BLE001 - a tuning crash is this kernel's tune_error
        return f"MetaSchedule failed: {type(e).__name__}: {_last_line(e)}"
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


def _last_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------
# running


def _record(req: MeasureRequest, prof: Profile, backend: str, seed: int, started: str,
            status: str, message: str = "", p: _Prepared | None = None, **numbers: Any) -> MeasureRecord:
    key = req.key(prof.name, backend)
    return MeasureRecord(
        profile=key.profile, backend=backend, workload_key=key.workload_key, variant=req.variant,
        w_bits=req.w_bits, a_bits=req.a_bits, schedule=key.schedule,
        workload=req.workload.to_dict(), status=status, message=message,
        macs=int(req.workload.macs), tune_trials=req.tune_trials,
        schedule_trace=p.trace if p else None, schedule_hash=p.trace_hash if p else None,
        seed=seed, started_at=started, finished_at=_now(), extra=(p.extra or {}) if p else {},
        **_provenance(), **numbers)


def _run_sim_chunk(items: list[tuple[MeasureRequest, _Prepared]], prof: Profile, backend: str,
                   seed: int, started: str, timeout_per_kernel_s: float) -> list[MeasureRecord]:
    from ..schedules.build import kernel_module
    from .baremetal import KernelCase, run_kernels

    # "default" = our default schedule for the profile (kernel_module falls back to the plain
    # lowering when it has none); tuned records carry their own func
    cases = [KernelCase(f"k{i}", p.func if p.func is not None
                        else kernel_module(p.kd, None, f"k{i}", prof.name)[f"k{i}"],
                        p.args, {len(p.args) - 1: p.expected}) for i, (_, p) in enumerate(items)]
    try:
        runs = run_kernels(cases, prof, backend, timeout_s=timeout_per_kernel_s * len(cases))
    except ToolchainError:
        raise
    except Exception as e:  # noqa: BLE001 - the chunk failed as a whole: record, don't abort
        msg = f"simulator run failed: {type(e).__name__}: {_last_line(e)}"
        return [_record(req, prof, backend, seed, started, "run_error", msg, p=p)
                for req, p in items]
    out = []
    for (req, p), r in zip(items, runs, strict=True):
        if r.status == "ok":
            out.append(_record(req, prof, backend, seed, started, "ok", p=p,
                               instructions=int(r.instructions), cycles=int(r.cycles)))
        else:
            out.append(_record(req, prof, backend, seed, started, r.status, r.message, p=p))
    return out


def _run_host(req: MeasureRequest, p: _Prepared, prof: Profile, seed: int, started: str,
              repeat: int = 5, min_repeat_ms: int = 50) -> MeasureRecord:
    import tvm

    from ..schedules.build import build_kernel

    sched = tvm.IRModule({"main": p.func}) if p.func is not None else None
    try:
        lib = build_kernel(p.kd, "llvm", schedule=sched)
    except Exception as e:  # noqa: BLE001
        return _record(req, prof, "host", seed, started, "build_error",
                       f"{type(e).__name__}: {_last_line(e)}", p=p)
    try:
        bufs = [tvm.runtime.tensor(a) for a in p.args]
        lib["kernel"](*bufs)
        got = bufs[-1].numpy()
        if got.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isclose(got, p.expected, rtol=1e-5, atol=1e-6)))
        else:
            bad = int(np.count_nonzero(got != p.expected))
        if bad:
            return _record(req, prof, "host", seed, started, "wrong_result",
                           f"{bad} of {got.size} outputs differ from the reference", p=p)
        f = lib.mod.time_evaluator("kernel", tvm.cpu(), number=1, repeat=repeat,
                                   min_repeat_ms=min_repeat_ms)
        res = np.asarray(f(*bufs).results, dtype=float)
    except Exception as e:  # noqa: BLE001
        return _record(req, prof, "host", seed, started, "run_error",
                       f"{type(e).__name__}: {_last_line(e)}", p=p)
    return _record(req, prof, "host", seed, started, "ok", p=p, seconds=float(res.mean()),
                   seconds_std=float(res.std(ddof=1)) if res.size > 1 else 0.0)


# --------------------------------------------------------------------------------------------
# public API


def _open_db(db: MeasurementDB | str | os.PathLike[str] | None) -> tuple[MeasurementDB | None, bool]:
    if db is None or isinstance(db, MeasurementDB):
        return db, False
    return MeasurementDB(db), True


def measure_many(
    requests: Iterable[RequestLike],
    profile: str | Profile = "rv64gc_zbb",
    backend: str = "spike",
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
    """Measure many kernels on one profile/backend; records in request order.

    Args:
        requests: :class:`MeasureRequest` objects, or tuples ``(workload, variant, w_bits,
            a_bits[, tune_trials])``, or their ``to_dict()`` dicts.
        profile, backend: where to measure (see :data:`BACKENDS`; ``"host"`` needs profile
            ``"host"``).
        db: database (or its path) for caching and storing; None: measure everything, store
            nothing.
        progress: show a tqdm progress bar.
        chunk_size: default-schedule kernels per simulator run; records are committed after
            each chunk, so a crash or kill loses at most one chunk.
        work_dir: root of the MetaSchedule work directories (one per kernel and budget).
        seed: seed of the random inputs.
        force: measure again even if the database has a record.
        retry_failed: measure again the keys whose stored record failed.
        timeout_per_kernel_s: wall-clock budget per kernel of a simulator run.

    Raises:
        ValueError: unknown variant/bits/profile/backend.
        ToolchainError: a compiler or simulator is missing (raised before measuring).
    """
    from tqdm.auto import tqdm

    prof = check_backend(profile, backend)
    reqs = [_as_request(r) for r in requests]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    database, owned = _open_db(db)
    work_root = work_dir or default_work_dir()
    results: dict[MeasureKey, MeasureRecord] = {}
    todo: dict[MeasureKey, MeasureRequest] = {}
    try:
        for r in reqs:
            k = r.key(prof.name, backend)
            if k in results or k in todo:
                continue
            cached = database.get(k) if database is not None and not force else None
            if cached is not None and (cached.ok or not retry_failed):
                results[k] = cached
            else:
                todo[k] = r
        if todo:
            _check_tools(prof, backend)
        bar = tqdm(total=len(todo), disable=not progress, unit="kernel",
                   desc=f"measure {prof.name}/{backend}")

        def done(recs: list[MeasureRecord]) -> None:
            for rec in recs:
                if database is not None:
                    database.put(rec)
                results[rec.key] = rec
            bar.update(len(recs))
            failed = sum(1 for r in results.values() if not r.ok)
            bar.set_postfix(cached=len(results) - bar.n, failed=failed)

        pending: list[tuple[MeasureRequest, _Prepared, str]] = []

        def flush() -> None:
            if not pending:
                return
            items = [(r, p) for r, p, _ in pending]
            started = pending[0][2]
            pending.clear()
            if backend == "host":
                for r, p in items:
                    done([_run_host(r, p, prof, seed, started)])
            else:
                done(_run_sim_chunk(items, prof, backend, seed, started, timeout_per_kernel_s))

        # default schedules first (cheap, batched), then the tuned ones one by one
        for r in sorted(todo.values(), key=lambda r: r.tune_trials > 0):
            started = _now()
            try:
                p = _prepare(r, prof, seed)
            except Exception as e:  # noqa: BLE001 - unsupported shape etc.: this kernel's failure
                done([_record(r, prof, backend, seed, started, "build_error",
                              f"{type(e).__name__}: {_last_line(e)}")])
                continue
            if r.tune_trials > 0:
                flush()
                err = _tune(p, r, prof, backend, work_root)
                if err is not None:
                    done([_record(r, prof, backend, seed, started, "tune_error", err, p=p)])
                    continue
                pending.append((r, p, started))
                flush()
                continue
            pending.append((r, p, started))
            if len(pending) >= (1 if backend == "host" else chunk_size):
                flush()
        flush()
        bar.close()
    finally:
        if owned and database is not None:
            database.close()
    return [results[r.key(prof.name, backend)] for r in reqs]


def measure(
    workload: Workload,
    variant: str,
    w_bits: int,
    a_bits: int,
    profile: str | Profile = "rv64gc_zbb",
    backend: str = "spike",
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
        backend: "spike", "qemu" (instruction counts) or "host" (wall time).
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

