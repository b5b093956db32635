"""The cost model's analytic prior: cost as a non-negative linear model of stage counts.

Per (variant, profile), cost ~= sum_t theta_t * count_t over the iteration counts of the
kernel's stages (:data:`~tvm_mpq.costmodel.terms.ANALYTIC_TERMS`: padded elements, packed
words, MACs, plane popcounts, ...), with non-negative weights theta (instructions per
iteration) fitted by relative-error NNLS. It extrapolates to workload sizes never measured,
which trees cannot; the XGBoost model (:mod:`tvm_mpq.costmodel.model`) learns its residual.

Public API::

    prior = AnalyticPrior().fit(queries, costs)
    prior.predict(queries)                       # cost of each query, always > 0
    AnalyticPrior.from_dict(prior.to_dict())     # what a saved cost model stores
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tvm_mpq.costmodel.features import kernel_shape_class, query_macs
from tvm_mpq.costmodel.query import CostQuery
from tvm_mpq.costmodel.terms import ANALYTIC_TERMS, analytic_terms

__all__ = ["AnalyticPrior"]

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
    (:func:`~tvm_mpq.costmodel.features.kernel_shape_class`). A group with fewer than a handful
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
        """JSON-ready weights and support (read back by :meth:`from_dict`)."""
        return {"terms": list(ANALYTIC_TERMS), "coef": self.coef, "support": self.support,
                "per_mac": self.per_mac}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnalyticPrior:
        """Inverse of :meth:`to_dict`."""
        p = cls()
        p.coef = {k: list(v) for k, v in d["coef"].items()}
        p.support = {k: list(v) for k, v in d.get("support", {}).items()}
        p.per_mac = float(d["per_mac"])
        return p
