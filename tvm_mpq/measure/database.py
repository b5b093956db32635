"""Embedded SQLite database of kernel measurements.

One row per :class:`MeasureKey`: a kernel (:class:`~tvm_mpq.measure.key.KernelKey`), the
backend that measured it and the schedule tag. The database runs in WAL mode and every
record is committed on its own, so a process killed in the middle of a campaign loses only
the measurement in flight. A failed measurement is stored with its status and message and
never carries a number (enforced by a CHECK constraint as well as by :class:`MeasureRecord`);
:func:`failed_record` is the one builder of such records, locally and over RPC. A file that
is not a valid database raises :class:`CorruptDatabaseError` naming it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from tvm_mpq.measure.key import KernelKey

#: Statuses a record can have; only "ok" carries numbers.
STATUSES = ("ok", "build_error", "run_error", "wrong_result", "timeout", "tune_error")
SCHEMA_VERSION = 1
_NUMBERS = ("instructions", "cycles", "seconds", "seconds_std")
#: statuses of a measurement that failed for good (another try gives the same failure);
#: a timeout or a tuning failure may succeed with more time or trials
FAILED_FOR_GOOD = ("wrong_result", "build_error", "run_error")
#: message fragments of failures of the run rather than of the kernel: a simulator killed
#: from outside, a wall-clock timeout (a loaded machine), a chunk that never ran, a lost or
#: missing RPC server or tracker. Such records are measured again by a later campaign, at most
#: :data:`TRANSIENT_ATTEMPTS` times in all, and never price a kernel out.
TRANSIENT_MARKERS = ("killed by signal", "wall-clock timeout", "not run: ", "simulator run failed",
                     "lost server", "tracker lost", "no RPC server", "refused connections",
                     "RPC client error", "on server")
TRANSIENT_ATTEMPTS = 3


def is_transient(status: str, message: str) -> bool:
    """Whether a failed measurement failed because of its run, not its kernel (see
    :data:`TRANSIENT_MARKERS`): another try may succeed."""
    return status in ("run_error", "timeout") and any(m in message for m in TRANSIENT_MARKERS)


def schedule_tag(tune_trials: int) -> str:
    """``"default"`` for the untuned lowering, ``"tuned<trials>"`` for a MetaSchedule schedule."""
    if tune_trials < 0:
        raise ValueError(f"tune_trials must be >= 0, got {tune_trials}")
    return "default" if tune_trials == 0 else f"tuned{int(tune_trials)}"


@dataclass(frozen=True)
class MeasureKey:
    """Identity of a measurement (the database's primary key): a kernel
    (:attr:`kernel`), the backend that measured it and the schedule tag."""

    profile: str
    backend: str
    workload_key: str
    variant: str
    w_bits: int
    a_bits: int
    schedule: str = "default"

    @classmethod
    def of(cls, kernel: KernelKey, backend: str, schedule: str = "default") -> MeasureKey:
        """The key of ``kernel`` measured on ``backend`` with ``schedule``."""
        return cls(kernel.profile, backend, kernel.workload_key, kernel.variant,
                   int(kernel.w_bits), int(kernel.a_bits), schedule)

    @property
    def kernel(self) -> KernelKey:
        """The kernel this key measures (shared with the cost model and the search)."""
        return KernelKey(self.workload_key, self.variant, int(self.w_bits), int(self.a_bits),
                         self.profile)


@dataclass
class MeasureRecord:
    """One measurement (or failed attempt) of one kernel.

    Attributes:
        profile, backend, workload_key, variant, w_bits, a_bits, schedule: the key;
            ``schedule`` is ``"default"`` or ``"tuned<trials>"``.
        workload: the workload's ``to_dict()`` (rebuild with ``workload_from_dict``).
        status: one of :data:`STATUSES`.
        instructions: retired instructions of one kernel call (simulator backends).
        cycles: cycle counter delta (equals ``instructions`` on Spike/QEMU).
        seconds, seconds_std: mean and standard deviation of the wall time of one call
            (wall-clock backends such as ``"host"``).
        message: empty when ok, otherwise why it failed.
        macs: multiply-accumulates of the workload.
        tune_trials: MetaSchedule trial budget (0: default schedule).
        schedule_trace, schedule_hash: the tuned schedule's MetaSchedule trace and the
            sha256 of it (None for the default schedule).
        seed: seed of the random inputs.
        started_at, finished_at: ISO-8601 UTC timestamps.
        tvm_version, tvm_mpq_version, host: provenance.
    """

    profile: str
    backend: str
    workload_key: str
    variant: str
    w_bits: int
    a_bits: int
    schedule: str
    workload: dict[str, Any]
    status: str
    instructions: int | None = None
    cycles: int | None = None
    seconds: float | None = None
    seconds_std: float | None = None
    message: str = ""
    macs: int = 0
    tune_trials: int = 0
    schedule_trace: str | None = None
    schedule_hash: str | None = None
    seed: int = 0
    started_at: str = ""
    finished_at: str = ""
    tvm_version: str = ""
    tvm_mpq_version: str = ""
    host: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transient(self) -> bool:
        """A failure of the run (killed, lost, timed out under load), not of the kernel."""
        return not self.ok and is_transient(self.status, self.message)

    @property
    def attempts(self) -> int:
        """How many campaigns have tried this kernel and failed transiently (0: other)."""
        return int(self.extra.get("transient_attempts", 1)) if self.transient else 0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        numbers = {k: getattr(self, k) for k in _NUMBERS if getattr(self, k) is not None}
        if self.status != "ok" and numbers:
            raise ValueError(f"a failed measurement ({self.status}) must not carry numbers: {numbers}")
        if self.status == "ok" and self.instructions is None and self.seconds is None:
            raise ValueError("an ok measurement needs instructions or seconds")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def key(self) -> MeasureKey:
        """The database key of this record."""
        return MeasureKey(self.profile, self.backend, self.workload_key, self.variant,
                          self.w_bits, self.a_bits, self.schedule)

    @property
    def kernel_key(self) -> KernelKey:
        """The kernel measured (without backend and schedule)."""
        return self.key.kernel

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``json.dumps`` works on it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureRecord:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (forward compatibility)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def provenance() -> dict[str, str]:
    """Where a record was made: TVM and tvm-mpq versions and this host's name (the
    ``tvm_version``, ``tvm_mpq_version`` and ``host`` fields of every record)."""
    import tvm

    from tvm_mpq import __version__

    return {"tvm_version": str(tvm.__version__), "tvm_mpq_version": __version__,
            "host": socket.gethostname()}


def utc_now() -> str:
    """The current time as an ISO-8601 UTC timestamp (``started_at`` / ``finished_at``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_for(request: Mapping[str, Any], status: str, message: str = "",
               **fields: Any) -> MeasureRecord:
    """The record of a measurement request, with this machine's :func:`provenance`.

    Args:
        request: a measurement request: ``workload`` (a workload or its ``to_dict()``),
            ``variant``, ``w_bits``, ``a_bits``, ``profile``, ``backend`` and optionally
            ``tune_trials`` and ``seed`` (the fields of
            :func:`tvm_mpq.measure.campaign.measure_request_json`).
        status, message: see :class:`MeasureRecord`.
        fields: further record fields (numbers, timestamps, schedule trace, extra).

    Raises:
        KeyError, TypeError, ValueError: ``request`` is not a measurement request.
    """
    from tvm_mpq.schedules.workload import workload_from_dict

    wl = request["workload"]
    wl = workload_from_dict(wl) if isinstance(wl, dict) else wl
    trials = int(request.get("tune_trials", 0))
    base: dict[str, Any] = dict(
        profile=str(request["profile"]), backend=str(request["backend"]), workload_key=wl.key(),
        variant=str(request["variant"]), w_bits=int(request["w_bits"]),
        a_bits=int(request["a_bits"]), schedule=schedule_tag(trials), workload=wl.to_dict(),
        status=status, message=message, macs=int(wl.macs), tune_trials=trials,
        seed=int(request.get("seed", 0)), **provenance())
    return MeasureRecord(**{**base, **fields})


def failed_record(request: Mapping[str, Any], status: str, message: str,
                  **fields: Any) -> MeasureRecord:
    """The record of a failed measurement of ``request`` (see :func:`record_for`): it never
    carries a number. The one builder of failures, locally and over RPC."""
    if status == "ok" or status not in STATUSES:
        raise ValueError(f"a failed record needs a failure status from {STATUSES[1:]}, not {status!r}")
    return record_for(request, status, message, **fields)


def failed_record_dict(request: Mapping[str, Any], status: str, message: str,
                       rpc: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`failed_record` as a JSON-ready dict, the form RPC servers and clients exchange.

    A request that is no measurement request (e.g. an RPC plumbing self-test) keeps its own
    fields, plus ``status``/``message`` and null numbers. ``rpc`` goes to ``extra["rpc"]``.
    """
    rec: dict[str, Any]
    try:
        rec = failed_record(request, status, message).to_dict()
    except Exception:  # noqa: BLE001 -- not a measurement request: keep its fields
        rec = {k: v for k, v in request.items() if k not in _NUMBERS}
        rec.update(status=status, message=message, **dict.fromkeys(_NUMBERS))
    if rpc:
        rec["extra"] = {**(rec.get("extra") or {}), "rpc": dict(rpc)}
    return rec


_KEY_COLS = [f.name for f in fields(MeasureKey)]
_JSON_COLS = ("workload", "extra")
_COLS = [f.name for f in fields(MeasureRecord)]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS measurements (
    profile TEXT NOT NULL, backend TEXT NOT NULL, workload_key TEXT NOT NULL,
    variant TEXT NOT NULL, w_bits INTEGER NOT NULL, a_bits INTEGER NOT NULL,
    schedule TEXT NOT NULL,
    workload TEXT NOT NULL, status TEXT NOT NULL,
    instructions INTEGER, cycles INTEGER, seconds REAL, seconds_std REAL,
    message TEXT NOT NULL DEFAULT '', macs INTEGER NOT NULL DEFAULT 0,
    tune_trials INTEGER NOT NULL DEFAULT 0, schedule_trace TEXT, schedule_hash TEXT,
    seed INTEGER NOT NULL DEFAULT 0, started_at TEXT, finished_at TEXT,
    tvm_version TEXT, tvm_mpq_version TEXT, host TEXT, extra TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY ({", ".join(_KEY_COLS)}),
    CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    CHECK (status = 'ok' OR (instructions IS NULL AND cycles IS NULL AND seconds IS NULL
                             AND seconds_std IS NULL)),
    CHECK (status != 'ok' OR instructions IS NOT NULL OR seconds IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS measurements_pb ON measurements (profile, backend);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def default_db_path() -> str:
    """``$TVM_MPQ_DB``, else ``~/.cache/tvm-mpq/measurements.sqlite``."""
    env = os.environ.get("TVM_MPQ_DB")
    if env:
        return env
    return str(Path.home() / ".cache" / "tvm-mpq" / "measurements.sqlite")


class StaleDatabaseError(RuntimeError):
    """A measurement database of another kernel revision (its numbers would be stale)."""

    def __init__(self, stored_revision: int, message: str) -> None:
        super().__init__(message)
        self.stored_revision = stored_revision


class CorruptDatabaseError(RuntimeError):
    """The database file is not a readable SQLite measurement database."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(f"{path} is not a valid measurement database ({cause}): delete or move "
                         "it and rerun (its measurements are then taken again)")
        self.path = path


_T = TypeVar("_T")


class MeasurementDB:
    """SQLite store of :class:`MeasureRecord` (safe to share between threads and processes).

    Args:
        path: database file (parent directories are created); ``":memory:"`` for tests.
        timeout_s: how long a writer waits for another process' lock.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout_s: float = 60.0) -> None:
        self.path = str(path) if path is not None else default_db_path()
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.path = str(Path(self.path).expanduser())
        # autocommit mode (isolation_level=None): each put is its own committed transaction
        self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        try:
            row = self._read(self._init_schema)
            if int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema version {row[0]}, this code reads "
                                   f"{SCHEMA_VERSION}; use a new database file")
            self._check_kernels_revision()
        except BaseException:
            self._conn.close()
            raise

    def _init_schema(self) -> sqlite3.Row:
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed record survives even an OS crash, not only a killed process
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
        return self._conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()

    def _read(self, query: Callable[[], _T]) -> _T:
        """Run ``query`` under the lock; a corrupt file raises :class:`CorruptDatabaseError`
        naming it (a locked database or a refused write keeps its own sqlite3 error)."""
        with self._lock:
            try:
                return query()
            except (sqlite3.OperationalError, sqlite3.IntegrityError):
                raise
            except sqlite3.DatabaseError as e:
                raise CorruptDatabaseError(self.path, e) from e
            except json.JSONDecodeError as e:  # a row this code did not write
                raise CorruptDatabaseError(self.path, e) from e

    def _check_kernels_revision(self) -> None:
        """Refuse measurements of other kernel definitions (they would be silently reused)."""
        from tvm_mpq.schedules import KERNELS_REVISION

        def stored_revision() -> int:
            row = self._conn.execute("SELECT value FROM meta WHERE name='kernels_revision'").fetchone()
            if row is not None:
                return int(row[0])
            # databases written before the revision was recorded hold revision-1 kernels
            n = self._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
            stored = 1 if n else KERNELS_REVISION
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('kernels_revision', ?)",
                               (str(stored),))
            return stored

        stored = self._read(stored_revision)
        if stored != KERNELS_REVISION:
            raise StaleDatabaseError(stored,
                f"{self.path}: holds measurements of kernel revision {stored}, this code builds "
                f"revision {KERNELS_REVISION} (tvm_mpq.schedules.KERNELS_REVISION); its numbers "
                f"would be stale: use a new database file (or a new tune workdir)")

    # ---- writing ----

    def put(self, record: MeasureRecord) -> None:
        """Insert or replace ``record`` and commit it immediately."""
        d = record.to_dict()
        vals = [json.dumps(d[c], sort_keys=True) if c in _JSON_COLS else d[c] for c in _COLS]
        sql = (f"INSERT OR REPLACE INTO measurements ({', '.join(_COLS)}) "
               f"VALUES ({', '.join('?' * len(_COLS))})")
        with self._lock:
            self._conn.execute(sql, vals)

    def delete(self, key: MeasureKey | tuple) -> bool:
        """Remove one record; True if it existed."""
        k = _as_key(key)
        where = " AND ".join(f"{c} = ?" for c in _KEY_COLS)
        with self._lock:
            cur = self._conn.execute(f"DELETE FROM measurements WHERE {where}", list(asdict(k).values()))
        return cur.rowcount > 0

    def forget_failed(self, profile: str | None = None, backend: str | None = None) -> int:
        """Remove every record that holds no number (any failure status), so the next
        campaign measures those kernels again; returns how many were removed."""
        where, params = _filters(profile=profile, backend=backend)
        cond = (where + " AND" if where else " WHERE") + " status != 'ok'"
        with self._lock:
            cur = self._conn.execute(f"DELETE FROM measurements{cond}", params)
        return cur.rowcount

    # ---- reading ----

    def get(self, key: MeasureKey | tuple) -> MeasureRecord | None:
        """The record stored under ``key`` (a :class:`MeasureKey` or a tuple in its field order)."""
        k = _as_key(key)
        where = " AND ".join(f"{c} = ?" for c in _KEY_COLS)
        row = self._read(lambda: self._conn.execute(f"SELECT * FROM measurements WHERE {where}",
                                                    list(asdict(k).values())).fetchone())
        return self._read(lambda: _from_row(row)) if row is not None else None

    def records(self, profile: str | None = None, backend: str | None = None, *,
                status: str | None = None, variant: str | None = None,
                schedule: str | None = None) -> list[MeasureRecord]:
        """All records matching the given filters (None: any), e.g. training data for a cost
        model: ``db.records("rv64gc_zbb", "spike", status="ok")``."""
        where, params = _filters(profile=profile, backend=backend, status=status,
                                 variant=variant, schedule=schedule)
        return self._read(lambda: [_from_row(r) for r in self._conn.execute(
            f"SELECT * FROM measurements{where} ORDER BY {', '.join(_KEY_COLS)}", params)])

    def kernel_costs(self, profile: str, backend: str, unit: str,
                     schedule: str = "default") -> dict[KernelKey, float]:
        """Measured cost per kernel of ``schedule`` (default: the default schedules; or e.g.
        ``"tuned64"``) on ``profile``/``backend``, in
        ``unit`` (``"instructions"`` or ``"seconds"``); ``math.inf`` for a kernel whose
        measurement failed for good (:data:`FAILED_FOR_GOOD`: wrong result, build or run
        error), which the search must not pick and a compiled model must not run. Kernels
        that timed out, failed to tune or failed transiently (:func:`is_transient`) are
        absent (another try may succeed)."""
        if unit not in ("instructions", "seconds"):
            raise ValueError(f"unknown cost unit {unit!r}; expected 'instructions' or 'seconds'")
        out: dict[KernelKey, float] = {}
        for r in self.records(profile, backend, schedule=schedule):
            key = r.kernel_key
            v = getattr(r, unit)
            if r.ok and v is not None:
                out[key] = float(v)
            elif r.status in FAILED_FOR_GOOD and not r.transient:
                out.setdefault(key, math.inf)
        return out

    def count(self, profile: str | None = None, backend: str | None = None, *,
              status: str | None = None) -> int:
        """Number of records matching the filters."""
        where, params = _filters(profile=profile, backend=backend, status=status)
        return self._read(lambda: int(self._conn.execute(
            f"SELECT COUNT(*) FROM measurements{where}", params).fetchone()[0]))

    def __iter__(self) -> Iterator[MeasureRecord]:
        return iter(self.records())

    def __len__(self) -> int:
        return self.count()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> MeasurementDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MeasurementDB({self.path!r})"


def _as_key(key: MeasureKey | tuple) -> MeasureKey:
    return key if isinstance(key, MeasureKey) else MeasureKey(*key)


def _filters(**kw: Any) -> tuple[str, list[Any]]:
    items = [(k, v) for k, v in kw.items() if v is not None]
    if not items:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k, _ in items), [v for _, v in items]


def _from_row(row: sqlite3.Row) -> MeasureRecord:
    d = dict(row)
    for c in _JSON_COLS:
        d[c] = json.loads(d[c]) if d[c] else {}
    return MeasureRecord.from_dict(d)
