"""Costs the tuner prices plans with: measured kernels first, the cost model elsewhere, plus
the passes the compiler adds around each layer's kernel; and the workdir's measurement
database."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tvm_mpq.measure.key import KernelKey
from tvm_mpq.measure.overhead import FP32_SUFFIX

__all__ = ["FAILED_COST", "MeasuredFirst", "open_db", "passes_cost"]

log = logging.getLogger(__name__)

#: search cost of a kernel whose measurement failed: finite (the search needs numbers) but
#: far above any real cost, so another variant or bit-width always wins
FAILED_COST = 1e15


class MeasuredFirst:
    """Cost function for the search: the measured cost where the DB has one, else the
    cost model's prediction; plus the layer's measured passes for the run's glue
    (``overhead``, see :func:`passes_cost`)."""

    def __init__(self, cm: Any, measured: dict[KernelKey, float], overhead: dict[str, float]):
        self.cm, self.measured, self.overhead = cm, measured, overhead

    def __call__(self, queries: Sequence[Any]) -> np.ndarray:
        pred = np.asarray(self.cm(list(queries)), dtype=np.float64)
        cost = np.asarray([self.measured.get(q.key(), p) + passes_cost(q, self.overhead)
                           for q, p in zip(queries, pred, strict=True)])
        # a kernel that failed its measurement (e.g. a wrong result) is never worth picking
        return np.where(np.isfinite(cost), cost, FAILED_COST)


def passes_cost(q: Any, overhead: dict[str, float]) -> float:
    """The passes the compiler adds around a layer's kernel, as
    :func:`~tvm_mpq.measure.overhead.measure_qdq_overhead` measured them for the run's glue:
    a quantized layer's by workload key (integer glue: the requantize epilogue; float glue:
    quantize + dequantize), an fp32 layer's under ``<key>|fp32`` (its bias pass; integer
    glue: plus what its float boundaries change around it, in its graph context)."""
    key = q.workload.key()
    return overhead.get(key + FP32_SUFFIX, 0.0) if q.variant == "fp32" else overhead.get(key, 0.0)


def open_db(workdir: str) -> Any:
    """The workdir's measurement database. One of an older kernel revision (a workdir from
    an earlier version) is kept aside as ``measurements.sqlite.rev<N>``, with the search
    checkpoints built on it (``search.rev<N>``), and the campaign starts over."""
    from tvm_mpq.measure.database import MeasurementDB, StaleDatabaseError

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
