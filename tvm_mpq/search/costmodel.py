"""XGBoost cost model of one layer kernel, trained on the measurement database.

The model predicts the cost of a :class:`~tvm_mpq.search.features.CostQuery`
(workload, variant, bits, profile): retired instructions for the deterministic
simulator backends, seconds for wall-clock ones (one unit per model). It has two
parts:

* an *analytic prior*: per (variant, profile), cost ~= sum_t theta_t * count_t over
  the iteration counts of the kernel's stages (:data:`~tvm_mpq.search.features.ANALYTIC_TERMS`:
  padded elements, packed words, MACs, plane popcounts, ...), with non-negative
  weights theta (instructions per iteration) fitted by relative-error NNLS. It
  extrapolates to workload sizes never measured, which trees cannot;
* XGBoost on the residual ``log(cost / prior)`` (what the loop structure alone misses:
  unrolling thresholds, address arithmetic), with the prior's per-MAC cost as one
  more feature. ``prior=False`` gives the old model, trees on ``log(cost / MACs)``.
Uncertainty comes from a small bootstrap ensemble of boosters: the standard
deviation of their log predictions (a relative error: 0.1 ~ +-10 %).

Public API::

    cm = CostModel(n_members=5).fit(db.records("rv64gc_zbb", "spike", status="ok"))
    mean, log_std = cm.predict([CostQuery(...), ...])
    cm.save("cost.json"); cm = CostModel.load("cost.json")   # refuses a mismatched schema
    report = evaluate_holdout(records, groups="workload")     # MAPE, within +-10 %, Spearman
    queries = initial_design(table, QUANT_VARIANTS, [(8, 8), (4, 4), (2, 2)], "rv64gc_zbb", 64)
    todo = select_for_measurement(candidates, cm, k=16)       # most uncertain first

Saved models hold the feature schema (names + version), the xgboost and tvm-mpq
versions and the boosters in one JSON file. :meth:`CostModel.load` raises
:class:`CostModelMismatchError` rather than silently predicting garbage with a
model from another schema or xgboost/tvm-mpq version.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import (
    ANALYTIC_TERMS,
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    QUANT_VARIANTS,
    CostQuery,
    analytic_terms,
    featurize,
    kernel_shape_class,
    layer_workload,
    query_macs,
)

__all__ = [
    "CostModel",
    "CostModelMismatchError",
    "HoldoutReport",
    "evaluate_holdout",
    "initial_design",
    "metrics",
    "select_for_measurement",
    "workload_groups",
]

FORMAT = "tvm_mpq.search.costmodel"
FORMAT_VERSION = 2

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "reg:squarederror",
    "eta": 0.08,
    "max_depth": 6,
    "min_child_weight": 1.0,
    # the boosters learn log(cost / prior): start them at 0 (the prior itself), not at
    # xgboost's default base score 0.5 (a 65% offset the first rounds would have to undo)
    "base_score": 0.0,
    "subsample": 1.0,  # every kernel in every tree (bootstrap members give the spread) ...
    "colsample_bytree": 0.5,  # ... but half the features: less reliance on any single one
    "lambda": 1.0,
    "nthread": 1,  # machines are shared; the data sets are small
}
DEFAULT_ROUNDS = 300


class CostModelMismatchError(ValueError):
    """A saved cost model does not match this feature schema or library version."""


def _versions() -> tuple[str, str]:
    import xgboost

    from .. import __version__

    return xgboost.__version__, __version__


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def _rec_dict(rec: Any) -> dict[str, Any]:
    return rec if isinstance(rec, dict) else rec.to_dict()


def _usable(records: Iterable[Any], target: str, schedule: str | None) -> list[dict[str, Any]]:
    """Records with status ok, the target number, and the schedule asked for."""
    out = []
    for r in map(_rec_dict, records):
        if r.get("status") != "ok":
            continue
        if schedule is not None and r.get("schedule", "default") != schedule:
            continue
        v = r.get(target)
        if v is None or not (float(v) > 0):
            continue
        out.append(r)
    return out


def _pick_target(records: Sequence[dict[str, Any]]) -> str:
    has_i = [r.get("instructions") is not None for r in records if r.get("status") == "ok"]
    if not has_i:
        raise ValueError("no usable record (status 'ok' with instructions or seconds)")
    if all(has_i):
        return "instructions"
    if not any(has_i):
        return "seconds"
    raise ValueError("records mix instruction counts and wall-clock seconds; pass "
                     "target='instructions' or target='seconds' (one unit per model)")


#: Extra booster input after FEATURE_NAMES when the analytic prior is on.
PRIOR_FEATURE = "log_prior_per_mac"
_MIN_GROUP = 4  # fewest kernels to fit a (variant, profile) prior on its own


def _nnls_relative(T: np.ndarray, y: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    """Non-negative theta minimising sum(((T @ theta - r) / y)^2): the error relative to the
    cost ``y`` of fitting ``r`` (default ``y`` itself; a smaller ``r`` is the cost left for
    extra stages once a base kernel's part is known)."""
    from scipy.optimize import nnls

    scale = T.max(axis=0)
    used = scale > 0
    theta = np.zeros(T.shape[1])
    if not used.any():
        return theta
    A = T[:, used] / scale[used] / y[:, None]
    target = np.ones(len(y)) if r is None else r / y
    sol, _ = nnls(A, target, maxiter=50 * A.shape[1])
    theta[used] = sol / scale[used]
    return theta


#: Variants whose schedules run other loop nests (other instructions per iteration) for
#: kernels with a spatial window and 1x1 ones: their prior is fitted per shape class
#: (bitserial: other tiles, gather vs blocked packing). The other variants' terms (MACs,
#: rolled-loop trips, unrolled regimes, swar tiles) describe both shapes, and one fit over
#: both transfers better (measured leave-one-workload-out, and on a held-out model's 3x3
#: convolutions when only depthwise ones were trained on).
_SHAPE_SPLIT = frozenset({"bitserial"})

#: Variants whose kernel is another's plus extra stages: ``variant -> (base, extra terms)``.
#: "unpack" is the int8 convolution after a weight-unpacking stage (identical code at 8 bits).
_DERIVED_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "unpack": ("int8", ("unpack", "unpack_unrolled")),
}


class AnalyticPrior:
    """Per-(variant, profile[, kernel shape class]) linear model of cost in the kernel's stage
    iteration counts.

    Weights (cost per iteration of each :data:`ANALYTIC_TERMS` stage) are non-negative
    and fitted on relative error; for bitserial (:data:`_SHAPE_SPLIT`) separately
    for kernels with a spatial window and 1x1 ones
    (:func:`~tvm_mpq.search.features.kernel_shape_class`). A group with fewer than a handful
    of kernels falls back to (variant, profile), then to the variant over all profiles, then
    to cost per MAC; so does a query with a stage its group never saw (a 3x3 convolution
    with rolled channel loops when only depthwise ones were measured: the group's weight for
    that stage would be 0). A variant that is another plus extra stages (:data:`_DERIVED_VARIANTS`:
    unpack = int8 + weight unpacking) reuses the base variant's weights and fits only its
    extra stages'.
    """

    def __init__(self) -> None:
        self.coef: dict[str, list[float]] = {}
        #: per group, the terms that were non-zero in its training kernels
        self.support: dict[str, list[str]] = {}
        self.per_mac: float = 1.0

    @staticmethod
    def _key(variant: str, profile: str | None, shape: str | None = None) -> str:
        return f"{variant}|{profile or '*'}" + (f"|{shape}" if shape else "")

    @staticmethod
    def _keys(q: CostQuery) -> tuple[str, ...]:
        """Groups ``q`` belongs to, most specific first."""
        k = AnalyticPrior._key
        general = (k(q.variant, q.profile), k(q.variant, None))
        if q.variant not in _SHAPE_SPLIT:
            return general
        return (k(q.variant, q.profile, kernel_shape_class(q.workload)), *general)

    def fit(self, queries: Sequence[CostQuery], y: np.ndarray) -> AnalyticPrior:
        """Fit on queries and their costs ``y`` (linear units)."""
        T = analytic_terms(queries)
        macs = query_macs(queries)
        self.per_mac = float(np.exp(np.mean(np.log(y / macs))))
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            for key in self._keys(q):
                groups.setdefault(key, []).append(i)
        self.coef = {k: _nnls_relative(T[idx], y[idx]).tolist()
                     for k, idx in groups.items() if len(idx) >= _MIN_GROUP}
        for variant, (base, own) in _DERIVED_VARIANTS.items():
            cols = [ANALYTIC_TERMS.index(t) for t in own]
            for k, idx in groups.items():
                base_key = k.replace(variant, base, 1)
                if not k.startswith(f"{variant}|") or base_key not in self.coef \
                        or len(idx) < _MIN_GROUP:
                    continue
                # the base kernel's weights for the shared stages, NNLS on the rest only: the
                # extra stage's cost is then not confused with the loop nest it shares
                theta = np.asarray(self.coef[base_key])
                theta[cols] = 0.0
                rest = y[idx] - T[idx] @ theta
                extra = np.zeros(len(ANALYTIC_TERMS))
                extra[cols] = _nnls_relative(T[np.ix_(idx, cols)], y[idx], rest)
                self.coef[k] = (theta + extra).tolist()
        self.support = {k: [t for t, used in zip(ANALYTIC_TERMS, T[groups[k]].max(axis=0) > 0,
                                                 strict=True) if used]
                        for k in self.coef}
        return self

    def _theta(self, q: CostQuery, nonzero: set[str]) -> list[float] | None:
        """Weights of the most specific group that saw every stage ``q`` has (else of the
        most general group fitted)."""
        fitted = [k for k in self._keys(q) if k in self.coef]
        for k in fitted:
            if k not in self.support or nonzero <= set(self.support[k]):
                return self.coef[k]
        return self.coef[fitted[-1]] if fitted else None

    def predict(self, queries: Sequence[CostQuery]) -> np.ndarray:
        """Prior cost of each query (always > 0)."""
        T = analytic_terms(queries)
        macs = query_macs(queries)
        out = np.empty(len(queries))
        for i, q in enumerate(queries):
            nonzero = {t for t, v in zip(ANALYTIC_TERMS, T[i], strict=True) if v > 0}
            theta = self._theta(q, nonzero)
            p = float(T[i] @ np.asarray(theta)) if theta is not None else 0.0
            out[i] = p if p > 0 else self.per_mac * macs[i]
        return np.maximum(out, 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return {"terms": list(ANALYTIC_TERMS), "coef": self.coef, "support": self.support,
                "per_mac": self.per_mac}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnalyticPrior:
        p = cls()
        p.coef = {k: list(v) for k, v in d["coef"].items()}
        p.support = {k: list(v) for k, v in d.get("support", {}).items()}
        p.per_mac = float(d["per_mac"])
        return p


class CostModel:
    """Bootstrap ensemble of XGBoost regressors on ``log(cost / MACs)``.

    Args:
        n_members: boosters in the ensemble (member 0 sees all data, the others a
            bootstrap resample); 1 disables the uncertainty estimate (std 0).
        target: "instructions", "seconds" or "auto" (whichever every record has).
        schedule: only records of this schedule tag ("default", "tuned64", ...);
            None takes all (then duplicate keys are averaged in log space).
        num_rounds: boosting rounds per member.
        params: xgboost parameters overriding :data:`DEFAULT_PARAMS`.
        seed: seed of the bootstrap and of xgboost.
        prior: fit the analytic prior and let the boosters learn its residual (default);
            False: boosters on ``log(cost / MACs)`` alone.
    """

    def __init__(self, n_members: int = 5, target: str = "auto", schedule: str | None = "default",
                 num_rounds: int = DEFAULT_ROUNDS, params: Mapping[str, Any] | None = None,
                 seed: int = 0, *, prior: bool = True) -> None:
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        if target not in ("auto", "instructions", "seconds"):
            raise ValueError(f"target must be 'auto', 'instructions' or 'seconds', got {target!r}")
        self.n_members, self.target, self.schedule = n_members, target, schedule
        self.num_rounds, self.seed = num_rounds, seed
        self.params: dict[str, Any] = {**DEFAULT_PARAMS, **(params or {})}
        self.use_prior = prior
        self.prior: AnalyticPrior | None = None
        self.boosters: list[Any] = []
        self.trained_keys: set[tuple] = set()
        self.profiles: list[str] = []
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ fit / predict
    @property
    def is_fitted(self) -> bool:
        return bool(self.boosters)

    def fit(self, records: Iterable[Any]) -> CostModel:
        """Train on measurement records (``MeasureRecord`` objects or their dicts).

        Only ``status == "ok"`` records carrying the target number are used.

        Raises:
            ValueError: no usable record, or mixed units with ``target="auto"``.
        """
        import xgboost as xgb

        recs = [_rec_dict(r) for r in records]
        if self.target == "auto":
            self.target = _pick_target(recs)
        recs = _usable(recs, self.target, self.schedule)
        if not recs:
            raise ValueError(f"no usable record: need status 'ok' with {self.target!r}"
                             + (f" and schedule {self.schedule!r}" if self.schedule else ""))
        # duplicate keys (several schedules, or backends measuring the same thing): average in log
        by_key: dict[tuple, list[float]] = {}
        queries: dict[tuple, CostQuery] = {}
        for r in recs:
            q = CostQuery.from_record(r)
            by_key.setdefault(q.key(), []).append(math.log(float(r[self.target])))
            queries[q.key()] = q
        keys = list(by_key)
        qs = [queries[k] for k in keys]
        log_cost = np.asarray([np.mean(by_key[k]) for k in keys])
        self.prior = AnalyticPrior().fit(qs, np.exp(log_cost)) if self.use_prior else None
        X, base = self._inputs(qs)
        y = log_cost - base
        rng = np.random.default_rng(self.seed)
        self.boosters = []
        for m in range(self.n_members):
            idx = np.arange(len(y)) if m == 0 else rng.integers(0, len(y), len(y))
            d = xgb.DMatrix(X[idx], label=y[idx], feature_names=self._feature_names())
            params = {**self.params, "seed": self.seed + m}
            self.boosters.append(xgb.train(params, d, num_boost_round=self.num_rounds))
        self.trained_keys = set(keys)
        self.profiles = sorted({q.profile for q in qs})
        self.meta = {"n_train": len(keys)}
        return self

    def _feature_names(self) -> list[str]:
        return [*FEATURE_NAMES, PRIOR_FEATURE] if self.prior is not None else list(FEATURE_NAMES)

    def _inputs(self, queries: Sequence[CostQuery]) -> tuple[np.ndarray, np.ndarray]:
        """Booster inputs and the log baseline the boosters' output is added to."""
        X = featurize(queries)
        log_macs = np.log(query_macs(queries))
        if self.prior is None:
            return X, log_macs
        log_prior = np.log(self.prior.predict(queries))
        return np.column_stack([X, (log_prior - log_macs) / math.log(2)]), log_prior

    def predict_log(self, queries: Sequence[CostQuery]) -> np.ndarray:
        """Log-cost predictions of every member: shape ``(n_members, len(queries))``."""
        import xgboost as xgb

        if not self.is_fitted:
            raise RuntimeError("CostModel is not fitted: call fit(records) or CostModel.load(path)")
        if not queries:
            return np.zeros((len(self.boosters), 0))
        X, base = self._inputs(queries)
        d = xgb.DMatrix(X, feature_names=self._feature_names())
        return np.stack([b.predict(d) + base for b in self.boosters])

    def predict(self, queries: Sequence[CostQuery]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted cost and its uncertainty.

        Returns:
            ``(mean, log_std)``: ``mean`` in the model's unit (:attr:`target`), the
            geometric mean of the members; ``log_std`` the members' standard deviation
            of log cost (relative uncertainty; 0 with one member).
        """
        logs = self.predict_log(queries)
        return np.exp(logs.mean(axis=0)), logs.std(axis=0)

    def __call__(self, queries: Sequence[CostQuery]) -> np.ndarray:
        """Mean predicted cost (so a model can be passed wherever a cost function is)."""
        return self.predict(queries)[0]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one JSON file: schema, versions, parameters and every booster."""
        if not self.is_fitted:
            raise RuntimeError("cannot save an unfitted CostModel")
        xgb_v, mpq_v = _versions()
        doc = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "feature_names": list(FEATURE_NAMES),
            "analytic_terms": list(ANALYTIC_TERMS),
            "prior": self.prior.to_dict() if self.prior is not None else None,
            "xgboost_version": xgb_v, "tvm_mpq_version": mpq_v,
            "target": self.target, "schedule": self.schedule, "n_members": self.n_members,
            "num_rounds": self.num_rounds, "params": self.params, "seed": self.seed,
            "profiles": self.profiles, "meta": self.meta,
            "trained_keys": [list(k) for k in sorted(self.trained_keys)],
            "boosters": [bytes(b.save_raw("json")).decode() for b in self.boosters],
        }
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)  # never leave a half-written model behind

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, allow_version_mismatch: bool = False) -> CostModel:
        """Read a model written by :meth:`save`.

        Args:
            allow_version_mismatch: accept a model saved by another xgboost (major.minor)
                or tvm-mpq version. A different feature schema is never accepted.

        Raises:
            CostModelMismatchError: not a cost model file, other feature schema, or other
                versions (the message says what differs and that the fix is to refit).
        """
        import xgboost as xgb

        with open(path) as f:
            doc = json.load(f)
        where = os.fspath(path)
        if doc.get("format") != FORMAT:
            raise CostModelMismatchError(f"{where}: not a tvm-mpq cost model file")
        if doc.get("format_version") != FORMAT_VERSION:
            raise CostModelMismatchError(
                f"{where}: file format version {doc.get('format_version')} != {FORMAT_VERSION}")
        problems = []
        if doc.get("feature_schema_version") != FEATURE_SCHEMA_VERSION:
            problems.append(f"feature schema version {doc.get('feature_schema_version')} "
                            f"!= current {FEATURE_SCHEMA_VERSION}")
        if doc.get("feature_names") != list(FEATURE_NAMES):
            saved, cur = doc.get("feature_names") or [], list(FEATURE_NAMES)
            diff = sorted(set(saved) ^ set(cur)) or ["(same names, other order)"]
            problems.append(f"feature names differ: {', '.join(diff[:8])}")
        if doc.get("prior") is not None and doc.get("analytic_terms") != list(ANALYTIC_TERMS):
            problems.append("analytic prior terms differ")
        if problems:
            raise CostModelMismatchError(
                f"{where}: cost model was trained on another feature schema ({'; '.join(problems)})"
                "; refit it from the measurement database (CostModel().fit(db.records(...)))")
        xgb_v, mpq_v = _versions()
        if not allow_version_mismatch:
            if _major_minor(doc.get("xgboost_version", "")) != _major_minor(xgb_v):
                raise CostModelMismatchError(
                    f"{where}: saved with xgboost {doc.get('xgboost_version')}, running {xgb_v}; "
                    "refit from the measurement database or pass allow_version_mismatch=True")
            if doc.get("tvm_mpq_version") != mpq_v:
                raise CostModelMismatchError(
                    f"{where}: saved with tvm-mpq {doc.get('tvm_mpq_version')}, running {mpq_v}; "
                    "refit from the measurement database or pass allow_version_mismatch=True")
        m = cls(doc["n_members"], doc["target"], doc.get("schedule"), doc["num_rounds"],
                doc["params"], doc["seed"], prior=doc.get("prior") is not None)
        m.prior = AnalyticPrior.from_dict(doc["prior"]) if doc.get("prior") is not None else None
        for s in doc["boosters"]:
            b = xgb.Booster()
            b.load_model(bytearray(s.encode()))
            m.boosters.append(b)
        m.trained_keys = {tuple(k) for k in doc.get("trained_keys", [])}
        m.profiles, m.meta = doc.get("profiles", []), doc.get("meta", {})
        return m

    def __repr__(self) -> str:
        state = f"{self.meta.get('n_train', 0)} kernels" if self.is_fitted else "unfitted"
        return f"CostModel({self.target}, {self.n_members} members, {state})"


# ---------------------------------------------------------------------- evaluation
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
    recs = [_rec_dict(r) for r in records]
    if target == "auto":
        target = _pick_target(recs)
    model_kwargs["target"] = target
    recs = _usable(recs, target, model_kwargs.get("schedule", "default"))
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
            out.setdefault(layer_workload(row).key(), name)
    return out


# ---------------------------------------------------------------------- active learning
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
                   exclude: Iterable[tuple] = (), seed: int = 0) -> list[CostQuery]:
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
        wl = layer_workload(row) if hasattr(row, "weight_shape") and hasattr(row, "name") else row
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
                           priority: Iterable[tuple] = (), priority_weight: float = 2.0,
                           skip_measured: bool = True) -> list[CostQuery]:
    """The ``k`` candidates most worth measuring next.

    Score = the ensemble's log-cost standard deviation, multiplied by
    ``priority_weight`` for the queries whose key is in ``priority`` (e.g. the kernels
    the current Pareto front uses, from :meth:`MPQProblem.plan_queries`). Queries the
    model was trained on are skipped.
    """
    seen: set[tuple] = set(model.trained_keys) if skip_measured else set()
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
