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
Fronts, dominance and hypervolume: :mod:`tvm_mpq.search.front`; refinement and
repair with real accuracy: :mod:`tvm_mpq.search.refine`.

Public API::

    res = run_nsga(prob, pop_size=48, n_gen=60, workdir="runs/x")
    res.feasible, res.message, res.members[0].plan, res.F
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.search.front import SearchResult, non_dominated, priced_members
from tvm_mpq.search.problem import MPQProblem

__all__ = ["STATE_FILE", "run_nsga"]

log = logging.getLogger(__name__)
STATE_FILE = "nsga_state.npz"


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


class _Archive:
    """Non-dominated genomes under (objectives, total violation)."""

    def __init__(self, problem: MPQProblem, X: np.ndarray | None = None) -> None:
        self.problem = problem
        self.X = np.zeros((0, problem.n_var), np.int64) if X is None else X.astype(np.int64)

    def scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        vals = self.problem.evaluate_all(X)
        F = np.stack([vals[k] for k in self.problem.objective_names], axis=1)
        return F, self.problem.total_violation(vals), vals

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
        members = priced_members(p, self.X[order])
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
