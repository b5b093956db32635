"""Real accuracy on a search front: :func:`refine` (measured accuracy replaces the
sensitivity proxy) and :func:`repair` (near misses raised into the accuracy budget).

Public API::

    res = refine(res, eval_fn=lambda plan: accuracy(plan))     # real accuracy replaces the proxy
    fixed = repair(prob, res, eval_fn, max_drop=0.01)          # near misses raised into budget
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from tvm_mpq.quant.plan import FP32, LayerConfig, QuantPlan
from tvm_mpq.search.front import FrontMember, SearchResult, measured_member, non_dominated
from tvm_mpq.search.problem import MPQProblem

__all__ = ["refine", "repair"]

log = logging.getLogger(__name__)


def refine(result: SearchResult, eval_fn: Callable[[QuantPlan], float], *,
           baseline: float | None = None, keep_dominated: bool = False,
           progress: bool = False) -> SearchResult:
    """Evaluate front members for real and replace the proxy drop by the measured one.

    Args:
        result: a front from :func:`~tvm_mpq.search.nsga.run_nsga`.
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
            B, V = problem.genes(x)
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
                out.append(measured_member(problem, plan, acc, baseline))
                bar = min(bar, float(vals["latency"][0]))
                break
    return out
