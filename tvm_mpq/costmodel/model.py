"""XGBoost cost model of one layer kernel, trained on the measurement database.

The model predicts the cost of a :class:`~tvm_mpq.costmodel.query.CostQuery`
(workload, variant, bits, profile): retired instructions for the deterministic
simulator backends, seconds for wall-clock ones (one unit per model). It has two
parts:

* an *analytic prior* (:class:`~tvm_mpq.costmodel.analytic.AnalyticPrior`): per
  (variant, profile), a non-negative linear model of cost in the iteration counts of the
  kernel's stages. It extrapolates to workload sizes never measured, which trees cannot;
* XGBoost on the residual ``log(cost / prior)`` (what the loop structure alone misses:
  unrolling thresholds, address arithmetic), with the prior's per-MAC cost as one
  more feature. ``prior=False`` gives the old model, trees on ``log(cost / MACs)``.
Uncertainty comes from a small bootstrap ensemble of boosters: the standard
deviation of their log predictions (a relative error: 0.1 ~ +-10 %).

Public API::

    cm = CostModel(n_members=5).fit(db.records("rv64gc_zbb", "spike", status="ok"))
    mean, log_std = cm.predict([CostQuery(...), ...])
    cm.save("cost.json"); cm = CostModel.load("cost.json")   # refuses a mismatched schema

Held-out evaluation is :mod:`tvm_mpq.costmodel.holdout`, the choice of kernels to measure
:mod:`tvm_mpq.costmodel.design`.

Saved models hold the feature schema (names + version), the xgboost and tvm-mpq
versions and the boosters in one JSON file. :meth:`CostModel.load` raises
:class:`CostModelMismatchError` rather than silently predicting garbage with a
model from another schema or xgboost/tvm-mpq version.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tvm_mpq.costmodel.analytic import AnalyticPrior
from tvm_mpq.costmodel.features import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, featurize, query_macs
from tvm_mpq.costmodel.query import CostQuery
from tvm_mpq.costmodel.terms import ANALYTIC_TERMS
from tvm_mpq.measure.key import KernelKey

__all__ = [
    "CostModel",
    "CostModelMismatchError",
    "infer_target",
    "record_dict",
    "usable_records",
]

#: File tag of a saved model: the module's old path, kept so files saved before the package
#: moved (a tuning workdir's ``costmodel.json``) still load.
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
#: Extra booster input after FEATURE_NAMES when the analytic prior is on.
PRIOR_FEATURE = "log_prior_per_mac"


class CostModelMismatchError(ValueError):
    """A saved cost model does not match this feature schema or library version."""


def _versions() -> tuple[str, str]:
    import xgboost

    from tvm_mpq import __version__

    return xgboost.__version__, __version__


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def record_dict(rec: Any) -> dict[str, Any]:
    """A measurement record as a dict (a :class:`~tvm_mpq.measure.database.MeasureRecord` or
    its ``to_dict()``)."""
    return rec if isinstance(rec, dict) else rec.to_dict()


def usable_records(records: Iterable[Any], target: str,
                   schedule: str | None) -> list[dict[str, Any]]:
    """The records a model of ``target`` ("instructions" or "seconds") trains on: status ok,
    a positive ``target`` number, and the ``schedule`` tag asked for (None: any)."""
    out = []
    for r in map(record_dict, records):
        if r.get("status") != "ok":
            continue
        if schedule is not None and r.get("schedule", "default") != schedule:
            continue
        v = r.get(target)
        if v is None or not (float(v) > 0):
            continue
        out.append(r)
    return out


def infer_target(records: Sequence[dict[str, Any]]) -> str:
    """The unit the ok ``records`` share: "instructions" or "seconds".

    Raises:
        ValueError: no ok record, or records of both units.
    """
    has_i = [r.get("instructions") is not None for r in records if r.get("status") == "ok"]
    if not has_i:
        raise ValueError("no usable record (status 'ok' with instructions or seconds)")
    if all(has_i):
        return "instructions"
    if not any(has_i):
        return "seconds"
    raise ValueError("records mix instruction counts and wall-clock seconds; pass "
                     "target='instructions' or target='seconds' (one unit per model)")


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
        self.trained_keys: set[KernelKey] = set()
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

        recs = [record_dict(r) for r in records]
        if self.target == "auto":
            self.target = infer_target(recs)
        recs = usable_records(recs, self.target, self.schedule)
        if not recs:
            raise ValueError(f"no usable record: need status 'ok' with {self.target!r}"
                             + (f" and schedule {self.schedule!r}" if self.schedule else ""))
        # duplicate keys (several schedules, or backends measuring the same thing): average in log
        by_key: dict[KernelKey, list[float]] = {}
        queries: dict[KernelKey, CostQuery] = {}
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
        m.trained_keys = {KernelKey(*k) for k in doc.get("trained_keys", [])}
        m.profiles, m.meta = doc.get("profiles", []), doc.get("meta", {})
        return m

    def __repr__(self) -> str:
        state = f"{self.meta.get('n_train', 0)} kernels" if self.is_fitted else "unfitted"
        return f"CostModel({self.target}, {self.n_members} members, {state})"
