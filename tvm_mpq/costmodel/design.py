"""Experiment design: which kernels to measure for the cost model.

A designed first batch (every workload of a model at a few anchor configs, then a
stratified sample of the rest of the (workload x variant x bits) space), and active
learning: the candidates the fitted model is least sure of.

Public API::

    queries = initial_design(table, QUANT_VARIANTS, [(8, 8), (4, 4), (2, 2)], "rv64gc_zbb", 64)
    todo = select_for_measurement(candidates, cm, k=16)       # most uncertain first
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tvm_mpq.costmodel.features import QUANT_VARIANTS
from tvm_mpq.costmodel.model import CostModel
from tvm_mpq.costmodel.query import CostQuery
from tvm_mpq.measure.key import KernelKey
from tvm_mpq.schedules.workload import workload_from_layer

__all__ = ["initial_design", "select_for_measurement"]


def _default_anchors(variants: Sequence[str], bits: Sequence[tuple[int, int]]
                     ) -> list[tuple[str, int, int]]:
    """fp32, int8 at the widest pair, bitserial at the narrowest, unpack and swar in the
    middle."""
    by_prod = sorted(bits, key=lambda b: (b[0] * b[1], b))
    anchors: list[tuple[str, int, int]] = [("fp32", 8, 8)]
    if by_prod:
        if "int8" in variants:
            anchors.append(("int8", *by_prod[-1]))
        if "bitserial" in variants:
            anchors.append(("bitserial", *by_prod[0]))
        if "unpack" in variants:
            anchors.append(("unpack", *by_prod[len(by_prod) // 2]))
        if "swar" in variants:
            anchors.append(("swar", *by_prod[len(by_prod) // 2]))
    return anchors


def initial_design(layer_table: Any, variants: Sequence[str] = QUANT_VARIANTS,
                   bits: Sequence[tuple[int, int]] = ((8, 8), (4, 8), (4, 4), (2, 2)),
                   profile: str = "rv64gc_zbb", budget: int = 64, *,
                   anchors: Sequence[tuple[str, int, int]] | None = None,
                   exclude: Iterable[KernelKey] = (), seed: int = 0) -> list[CostQuery]:
    """A designed first batch of kernels to measure.

    Phase 1: every distinct workload of ``layer_table`` (a ``LayerTable``, or any
    iterable of ``LayerInfo``/workloads) at a few anchor configs (default: fp32,
    int8 at the widest bits, bitserial at the narrowest, unpack in the middle),
    anchor by anchor so a small budget still covers every workload at fp32.
    Phase 2: the rest of the budget is a stratified sample of the remaining
    (workload x variant x bits) space, each pick balancing how often its
    (variant, bits) cell and its workload were already chosen (a discrete
    Latin-hypercube-like design), ties broken at random.

    Args:
        variants: quantized variants to cover (fp32 is always in the anchors).
        bits: (w_bits, a_bits) pairs to cover.
        budget: number of queries returned (at most the size of the space).
        exclude: query keys (:meth:`CostQuery.key`) already measured.

    Returns:
        Distinct :class:`CostQuery` objects; measure them with
        ``measure_many([q.request() for q in qs], profile, backend, db=db)``.
    """
    wls = []
    seen_wl: set[str] = set()
    for row in layer_table:
        wl = workload_from_layer(row) if hasattr(row, "weight_shape") and hasattr(row, "name") else row
        if wl.key() not in seen_wl:
            seen_wl.add(wl.key())
            wls.append(wl)
    anchors = list(anchors) if anchors is not None else _default_anchors(variants, bits)
    taken = set(exclude)
    out: list[CostQuery] = []

    def take(q: CostQuery) -> None:
        if len(out) < budget and q.key() not in taken:
            taken.add(q.key())
            out.append(q)

    for v, w, a in anchors:
        for wl in wls:
            take(CostQuery(wl, v, w, a, profile))
    cells = [(v, w, a) for v in variants for (w, a) in bits]
    rest = [CostQuery(wl, v, w, a, profile) for wl in wls for (v, w, a) in cells]
    rest = [q for q in rest if q.key() not in taken]
    rng = random.Random(seed)
    rng.shuffle(rest)
    cell_n: dict[tuple, int] = {}
    wl_n: dict[str, int] = {}
    for q in out:
        cell_n[(q.variant, q.w_bits, q.a_bits)] = cell_n.get((q.variant, q.w_bits, q.a_bits), 0) + 1
        wl_n[q.workload.key()] = wl_n.get(q.workload.key(), 0) + 1
    while len(out) < budget and rest:
        best = min(range(len(rest)), key=lambda i: (
            cell_n.get((rest[i].variant, rest[i].w_bits, rest[i].a_bits), 0)
            + wl_n.get(rest[i].workload.key(), 0)))
        q = rest.pop(best)
        take(q)
        c = (q.variant, q.w_bits, q.a_bits)
        cell_n[c] = cell_n.get(c, 0) + 1
        wl_n[q.workload.key()] = wl_n.get(q.workload.key(), 0) + 1
    return out


def select_for_measurement(candidates: Sequence[CostQuery], model: CostModel, k: int, *,
                           priority: Iterable[KernelKey] = (), priority_weight: float = 2.0,
                           skip_measured: bool = True) -> list[CostQuery]:
    """The ``k`` candidates most worth measuring next.

    Score = the ensemble's log-cost standard deviation, multiplied by
    ``priority_weight`` for the queries whose key is in ``priority`` (e.g. the kernels
    the current Pareto front uses, from :meth:`MPQProblem.plan_queries`). Queries the
    model was trained on are skipped.
    """
    seen: set[KernelKey] = set(model.trained_keys) if skip_measured else set()
    uniq = []
    for q in candidates:
        if q.key() not in seen:
            seen.add(q.key())
            uniq.append(q)
    if not uniq or k <= 0:
        return []
    _, std = model.predict(uniq)
    pri = set(priority)
    score = std * np.asarray([priority_weight if q.key() in pri else 1.0 for q in uniq])
    order = np.argsort(-score, kind="stable")
    return [uniq[i] for i in order[:k]]
