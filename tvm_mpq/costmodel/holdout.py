"""Held-out evaluation of the cost model: grouped cross-validation.

How well does a :class:`~tvm_mpq.costmodel.model.CostModel` predict kernels it was not
trained on? Leave-one-workload-out (or grouped k-fold), or leave-one-model-out with
:func:`workload_groups`; reported as MAPE, share within +-10 % and Spearman rank correlation
(pooled and within each held-out group: what the search relies on).

Public API::

    report = evaluate_holdout(records, groups="workload")     # HoldoutReport
    report = evaluate_holdout(records, groups=workload_groups({"mbv2": t1, "r8": t2}))
    print(report.summary())
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvm_mpq.costmodel.model import CostModel, infer_target, record_dict, usable_records
from tvm_mpq.costmodel.query import CostQuery
from tvm_mpq.schedules.workload import workload_from_layer

__all__ = ["GroupSpec", "HoldoutReport", "evaluate_holdout", "metrics", "workload_groups"]


def metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAPE, share of predictions within +-10 %, and Spearman rank correlation."""
    from scipy.stats import spearmanr

    pred, true = np.asarray(pred, float), np.asarray(true, float)
    rel = np.abs(pred - true) / true
    rho = float(spearmanr(pred, true).statistic) if len(true) > 2 else float("nan")
    return {"mape": float(rel.mean()), "within_10pct": float((rel <= 0.10).mean()),
            "spearman": rho, "n": int(len(true))}


@dataclass
class HoldoutReport:
    """Result of :func:`evaluate_holdout`.

    Attributes:
        mape, within_10pct, spearman: over every held-out prediction pooled.
        spearman_within: mean Spearman inside each held-out group (how well the model
            ranks configs of one workload / model: what the search relies on).
        n, n_folds: predictions and folds.
        groups: how records were grouped.
        per_fold: metrics of each fold, with its held-out group labels.
        pred, true: pooled predictions and measurements.
        records: the held-out record (dict) of each prediction, in the order of ``pred``.
    """

    mape: float
    within_10pct: float
    spearman: float
    spearman_within: float
    n: int
    n_folds: int
    groups: str
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    pred: np.ndarray = field(default_factory=lambda: np.zeros(0))
    true: np.ndarray = field(default_factory=lambda: np.zeros(0))
    records: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: MAPE, within +-10 %, Spearman (pooled and within groups)."""
        return (f"holdout by {self.groups} ({self.n_folds} folds, {self.n} kernels): "
                f"MAPE {100 * self.mape:.1f}%, within +-10% {100 * self.within_10pct:.0f}%, "
                f"Spearman {self.spearman:.3f} (within groups {self.spearman_within:.3f})")


GroupSpec = str | Mapping[str, Hashable] | Callable[[dict[str, Any]], Hashable]


def _group_fn(groups: GroupSpec) -> Callable[[dict[str, Any]], Hashable]:
    if callable(groups):
        return groups
    if isinstance(groups, Mapping):
        mapping = groups
        return lambda r: mapping.get(r["workload_key"], "<other>")
    if groups == "workload":
        return lambda r: r["workload_key"]
    if groups in ("variant", "profile", "backend"):
        return lambda r: r[groups]
    raise ValueError(f"groups must be 'workload', 'variant', 'profile', 'backend', a mapping "
                     f"workload_key -> label (e.g. model name) or a callable; got {groups!r}")


def evaluate_holdout(records: Iterable[Any], groups: GroupSpec = "workload", *,
                     max_folds: int = 20, seed: int = 0, **model_kwargs: Any) -> HoldoutReport:
    """Grouped cross-validation of the cost model.

    ``groups="workload"`` is leave-one-workload-out (when there are more than
    ``max_folds`` workloads, grouped k-fold with ``max_folds`` folds). For a
    held-out-*model* evaluation pass a mapping ``workload_key -> model name``
    (see :func:`workload_groups`); a workload used by several models belongs to the
    first one given.

    Args:
        records: measurement records (only ok ones count).
        groups: "workload", "variant", "profile", "backend", a mapping or a callable
            ``record_dict -> label``.
        max_folds: cap on the number of folds.
        **model_kwargs: passed to :class:`CostModel` (default ``n_members=1``).
    """
    model_kwargs.setdefault("n_members", 1)
    target = model_kwargs.get("target", "auto")
    recs = [record_dict(r) for r in records]
    if target == "auto":
        target = infer_target(recs)
    model_kwargs["target"] = target
    recs = usable_records(recs, target, model_kwargs.get("schedule", "default"))
    fn = _group_fn(groups)
    labels = [fn(r) for r in recs]
    uniq = list(dict.fromkeys(labels))
    if len(uniq) < 2:
        raise ValueError(f"need at least 2 groups to hold one out, got {len(uniq)}")
    order = list(uniq)
    random.Random(seed).shuffle(order)
    n_folds = min(max_folds, len(order))
    fold_of = {g: i % n_folds for i, g in enumerate(order)}
    preds, trues, folds, within = [], [], [], []
    held_recs: list[dict[str, Any]] = []
    for f in range(n_folds):
        test = [r for r, g in zip(recs, labels, strict=True) if fold_of[g] == f]
        train = [r for r, g in zip(recs, labels, strict=True) if fold_of[g] != f]
        cm = CostModel(**model_kwargs).fit(train)
        p, _ = cm.predict([CostQuery.from_record(r) for r in test])
        t = np.asarray([float(r[target]) for r in test])
        preds.append(p)
        trues.append(t)
        held_recs.extend(test)
        held = sorted({str(g) for g, r in zip(labels, recs, strict=True) if fold_of[g] == f})
        folds.append({"held_out": held, **metrics(p, t)})
        for g in held:  # rank quality inside each held-out group
            sel = [i for i, r in enumerate(test) if str(fn(r)) == g]
            if len(sel) > 2 and np.ptp(t[sel]) > 0:
                within.append(metrics(p[sel], t[sel])["spearman"])
    P, T = np.concatenate(preds), np.concatenate(trues)
    m = metrics(P, T)
    label = groups if isinstance(groups, str) else "custom groups"
    return HoldoutReport(m["mape"], m["within_10pct"], m["spearman"],
                         float(np.nanmean(within)) if within else float("nan"), m["n"], n_folds,
                         label, folds, P, T, held_recs)


def workload_groups(tables: Mapping[str, Any]) -> dict[str, str]:
    """``{workload_key: model_name}`` from ``{model_name: LayerTable}`` (first model wins),
    for a held-out-model :func:`evaluate_holdout`."""
    out: dict[str, str] = {}
    for name, table in tables.items():
        for row in table:
            out.setdefault(workload_from_layer(row).key(), name)
    return out
