"""Differentiable search (DNAS) and the Free Bits refinement, on a tiny net (no simulators)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search import (
    BITS,
    PROFILE,
    TinyNet,
    _chain_table,
    _synthetic_cost,
    _synthetic_sens,
    _table_of,
)

from tvm_mpq.quant.folding import fold_bn
from tvm_mpq.quant.plan import FP32, LayerConfig, QuantPlan
from tvm_mpq.quant.qat import QATLayer
from tvm_mpq.quant.qparams_cache import QParamsCache
from tvm_mpq.search.dnas import (
    DNASSettings,
    MixedLayer,
    dnas_search,
    free_bits,
    lower_costly_bits,
    option_costs,
)
from tvm_mpq.search.problem import MPQProblem


def _task(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """TinyNet trained a few steps on a separable 4-class task (class = brightest quadrant)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(512, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (512,), generator=g)
    for i, (r, c) in enumerate(((0, 0), (0, 4), (4, 0), (4, 4))):
        x[y == i, :, r:r + 4, c:c + 4] += 1.0
    torch.manual_seed(seed)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, y


@pytest.fixture(scope="module")
def setup():
    model, x, y = _task()
    table = _table_of(model, x[:1])
    prob = MPQProblem(table, _synthetic_cost, _synthetic_sens(table, BITS), PROFILE, bits=BITS)
    cache = QParamsCache(model, x[:128])

    def qparams_of(w: int, a: int):
        return cache(QuantPlan.uniform(model, w_bits=w, a_bits=a))

    macs = {r.name: r.macs for r in table}
    return model, x, y, prob, qparams_of, macs


def test_mixed_layer_branches_are_the_contract_quantizers(setup):
    model, _, _, prob, qparams_of, _ = setup
    folded = fold_bn(model)
    mod = folded.conv3
    branches = [None if w == FP32 else QATLayer(mod, qparams_of(w, a)["conv3"])
                for w, a in prob.options]
    ml = MixedLayer(mod, branches)
    inp = torch.relu(torch.randn(4, 8, 8, 8))
    for i, (w, _a) in enumerate(prob.options):
        ml.probs = F.one_hot(torch.tensor(i), len(prob.options)).float()
        got = ml(inp)
        want = mod(inp) if w == FP32 else branches[i](inp)
        torch.testing.assert_close(got, want)
        ml.probs = torch.softmax(torch.randn(len(prob.options), requires_grad=True), 0)
        ml.sampled = [i]  # single path: the branch's value, a gradient to every logit
        torch.testing.assert_close(ml(inp), want)
        j = (i + 1) % len(prob.options)
        ml.sampled = [i, j]  # two paths: mixed by the softmax of their two logits
        with torch.no_grad():
            ml.alpha.zero_()
            ml.alpha[i] = 20.0
        torch.testing.assert_close(ml(inp), want, atol=1e-5, rtol=1e-5)
        ml.sampled = None


def test_cost_weight_moves_the_plan_to_cheaper_options(setup, tmp_path):
    model, x, y, prob, qparams_of, macs = setup
    cfg = DNASSettings(steps=40, batch_size=64, cost_weights=(0.0, 20.0), arch_lr=0.1)
    res = dnas_search(prob, fold_bn(model), qparams_of, (x, y), cfg, workdir=str(tmp_path))
    assert res.members and all(m.plan.layers() == prob.layer_names for m in res.members)
    lats = [m.latency for m in res.members]
    assert lats == sorted(lats)
    (f0,), (f1,) = tmp_path.glob("dnas_*_w0.json"), tmp_path.glob("dnas_*_w20.json")
    alpha0 = np.asarray(json.load(open(f0))["alpha"])
    alpha1 = np.asarray(json.load(open(f1))["alpha"])
    costs = option_costs(prob, "measured")
    exp = [sum(np.exp(a) / np.exp(a).sum() @ c for a, c in zip(al, costs, strict=True))
           for al in (alpha0, alpha1)]
    assert exp[1] < exp[0]  # the cost term pulls the distribution to cheaper kernels
    cheapest = QuantPlan((n, _cfg(prob.options[int(np.argmin(c))]))
                         for n, c in zip(prob.layer_names, costs, strict=True))
    assert res.members[0].latency <= res.members[-1].latency
    assert prob.evaluate_plan(cheapest)["latency"] <= res.members[0].latency
    # resumed: the logits of both weights come from the workdir (no training data needed)
    again = dnas_search(prob, fold_bn(model), qparams_of, None, cfg, workdir=str(tmp_path))
    assert [m.plan for m in again.members] == [m.plan for m in res.members]
    with pytest.raises(TypeError):  # other data (cache_key): trains, and None is no data
        dnas_search(prob, fold_bn(model), qparams_of, None, cfg, workdir=str(tmp_path),
                    cache_key="other weights")


def test_bitops_supernet_is_reused_when_the_kernel_costs_change(setup, tmp_path):
    """The logits are keyed on the costs trained against: new kernel measurements retrain a
    measured-cost supernet but not a bit-ops one."""
    model, x, y, prob, qparams_of, macs = setup
    table = _table_of(model, x[:1])
    dearer = MPQProblem(table, lambda qs: 2.0 * np.asarray(_synthetic_cost(qs)),
                        _synthetic_sens(table, BITS), PROFILE, bits=BITS)
    assert dearer.fingerprint() != prob.fingerprint()
    wd = str(tmp_path)
    for cost in ("bitops", "measured"):
        cfg = DNASSettings(steps=4, batch_size=64, cost_weights=(1.0,), cost=cost)
        dnas_search(prob, fold_bn(model), qparams_of, (x, y), cfg, macs=macs, workdir=wd)
    bitops = DNASSettings(steps=4, batch_size=64, cost_weights=(1.0,), cost="bitops")
    again = dnas_search(dearer, fold_bn(model), qparams_of, None, bitops, macs=macs, workdir=wd)
    assert again.members  # from the cached logits: no training data was needed
    measured = DNASSettings(steps=4, batch_size=64, cost_weights=(1.0,), cost="measured")
    with pytest.raises(TypeError):  # other costs to train against: trains, and None is no data
        dnas_search(dearer, fold_bn(model), qparams_of, None, measured, macs=macs, workdir=wd)


def test_bitops_cost_is_macs_times_bits(setup):
    *_, prob, _, macs = setup
    costs = option_costs(prob, "bitops", macs)
    for n, c in zip(prob.layer_names, costs, strict=True):
        for (w, a), v in zip(prob.options, c, strict=True):
            assert v == macs[n] * (1024 if w == FP32 else w * a)
    with pytest.raises(ValueError, match="MACs"):
        option_costs(prob, "bitops")
    with pytest.raises(ValueError, match="cost"):
        DNASSettings(cost="flops")


def _cfg(o: tuple[int, int]) -> LayerConfig:
    return LayerConfig(*o)


def _flat_depthwise_cost(queries) -> np.ndarray:
    """Like the synthetic cost, but every quantized option of a depthwise layer costs the
    same (no sub-byte speed-up there, as on cores without sub-byte support)."""
    base = _synthetic_cost(queries)
    return np.asarray([1000.0 if q.workload.kind == "conv2d" and q.workload.is_depthwise
                       and q.variant != "fp32" else b for q, b in zip(queries, base, strict=True)])


def test_free_bits_raises_where_it_costs_nothing_and_lowering_keeps_the_budget(setup):
    model, x, _, _, _, _ = setup
    table = _table_of(model, x[:1])
    prob = MPQProblem(table, _flat_depthwise_cost, _synthetic_sens(table, BITS), PROFILE,
                      bits=BITS)
    low = QuantPlan((n, _cfg((2, 2))) for n in prob.layer_names)
    up = free_bits(prob, low)
    for n, t in zip(prob.layer_names, prob.cost_table, strict=True):
        c = dict(zip(prob.options, t.min(axis=1), strict=True))
        # flat (depthwise, and conv1 with one input channel): w8a8 is free; else it costs
        want = (8, 8) if c[(8, 8)] <= c[(2, 2)] else (2, 2)
        assert (up[n].w_bits, up[n].a_bits) == want, n
    assert up["conv2"].w_bits == 8 and up["conv3"].w_bits == 2
    assert prob.evaluate_plan(up)["latency"] <= prob.evaluate_plan(low)["latency"]

    def drop_of(plan: QuantPlan) -> float:  # the proxy as the "real" drop
        return prob.evaluate_plan(plan)["drop"]

    start = QuantPlan((n, _cfg((8, 8))) for n in prob.layer_names)
    budget = drop_of(start) + 0.5 * (drop_of(low) - drop_of(start))
    out = lower_costly_bits(prob, start, drop_of, budget, max_evals=20)
    assert drop_of(out) <= budget
    assert prob.evaluate_plan(out)["latency"] < prob.evaluate_plan(start)["latency"]
    over = lower_costly_bits(prob, low, drop_of, max_drop=-1.0)
    assert over == low  # already over the budget: returned as is


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_free_bits_never_costs_more_nor_lowers_precision(seed):
    """On random measured cost tables: every layer keeps or raises its precision, never
    pays more, and a second pass changes nothing (a fixed point)."""
    rng = np.random.default_rng(seed)
    table = _chain_table()
    noise = {}

    def cost(queries):
        out = []
        for q in queries:
            k = (q.workload.key(), q.variant, q.w_bits, q.a_bits)
            noise.setdefault(k, float(rng.uniform(0.3, 3.0)))
            out.append(q.workload.macs * noise[k])
        return np.asarray(out)

    prob = MPQProblem(table, cost, _synthetic_sens(table, BITS), PROFILE, bits=BITS)
    x = rng.integers(0, len(prob.options), len(prob.layer_names))
    plan = prob.decode(x)
    up = free_bits(prob, plan)
    for n, t in zip(prob.layer_names, prob.cost_table, strict=True):
        c = dict(zip(prob.options, t.min(axis=1), strict=True))
        a, b = plan[n], up[n]
        ka = (FP32, FP32) if a.is_fp32 else (a.w_bits, a.a_bits)
        kb = (FP32, FP32) if b.is_fp32 else (b.w_bits, b.a_bits)
        assert c[kb] <= c[ka]
        assert kb[0] >= ka[0] and kb[1] >= ka[1]
    assert free_bits(prob, up) == up
