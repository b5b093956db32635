"""NSGA-II over an :class:`~tvm_mpq.search.problem.MPQProblem`, with checkpoints.

:func:`run_nsga` runs pymoo's ``NSGA2`` generation by generation (ask/tell),
seeding the first population with uniform plans (every option: fp32, w8a8,
w4a4, ...) plus random genomes. Integer genes use SBX and polynomial mutation
with rounding. Besides the population it keeps an archive of every
non-dominated genome seen (objectives plus constraint violation), so no good
plan found along the way is lost.

With ``workdir`` the state (population, archive, generation, problem
fingerprint) is written to ``workdir/nsga_state.npz`` after every generation
(atomically); a later call with the same problem resumes from the saved
generation and population. A checkpoint of another problem is moved aside
(``nsga_state.stale.npz``) and the search starts over.

When no plan meets the constraints the result still holds a front (the
trade-off between objectives and violation), with ``feasible=False`` and a
message saying how far the closest plan is from each budget; nothing raises.

Public API::

    res = run_nsga(prob, pop_size=48, n_gen=60, workdir="runs/x")
    res.feasible, res.message, res.members[0].plan, res.F
    res = refine(res, eval_fn=lambda plan: accuracy(plan))     # real accuracy replaces the proxy
    fixed = repair(prob, res, eval_fn, max_drop=0.01)          # near misses raised into budget
    hypervolume(F, ref_point); hv_ratio(res.F, exhaustive_front(prob)[1])
    res.save("front.json"); SearchResult.load("front.json")
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..plan import FP32, LayerConfig, QuantPlan
from .problem import MPQProblem

__all__ = [
    "FrontMember",
    "SearchResult",
    "exhaustive_front",
    "hv_ratio",
    "hypervolume",
    "non_dominated",
    "refine",
    "repair",
    "run_nsga",
]

log = logging.getLogger(__name__)
STATE_FILE = "nsga_state.npz"


@dataclass
class FrontMember:
    """One plan of a front.

    Attributes:
        plan: the plan (searched layers; variants resolved).
        latency: predicted cost (cost-model unit).
        drop: accuracy-drop estimate: the sensitivity proxy, or after :func:`refine`
            the measured ``baseline - accuracy``.
        size: weight bytes.
        violation: total relative constraint violation (0: feasible).
        accuracy: measured accuracy (after :func:`refine`), else None.
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
        refined: whether :func:`refine` replaced the proxy by measured accuracy.
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
def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``F`` (minimisation; duplicates kept once)."""
    F = np.asarray(F, dtype=np.float64)
    if len(F) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(F, axis=0, return_index=True)
    first = np.sort(first)
    G = F[first]
    keep = np.ones(len(G), dtype=bool)
    for i in range(len(G)):
        if keep[i]:
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


# ---------------------------------------------------------------------- the search
def _algorithm(pop_size: int, sampling: np.ndarray) -> Any:
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    return NSGA2(pop_size=pop_size, sampling=sampling.astype(float),
                 crossover=SBX(prob=0.9, eta=3.0, vtype=float, repair=RoundingRepair()),
                 mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
                 eliminate_duplicates=True)


def _initial(problem: MPQProblem, pop_size: int, seeds: np.ndarray, rng: np.random.Generator
             ) -> np.ndarray:
    seeds = np.unique(np.asarray(seeds, dtype=np.int64).reshape(-1, problem.n_var), axis=0)
    seeds = seeds[:pop_size]
    n_rand = pop_size - len(seeds)
    hi = np.asarray(problem.xu, dtype=np.int64) + 1
    rand = rng.integers(0, hi, size=(n_rand, problem.n_var))
    return np.concatenate([seeds, rand]) if n_rand > 0 else seeds


def _total_violation(problem: MPQProblem, vals: dict[str, np.ndarray]) -> np.ndarray:
    """Sum of the relative budget overshoots per genome (0: feasible)."""
    return np.clip(problem.violations(vals), 0, None).sum(axis=1)


class _Archive:
    """Non-dominated genomes under (objectives, total violation)."""

    def __init__(self, problem: MPQProblem, X: np.ndarray | None = None) -> None:
        self.problem = problem
        self.X = np.zeros((0, problem.n_var), np.int64) if X is None else X.astype(np.int64)

    def scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        vals = self.problem.evaluate_all(X)
        F = np.stack([vals[k] for k in self.problem.objective_names], axis=1)
        return F, _total_violation(self.problem, vals), vals

    def add(self, X: np.ndarray) -> None:
        X = np.unique(np.concatenate([self.X, np.rint(X).astype(np.int64)]), axis=0)
        F, cv, _ = self.scores(X)
        self.X = X[non_dominated(np.concatenate([F, cv[:, None]], axis=1))]

    def result(self, n_gen: int, n_evals: int) -> SearchResult:
        p = self.problem
        F, cv, vals = self.scores(self.X)
        feasible = bool(np.any(cv <= 0))
        sel = np.flatnonzero(cv <= 0) if feasible else np.arange(len(cv))
        sel = sel[non_dominated(F[sel])] if feasible else sel
        order = sel[np.lexsort((cv[sel], vals["latency"][sel]))]
        members = [FrontMember(p.decode(self.X[i]), float(vals["latency"][i]), float(vals["drop"][i]),
                               float(vals["size"][i]), float(cv[i]), None, float(vals["drop"][i]),
                               self.X[i].tolist()) for i in order]
        if feasible:
            msg = f"{len(members)} Pareto-optimal plans meet the constraints" if p.constraint_names \
                else f"{len(members)} Pareto-optimal plans"
        else:
            msg = _infeasible_message(p, vals, cv, len(members))
        return SearchResult(members, feasible, msg, n_gen, n_evals, p.objective_names)


def _infeasible_message(p: MPQProblem, vals: dict[str, np.ndarray], cv: np.ndarray, n: int) -> str:
    i = int(np.argmin(cv))
    parts = []
    for k in p.constraint_names:
        b, v = p.budgets[k], float(vals[k][i])
        state = "ok" if v <= b else f"over by {100 * (v - b) / max(abs(b), 1e-12):.1f}%"
        parts.append(f"{k} {v:.4g} vs budget {b:.4g} ({state})")
    best = {k: float(vals[k].min()) for k in p.constraint_names}
    lows = ", ".join(f"lowest {k} found {v:.4g}" for k, v in best.items())
    return (f"no plan meets the constraints; the closest plan has {'; '.join(parts)} ({lows}). "
            f"Returning {n} trade-off plans between objectives and violation: relax a budget "
            "or widen the bits/variants.")


def _save_state(path: str, problem: MPQProblem, gen: int, n_evals: int, pop: np.ndarray,
                archive: np.ndarray, seed: int) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, pop=pop.astype(np.int64), archive=archive.astype(np.int64), gen=gen,
             n_evals=n_evals, seed=seed, fingerprint=problem.fingerprint())
    os.replace(tmp, path)  # a kill mid-write leaves the previous generation intact


def _load_state(path: str, problem: MPQProblem) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            st = {k: z[k] for k in z.files}
    except Exception as e:  # unreadable: keep it for inspection, start over
        log.warning("unreadable NSGA checkpoint %s (%s): starting over", path, e)
        os.replace(path, path.replace(".npz", ".stale.npz"))
        return None
    if str(st["fingerprint"]) != problem.fingerprint():
        log.warning("NSGA checkpoint %s is for another problem: moved aside, starting over", path)
        os.replace(path, path.replace(".npz", ".stale.npz"))
        return None
    return st


def run_nsga(
    problem: MPQProblem,
    *,
    pop_size: int = 48,
    n_gen: int = 60,
    seed: int = 0,
    seed_genomes: np.ndarray | Sequence[QuantPlan] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = False,
    callback: Callable[[int, SearchResult], None] | None = None,
) -> SearchResult:
    """Run NSGA-II for ``n_gen`` generations in total (resumed ones included).

    Args:
        problem: the search problem.
        pop_size: population size.
        n_gen: total number of generations; a resumed run does only the missing ones.
        seed: random seed (a resumed run reseeds with ``seed + generation``).
        seed_genomes: genomes or plans for the first population (default: every uniform
            plan of the problem's options).
        workdir: checkpoint directory (``nsga_state.npz``, written every generation).
        resume: continue from the checkpoint in ``workdir`` if there is one.
        progress: tqdm progress bar over generations.
        callback: called as ``callback(generation, current_result)`` after each generation.

    Returns:
        A :class:`SearchResult`; ``feasible=False`` with a message when no plan meets
        the constraints (never raises for that).
    """
    from tqdm.auto import tqdm

    state_path = None
    st = None
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        state_path = os.path.join(os.fspath(workdir), STATE_FILE)
        if resume:
            st = _load_state(state_path, problem)
        elif os.path.exists(state_path):
            os.replace(state_path, state_path.replace(".npz", ".stale.npz"))
    if st is not None:
        gen0, n_evals = int(st["gen"]), int(st["n_evals"])
        pop0 = st["pop"]
        archive = _Archive(problem, st["archive"])
        log.info("resuming NSGA-II from generation %d (%s)", gen0, state_path)
    else:
        gen0, n_evals = 0, 0
        if seed_genomes is None:
            seeds = problem.uniform_genomes()
        elif len(seed_genomes) and isinstance(seed_genomes[0], QuantPlan):
            seeds = np.stack([problem.encode(p) for p in seed_genomes])
        else:
            seeds = np.asarray(seed_genomes)
        pop0 = _initial(problem, pop_size, seeds, np.random.default_rng(seed))
        archive = _Archive(problem)
        archive.add(pop0)
    remaining = n_gen - gen0
    if remaining <= 0:
        return archive.result(gen0, n_evals)
    algo = _algorithm(pop_size, pop0)
    # pymoo counts evaluating the initial population as an iteration; a resumed population was
    # already a generation, so that first iteration (re-evaluation, no offspring) is not counted
    resumed = st is not None
    algo.setup(problem, termination=("n_gen", remaining + int(resumed)), seed=seed + gen0,
               verbose=False)
    gen = gen0
    bar = tqdm(total=n_gen, initial=gen0, disable=not progress, desc="NSGA-II", unit="gen")
    try:
        while algo.has_next():
            infills = algo.ask()
            algo.evaluator.eval(problem, infills)
            algo.tell(infills=infills)
            n_evals += len(infills)
            if resumed:
                resumed = False
                continue
            gen += 1
            archive.add(infills.get("X"))
            if state_path is not None:
                _save_state(state_path, problem, gen, n_evals, algo.pop.get("X"), archive.X, seed)
            if callback is not None:
                callback(gen, archive.result(gen, n_evals))
            bar.update()
    finally:
        bar.close()
    return archive.result(gen, n_evals)


# ---------------------------------------------------------------------- refinement
def refine(result: SearchResult, eval_fn: Callable[[QuantPlan], float], *,
           baseline: float | None = None, keep_dominated: bool = False,
           progress: bool = False) -> SearchResult:
    """Evaluate front members for real and replace the proxy drop by the measured one.

    Args:
        result: a front from :func:`run_nsga`.
        eval_fn: ``plan -> accuracy`` (a fraction) on a held-out subset, e.g.
            ``lambda p: evaluate(fake_quant(model, p, calib), x_val, y_val)``.
        baseline: fp32 accuracy; default ``eval_fn`` of the all-fp32 plan.
        keep_dominated: keep members that the measured drop shows dominated.

    Returns:
        A new :class:`SearchResult` (``refined=True``), members' ``accuracy`` set,
        ``drop = baseline - accuracy``, ``proxy_drop`` the estimate it replaced.
        A plan that fails to evaluate is dropped with a warning, not raised.
    """
    from tqdm.auto import tqdm

    members = result.members
    if not members:
        return result
    if baseline is None:
        layers = members[0].plan.layers()
        baseline = float(eval_fn(QuantPlan((n, LayerConfig(FP32, FP32)) for n in layers)))
    out: list[FrontMember] = []
    for m in tqdm(members, disable=not progress, desc="refine", unit="plan"):
        try:
            acc = float(eval_fn(m.plan))
        except Exception as e:  # one broken plan must not lose the rest of the front
            log.warning("refine: evaluating %r failed: %s", m.plan, e)
            continue
        if not math.isfinite(acc):
            continue
        proxy = m.proxy_drop if m.proxy_drop is not None else m.drop
        out.append(FrontMember(m.plan, m.latency, baseline - acc, m.size, m.violation, acc, proxy,
                               list(m.genome)))
    if out and not keep_dominated:
        F = np.asarray([[getattr(m, k) for k in result.objective_names] for m in out])
        out = [out[i] for i in sorted(non_dominated(F))]
    msg = result.message + f" | refined: {len(out)} of {len(members)} plans evaluated, " \
        f"fp32 baseline accuracy {baseline:.4f}"
    return SearchResult(out, result.feasible, msg, result.n_gen, result.n_evals,
                        result.objective_names, refined=True)


def repair(problem: MPQProblem, result: SearchResult, eval_fn: Callable[[QuantPlan], float], *,
           max_drop: float, baseline: float, max_members: int = 8, max_steps: int = 16,
           progress: bool = False) -> list[FrontMember]:
    """Raise the bits of refined near-miss plans until their measured drop meets ``max_drop``.

    The sensitivity proxy is additive and misses interactions, so the refined front often
    has plans just over the accuracy budget that are cheaper than every plan within it. For
    the nearest such misses (at most ``max_members``, smallest measured drop first, only
    those cheaper than the best feasible member), greedily apply the single-layer upgrade
    (more bits, or fp32) with the largest proxy-drop reduction per unit of added cost (free
    upgrades first), re-measuring
    accuracy with ``eval_fn`` after each one (HAWQ-style bit raising, guided by real
    accuracy), until the drop is within ``max_drop`` or the plan stops being cheaper than
    the best feasible member (or ``max_steps`` upgrades).

    Args:
        problem: the search problem (its cost, drop and size tables guide the upgrades).
        result: a refined front (:func:`refine`).
        eval_fn: ``plan -> accuracy`` on the held-out subset used by :func:`refine`.
        max_drop: the accuracy budget (a fraction, as ``FrontMember.drop``).
        baseline: fp32 accuracy (``drop = baseline - accuracy``).

    Returns:
        The repaired plans that meet ``max_drop`` (new members; ``result`` is not changed).
    """
    from tqdm.auto import tqdm

    if not result.refined:
        raise ValueError("repair needs a refined front (measured accuracy): call refine() first")
    feasible = [m.latency for m in result.members if m.drop <= max_drop]
    bar = min(feasible) if feasible else math.inf
    # the nearest misses first: a plan far over the budget would need most layers raised
    todo = sorted((m for m in result.members if m.drop > max_drop and m.latency < bar),
                  key=lambda m: (m.drop, m.latency))[:max_members]
    L = len(problem.layer_names)
    out: list[FrontMember] = []
    seen: set[tuple[int, ...]] = set()
    for m in tqdm(todo, disable=not progress, desc="repair", unit="plan"):
        x = problem.encode(m.plan)
        for _ in range(max_steps):
            B, V = problem._genes(x)
            best, best_score = None, -math.inf
            for layer in range(L):
                oi, vi = B[0, layer], V[0, layer]
                for oj in range(oi):  # lower index = more bits (fp32 first)
                    gain = problem.drop_table[layer][oi] - problem.drop_table[layer][oj]
                    if gain <= 0:
                        continue
                    dcost = (problem.cost_table[layer][oj, problem.best_variant[layer][oj]]
                             - problem.cost_table[layer][oi, vi])
                    score = math.inf if dcost <= 0 else gain / dcost
                    if score > best_score:
                        best, best_score = (layer, oj), score
            if best is None:
                break
            x = x.copy()
            x[best[0]] = best[1]
            if problem.search_variant:
                x[L + best[0]] = problem.best_variant[best[0]][best[1]]
            vals = problem.evaluate_all(x[None])
            if vals["latency"][0] >= bar or tuple(x) in seen:
                break
            seen.add(tuple(x))
            plan = problem.decode(x)
            try:
                acc = float(eval_fn(plan))
            except Exception as e:  # noqa: BLE001 - one broken plan must not stop the others
                log.warning("repair: evaluating %r failed: %s", plan, e)
                break
            if baseline - acc <= max_drop:
                out.append(FrontMember(plan, float(vals["latency"][0]), baseline - acc,
                                       float(vals["size"][0]),
                                       float(_total_violation(problem, vals)[0]), acc,
                                       float(vals["drop"][0]), [int(v) for v in x]))
                bar = min(bar, float(vals["latency"][0]))
                break
    return out
