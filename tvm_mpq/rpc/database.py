"""Embedded SQLite database of kernel measurements.

One row per (profile, backend, workload key, variant, w_bits, a_bits, schedule tag). The
database runs in WAL mode and every record is committed on its own, so a process killed in
the middle of a campaign loses only the measurement in flight. A failed measurement is
stored with its status and message and never carries a number (enforced by a CHECK
constraint as well as by :class:`MeasureRecord`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Statuses a record can have; only "ok" carries numbers.
STATUSES = ("ok", "build_error", "run_error", "wrong_result", "timeout", "tune_error")
SCHEMA_VERSION = 1
_NUMBERS = ("instructions", "cycles", "seconds", "seconds_std")


def schedule_tag(tune_trials: int) -> str:
    """``"default"`` for the untuned lowering, ``"tuned<trials>"`` for a MetaSchedule schedule."""
    if tune_trials < 0:
        raise ValueError(f"tune_trials must be >= 0, got {tune_trials}")
    return "default" if tune_trials == 0 else f"tuned{int(tune_trials)}"


@dataclass(frozen=True)
class MeasureKey:
    """Identity of a measurement (the database's primary key)."""

    profile: str
    backend: str
    workload_key: str
    variant: str
    w_bits: int
    a_bits: int
    schedule: str = "default"


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
        return MeasureKey(self.profile, self.backend, self.workload_key, self.variant,
                          self.w_bits, self.a_bits, self.schedule)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``json.dumps`` works on it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureRecord:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (forward compatibility)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed record survives even an OS crash, not only a killed process
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                               (str(SCHEMA_VERSION),))
            row = self._conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        if int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema version {row[0]}, this code reads "
                               f"{SCHEMA_VERSION}; use a new database file")
        self._check_kernels_revision()

    def _check_kernels_revision(self) -> None:
        """Refuse measurements of other kernel definitions (they would be silently reused)."""
        from ..schedules import KERNELS_REVISION

        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name='kernels_revision'").fetchone()
            n = self._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
            if row is None:
                # databases written before the revision was recorded hold revision-1 kernels
                stored = 1 if n else KERNELS_REVISION
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('kernels_revision', ?)",
                                   (str(stored),))
            else:
                stored = int(row[0])
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

    # ---- reading ----

    def get(self, key: MeasureKey | tuple) -> MeasureRecord | None:
        """The record stored under ``key`` (a :class:`MeasureKey` or a tuple in its field order)."""
        k = _as_key(key)
        where = " AND ".join(f"{c} = ?" for c in _KEY_COLS)
        with self._lock:
            row = self._conn.execute(f"SELECT * FROM measurements WHERE {where}",
                                     list(asdict(k).values())).fetchone()
        return _from_row(row) if row is not None else None

    def records(self, profile: str | None = None, backend: str | None = None, *,
                status: str | None = None, variant: str | None = None,
                schedule: str | None = None) -> list[MeasureRecord]:
        """All records matching the given filters (None: any), e.g. training data for a cost
        model: ``db.records("rv64gc_zbb", "spike", status="ok")``."""
        where, params = _filters(profile=profile, backend=backend, status=status,
                                 variant=variant, schedule=schedule)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM measurements{where} ORDER BY {', '.join(_KEY_COLS)}", params
            ).fetchall()
        return [_from_row(r) for r in rows]

    def count(self, profile: str | None = None, backend: str | None = None, *,
              status: str | None = None) -> int:
        """Number of records matching the filters."""
        where, params = _filters(profile=profile, backend=backend, status=status)
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM measurements{where}",
                                          params).fetchone()[0])

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
