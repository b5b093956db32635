"""search.refine.repair: near-miss plans raised into the accuracy budget by measured steps."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from tvm_mpq.search.front import FrontMember, SearchResult
from tvm_mpq.search.refine import repair

sys.path.insert(0, os.path.dirname(__file__))
from test_search import _problem  # noqa: E402

BASELINE = 0.9


def _oracle(prob, scale: float = 1.5, pair: float = 0.004):
    """A "real" accuracy the additive proxy underestimates: every layer's drop is larger than
    the proxy says, plus a penalty for each pair of neighbouring low-bit layers."""
    calls: list = []

    def eval_fn(plan) -> float:
        calls.append(plan)
        x = prob.encode(plan)
        drop = scale * float(prob.evaluate_all(x[None])["drop"][0]) / 100
        low = [prob.options[int(b)][0] <= 4 for b in x[: len(prob.layer_names)]]
        drop += pair * sum(a and b for a, b in zip(low, low[1:], strict=False))
        return BASELINE - drop

    return eval_fn, calls


def _refined(prob, eval_fn, configs):
    members = []
    for c in configs:
        x = prob.uniform_genomes([c])[0]
        plan = prob.decode(x)
        v = prob.evaluate_all(x[None])
        acc = eval_fn(plan)
        members.append(FrontMember(plan, float(v["latency"][0]), BASELINE - acc,
                                   float(v["size"][0]), 0.0, acc, float(v["drop"][0]),
                                   [int(g) for g in x]))
    return SearchResult(members, True, "", refined=True)


def test_repair_meets_budget_cheaper_than_every_feasible_plan():
    prob = _problem()
    eval_fn, calls = _oracle(prob)
    front = _refined(prob, eval_fn, [(8, 8), (4, 4), (2, 2)])
    d8, d4 = front.members[0].drop, front.members[1].drop
    max_drop = (d8 + d4) / 2  # only the w8a8 plan is within it
    feasible = [m for m in front.members if m.drop <= max_drop]
    assert len(feasible) == 1
    n0 = len(calls)
    fixed = repair(prob, front, eval_fn, max_drop=max_drop, baseline=BASELINE, max_steps=12)
    assert fixed, "no near-miss plan was repaired"
    for m in fixed:
        assert m.drop <= max_drop + 1e-12
        assert m.latency < feasible[0].latency  # the point: cheaper than the best feasible plan
        assert m.accuracy == pytest.approx(eval_fn(m.plan))  # the drop is the measured one
        np.testing.assert_array_equal(prob.encode(m.plan), m.genome)
    # later repairs must beat earlier ones, so latencies strictly fall
    lats = [m.latency for m in fixed]
    assert lats == sorted(lats, reverse=True)
    assert len(calls) - n0 <= 2 * 12 + len(fixed)  # one evaluation per step, bounded


def test_repair_needs_refined_front_and_skips_when_nothing_to_gain():
    prob = _problem()
    eval_fn, calls = _oracle(prob)
    front = _refined(prob, eval_fn, [(8, 8), (4, 4)])
    with pytest.raises(ValueError, match="refine"):
        repair(prob, SearchResult(front.members, True, ""), eval_fn, max_drop=0.01,
               baseline=BASELINE)
    # everything already within the budget: nothing to repair, nothing evaluated
    n0 = len(calls)
    assert repair(prob, front, eval_fn, max_drop=1.0, baseline=BASELINE) == []
    assert len(calls) == n0


def test_lowering_bound_adds_the_paired_standard_error():
    """Free Bits' "costly bits down" keeps a step by drop + z SE on the evaluation images."""
    from types import SimpleNamespace

    from tvm_mpq.quant.plan import QuantPlan
    from tvm_mpq.tuner.stages.repair import LOWER_CONFIDENCE, drop_bound
    from tvm_mpq.zoo.fashion_mnist import paired_drop_se

    rng = np.random.default_rng(0)
    ref = rng.random(1000) < 0.9
    worse = ref & (rng.random(1000) < 0.03)  # the plan loses ~3% of fp32's right answers
    out = ref & ~worse
    plan = QuantPlan({})
    calls = []
    state = SimpleNamespace(
        eval_fn=None, model=torch.nn.Sequential(torch.nn.Linear(2, 2)), n_eval=1000,
        fp32_accuracy=float(ref.mean()),
        forward=lambda p: calls.append(p) or "fwd", outcomes=lambda f, n: out,
        drop_se=lambda o: paired_drop_se(ref, o), plan_accuracy=lambda p: float(out.mean()))
    drop = ref.mean() - out.mean()
    se = paired_drop_se(ref, out)
    assert se > 0.004  # a 3-point drop on 1000 images is about half a point uncertain
    assert drop_bound(state, 0.0)(plan) == pytest.approx(drop)
    bound = drop_bound(state, LOWER_CONFIDENCE)
    assert bound(plan) == pytest.approx(drop + LOWER_CONFIDENCE * se)
    # every evaluated plan's accuracy is kept, so the plan kept is not evaluated again
    assert list(bound.accuracy.values()) == [pytest.approx(out.mean())]
    # with eval_fn there are no per-image outcomes: the drop itself
    state.eval_fn = lambda f: 0.0
    assert drop_bound(state, 1.0)(plan) == pytest.approx(drop)
