"""Fronts of the mixed-precision search: members, results, dominance and hypervolume.

Public API::

    res.feasible, res.message, res.members[0].plan, res.F      # a SearchResult
    res.save("front.json"); SearchResult.load("front.json")
    non_dominated(F)                                           # indices of the Pareto rows
    hypervolume(F, ref_point); hv_ratio(res.F, exhaustive_front(prob)[1])
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.search.problem import MPQProblem

__all__ = [
    "FrontMember",
    "SearchResult",
    "exhaustive_front",
    "hv_ratio",
    "hypervolume",
    "measured_member",
    "non_dominated",
    "priced_members",
]


@dataclass
class FrontMember:
    """One plan of a front.

    Attributes:
        plan: the plan (searched layers; variants resolved).
        latency: predicted cost (cost-model unit).
        drop: accuracy-drop estimate: the sensitivity proxy, or after :func:`~tvm_mpq.search.refine.refine`
            the measured ``baseline - accuracy``.
        size: weight bytes.
        violation: total relative constraint violation (0: feasible).
        accuracy: measured accuracy (after :func:`~tvm_mpq.search.refine.refine`), else None.
        proxy_drop: the sensitivity proxy (kept after refinement).
        genome: the integer genome.
    """

    plan: QuantPlan
    latency: float
    drop: float
    size: float
    violation: float = 0.0
    accuracy: float | None = None
    proxy_drop: float | None = None
    genome: list[int] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.violation <= 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "latency": self.latency, "drop": self.drop,
                "size": self.size, "violation": self.violation, "accuracy": self.accuracy,
                "proxy_drop": self.proxy_drop, "genome": list(map(int, self.genome))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontMember:
        return cls(QuantPlan.from_dict(d["plan"]), d["latency"], d["drop"], d["size"],
                   d.get("violation", 0.0), d.get("accuracy"), d.get("proxy_drop"),
                   list(d.get("genome", [])))


@dataclass
class SearchResult:
    """A Pareto front of plans, sorted by latency.

    Attributes:
        members: the front.
        feasible: whether the members meet every constraint.
        message: human-readable outcome (why infeasible, how far from the budgets).
        n_gen, n_evals: generations run in total (resumes included) and evaluations.
        objective_names: the minimised objectives (``F`` columns).
        refined: whether :func:`~tvm_mpq.search.refine.refine` replaced the proxy by measured accuracy.
    """

    members: list[FrontMember]
    feasible: bool
    message: str
    n_gen: int = 0
    n_evals: int = 0
    objective_names: tuple[str, ...] = ("latency", "drop", "size")
    refined: bool = False

    @property
    def plans(self) -> list[QuantPlan]:
        return [m.plan for m in self.members]

    @property
    def F(self) -> np.ndarray:
        """Objective matrix ``(len(members), len(objective_names))``."""
        return np.asarray([[getattr(m, k) for k in self.objective_names] for m in self.members],
                          dtype=np.float64).reshape(len(self.members), len(self.objective_names))

    def best(self, key: str = "latency", max_drop: float | None = None) -> FrontMember | None:
        """Member with the lowest ``key`` among those with ``drop <= max_drop`` (if given)."""
        ok = [m for m in self.members if max_drop is None or m.drop <= max_drop]
        return min(ok, key=lambda m: getattr(m, key)) if ok else None

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "feasible": self.feasible, "message": self.message,
                "n_gen": self.n_gen, "n_evals": self.n_evals,
                "objective_names": list(self.objective_names), "refined": self.refined,
                "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchResult:
        return cls([FrontMember.from_dict(m) for m in d["members"]], d["feasible"], d["message"],
                   d.get("n_gen", 0), d.get("n_evals", 0), tuple(d["objective_names"]),
                   d.get("refined", False))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON (plans included)."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SearchResult:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def summary(self) -> str:
        head = f"{len(self.members)} plans ({'feasible' if self.feasible else 'INFEASIBLE'})"
        lines = [head + (f": {self.message}" if self.message else "")]
        for m in self.members:
            acc = "" if m.accuracy is None else f" acc {100 * m.accuracy:.2f}%"
            lines.append(f"  latency {m.latency:.4g}  drop {m.drop:.4g}  size {m.size / 1024:.1f} KiB"
                         f"{acc}  {m.plan!r}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- dominance, hypervolume
def priced_members(problem: MPQProblem, X: np.ndarray) -> list[FrontMember]:
    """Members for the genomes ``X`` (rows, in that order) priced by ``problem``: its objective
    values and violation; the drop is the sensitivity proxy (``proxy_drop`` too)."""
    X = np.asarray(X, dtype=np.int64).reshape(-1, problem.n_var)
    vals = problem.evaluate_all(X)
    cv = problem.total_violation(vals)
    return [FrontMember(problem.decode(X[i]), float(vals["latency"][i]), float(vals["drop"][i]),
                        float(vals["size"][i]), float(cv[i]), None, float(vals["drop"][i]),
                        X[i].tolist()) for i in range(len(X))]


def measured_member(problem: MPQProblem, plan: QuantPlan, accuracy: float,
                    baseline: float) -> FrontMember:
    """``plan`` priced by ``problem`` with its measured ``accuracy``: ``drop = baseline -
    accuracy``, the sensitivity proxy kept as ``proxy_drop`` (a refined member)."""
    m = priced_members(problem, problem.encode(plan)[None])[0]
    m.accuracy, m.drop = float(accuracy), float(baseline) - float(accuracy)
    return m


def non_dominated(F: np.ndarray, *, unique: bool = True) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of ``F`` (minimisation).

    Args:
        F: objective vectors, one row per point.
        unique: keep identical rows once (the first); with False every copy of a
            non-dominated row is kept (none of them dominates another), e.g. for distinct
            plans that happen to score the same.
    """
    F = np.asarray(F, dtype=np.float64)
    if len(F) == 0:
        return np.zeros(0, dtype=np.int64)
    if unique:
        _, first = np.unique(F, axis=0, return_index=True)
        first = np.sort(first)
    else:
        first = np.arange(len(F))
    G = F[first]
    keep = np.ones(len(G), dtype=bool)
    for i in range(len(G)):
        if keep[i]:  # a point dominated by a dropped one is dominated by its dominator too
            dom = np.all(G[i] <= G, axis=1) & np.any(G[i] < G, axis=1)
            keep &= ~dom
    return first[keep]


def hypervolume(F: np.ndarray, ref_point: Sequence[float]) -> float:
    """Hypervolume (pymoo ``HV``) of ``F`` w.r.t. ``ref_point`` (minimisation)."""
    from pymoo.indicators.hv import HV

    F = np.asarray(F, dtype=np.float64)
    if len(F) == 0:
        return 0.0
    return float(HV(ref_point=np.asarray(ref_point, dtype=np.float64))(F))


def hv_ratio(F: np.ndarray, F_ref: np.ndarray, margin: float = 0.1) -> float:
    """HV(F) / HV(F_ref) after normalising both by the ideal/nadir of ``F_ref``.

    The reference point is ``1 + margin`` in every normalised objective, so the
    extreme points of the reference front still count. 1.0 means ``F`` covers
    the reference front (e.g. the exhaustive one).
    """
    F, R = np.asarray(F, float), np.asarray(F_ref, float)
    lo, hi = R.min(axis=0), R.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    ref = np.full(R.shape[1], 1.0 + margin)
    hv_ref = hypervolume((R - lo) / span, ref)
    return hypervolume((F - lo) / span, ref) / hv_ref if hv_ref > 0 else float("nan")


def exhaustive_front(problem: MPQProblem, max_plans: int = 2_000_000, chunk: int = 200_000
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Enumerate every plan of a small problem; return its feasible front ``(X, F)``.

    Raises:
        ValueError: more than ``max_plans`` plans (use the search instead).
    """
    n = problem.n_plans
    if n > max_plans:
        raise ValueError(f"{n} plans > max_plans={max_plans}: too many to enumerate")
    radices = (np.asarray(problem.xu, dtype=np.int64) + 1)
    best_X, best_F = np.zeros((0, problem.n_var), np.int64), np.zeros((0, problem.n_obj))
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk), dtype=np.int64)
        X = np.zeros((len(idx), problem.n_var), np.int64)
        for j, r in enumerate(radices):  # mixed-radix digits of the plan index
            X[:, j] = idx % r
            idx //= r
        vals = problem.evaluate_all(X)
        F = np.stack([vals[k] for k in problem.objective_names], axis=1)
        if problem.constraint_names:
            ok = np.all(problem.violations(vals) <= 0, axis=1)
            X, F = X[ok], F[ok]
        X, F = np.concatenate([best_X, X]), np.concatenate([best_F, F])
        nd = non_dominated(F)
        best_X, best_F = X[nd], F[nd]
    return best_X, best_F
