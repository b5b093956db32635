"""Search stage: cost model, sensitivity, NSGA-II problem/front, checkpoints, plots (no simulators)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_mpq.costmodel.design import initial_design, select_for_measurement
from tvm_mpq.costmodel.features import FEATURE_NAMES, featurize
from tvm_mpq.costmodel.holdout import evaluate_holdout
from tvm_mpq.costmodel.model import CostModel, CostModelMismatchError
from tvm_mpq.costmodel.query import CostQuery
from tvm_mpq.frontend.layers import LayerInfo, LayerTable
from tvm_mpq.measure.key import KernelKey
from tvm_mpq.plots import plot_bits, plot_pareto
from tvm_mpq.quant.fakequant import fake_quant
from tvm_mpq.quant.plan import FP32, LayerConfig, QuantPlan
from tvm_mpq.quant.sensitivity import SensitivityTable, layer_sensitivity
from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload, workload_from_layer
from tvm_mpq.search.front import exhaustive_front, hv_ratio
from tvm_mpq.search.nsga import run_nsga
from tvm_mpq.search.problem import MPQProblem
from tvm_mpq.search.refine import refine

PROFILE = "rv64gc_zbb"


# ---------------------------------------------------------------------- synthetic data
def _per_mac(v: str, w: int, a: int) -> float:
    """Known structure: bit-serial cost grows with w*a, int8/unpack flat, fp32 dearest."""
    return {"fp32": 2.0, "int8": 1.5, "unpack": 1.8, "bitserial": 0.15 * w * a,
            "swar": 0.4 + 0.05 * w * a}[v]


def _workloads() -> list:
    wls = []
    for c in (8, 16, 32, 64):
        for hw in (6, 12):
            wls.append(Conv2dWorkload.make((1, c, hw, hw), (c, c, 3, 3), 1, 1, 1))
            wls.append(Conv2dWorkload.make((1, c, hw, hw), (2 * c, c, 1, 1), 1, 0, 1))
            wls.append(Conv2dWorkload.make((1, c, hw, hw), (c, 1, 3, 3), 1, 1, c))
    wls.append(DenseWorkload.make((1, 64), (10, 64)))
    wls.append(DenseWorkload.make((1, 128), (32, 128)))
    return wls


def _record(wl, v, w, a, cost, status="ok", profile=PROFILE, **kw) -> dict:
    d = dict(profile=profile, backend="spike", workload_key=wl.key(), workload=wl.to_dict(),
             variant=v, w_bits=w, a_bits=a, schedule="default", status=status,
             instructions=None if status != "ok" else int(cost), seconds=None)
    d.update(kw)
    return d


def _records(seed: int = 0, wls=None) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for wl in wls or _workloads():
        for v in ("fp32", "int8", "bitserial", "unpack"):
            for w, a in ((8, 8), (4, 4), (2, 2), (1, 1)) if v != "fp32" else ((8, 8),):
                cost = wl.macs * _per_mac(v, w, a) * math.exp(0.03 * rng.standard_normal()) + 200
                out.append(_record(wl, v, w, a, cost))
    return out


def _synthetic_cost(queries) -> np.ndarray:
    return np.asarray([q.workload.macs * _per_mac(q.variant, q.w_bits, q.a_bits) + 200
                       for q in queries])


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv3 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _table_of(model: nn.Module, x: torch.Tensor) -> LayerTable:
    """LayerTable from forward hooks (what import_model records, without TVM)."""
    rows: list[LayerInfo] = []

    def hook(name):
        def f(m, args, out):
            i, o = tuple(args[0].shape), tuple(out.shape)
            if isinstance(m, nn.Conv2d):
                macs = math.prod(o) * (m.in_channels // m.groups) * math.prod(m.kernel_size)
                rows.append(LayerInfo(len(rows), name, "conv2d", i, tuple(m.weight.shape), o,
                                      tuple(m.stride), tuple(m.padding), tuple(m.dilation),
                                      m.groups, m.bias is not None, macs))
            else:
                rows.append(LayerInfo(len(rows), name, "linear", i, tuple(m.weight.shape), o,
                                      has_bias=m.bias is not None, macs=math.prod(o) * i[-1]))
        return f

    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hs:
        h.remove()
    return LayerTable(rows)


def _chain_table(n_layers: int = 6) -> LayerTable:
    """A chain of convs of varied shapes (one call site each)."""
    rows, c, hw = [], 8, 16
    for i in range(n_layers):
        k = c * 2 if i % 2 else c
        groups = c if i % 3 == 2 else 1
        if groups > 1:
            k = c
        kk = 3 if i % 2 == 0 else 1
        wl = Conv2dWorkload.make((1, c, hw, hw), (k, c // groups, kk, kk), 1, kk // 2, groups)
        rows.append(LayerInfo(i, f"l{i}", "conv2d", wl.input_shape, wl.weight_shape,
                              wl.output_shape, (1, 1), (kk // 2, kk // 2), (1, 1), groups, True,
                              wl.macs))
        c = k
    return LayerTable(rows)


def _synthetic_sens(table: LayerTable, bits, seed: int = 0) -> SensitivityTable:
    rng = np.random.default_rng(seed)
    names = table.quantizable_names()
    entries = {}
    for n in names:
        s = rng.uniform(0.2, 3.0)  # layer importance
        entries[n] = {f"w{w}a{a}": {"loss_delta": s * (2.0 ** -w + 2.0 ** -a),
                                    "acc_drop": None, "kl": s * 2.0 ** -min(w, a)}
                      for w, a in bits}
    return SensitivityTable(names, list(bits), entries, {"loss": 1.0, "acc": 0.9}, {})


BITS = [(8, 8), (4, 4), (2, 2)]


def _problem(**kw) -> MPQProblem:
    table = _chain_table()
    return MPQProblem(table, _synthetic_cost, _synthetic_sens(table, BITS), PROFILE, bits=BITS, **kw)


# ---------------------------------------------------------------------- cost model
def test_features_shape_and_fp32_bits_ignored():
    wl = _workloads()[0]
    X = featurize([CostQuery(wl, "fp32", 8, 8, PROFILE), CostQuery(wl, "fp32", 2, 2, PROFILE),
                   CostQuery(wl, "bitserial", 2, 2, PROFILE)])
    assert X.shape == (3, len(FEATURE_NAMES))
    assert np.array_equal(X[0], X[1])  # fp32 placeholder bits do not matter
    assert not np.array_equal(X[0], X[2])


def test_query_key_is_the_kernel_key():
    """CostQuery.key() is the one KernelKey, equal (and hashing equal) to the plain tuple
    older code and stored JSON lists use; fp32 placeholder bits give one key."""
    wl = _workloads()[0]
    q = CostQuery(wl, "bitserial", 2, 4, PROFILE)
    k = q.key()
    assert isinstance(k, KernelKey) and k == (wl.key(), "bitserial", 2, 4, PROFILE)
    assert {k} == {tuple(k)} and KernelKey(*json.loads(json.dumps(k))) == k
    assert CostQuery(wl, "fp32", 2, 2, PROFILE).key() == CostQuery(wl, "fp32", 8, 8, PROFILE).key()
    assert CostQuery.from_record(_record(wl, "bitserial", 2, 4, 100)).key() == k


def test_costmodel_generalises_to_held_out_workloads():
    recs = _records()
    rep = evaluate_holdout(recs, "workload", max_folds=5, num_rounds=120)
    assert rep.n == len(recs) and rep.n_folds == 5
    assert rep.spearman > 0.97, rep.summary()
    assert rep.mape < 0.25, rep.summary()
    assert rep.spearman_within > 0.8, rep.summary()


def test_costmodel_fit_predict_save_load(tmp_path):
    recs = _records()
    # failed records carry no number and must be ignored, not crash the fit
    recs.append(_record(_workloads()[0], "bitserial", 8, 4, None, status="build_error"))
    cm = CostModel(n_members=3, num_rounds=80).fit(recs)
    assert cm.target == "instructions"
    qs = [CostQuery.from_record(r) for r in recs[:20]]
    mean, std = cm.predict(qs)
    true = np.asarray([r["instructions"] for r in recs[:20]], float)
    assert mean.shape == std.shape == (20,)
    assert np.all(std >= 0) and np.median(np.abs(mean - true) / true) < 0.1
    path = tmp_path / "cm.json"
    cm.save(path)
    cm2 = CostModel.load(path)
    m2, s2 = cm2.predict(qs)
    np.testing.assert_allclose(m2, mean, rtol=1e-6)
    np.testing.assert_allclose(s2, std, atol=1e-6)
    assert cm2.trained_keys == cm.trained_keys
    assert all(isinstance(k, KernelKey) for k in cm2.trained_keys)

    doc = json.loads(path.read_text())
    bad = dict(doc, feature_names=doc["feature_names"][:-1] + ["some_new_feature"])
    (tmp_path / "schema.json").write_text(json.dumps(bad))
    with pytest.raises(CostModelMismatchError, match="feature schema"):
        CostModel.load(tmp_path / "schema.json")
    old = dict(doc, xgboost_version="1.7.6")
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(CostModelMismatchError, match="xgboost 1.7.6"):
        CostModel.load(tmp_path / "old.json")
    assert CostModel.load(tmp_path / "old.json", allow_version_mismatch=True).is_fitted


def test_analytic_prior_extrapolates_and_survives_save_load(tmp_path):
    """The prior is linear in stage iteration counts, so it scales to a workload 4x the
    size of any trained one (trees alone cannot); the saved model keeps it."""
    from tvm_mpq.costmodel.analytic import AnalyticPrior
    from tvm_mpq.costmodel.terms import ANALYTIC_TERMS, analytic_terms

    wls = [Conv2dWorkload.make((1, c, hw, hw), (c, c, 3, 3), 1, 1, 1)
           for c in (8, 16) for hw in (4, 6, 8)]
    qs = [CostQuery(wl, "int8", 8, 8, PROFILE) for wl in wls]
    T = analytic_terms(qs)
    assert T.shape == (len(qs), len(ANALYTIC_TERMS)) and np.all(T >= 0)
    y = _synthetic_cost(qs)
    big = CostQuery(Conv2dWorkload.make((1, 16, 16, 16), (16, 16, 3, 3), 1, 1, 1), "int8", 8, 8,
                    PROFILE)
    p = AnalyticPrior().fit(qs, y).predict([big])[0]
    assert abs(p / _synthetic_cost([big])[0] - 1) < 0.05
    recs = [_record(q.workload, "int8", 8, 8, c) for q, c in zip(qs, y, strict=True)]
    cm = CostModel(n_members=1, num_rounds=20).fit(recs)
    assert abs(cm([big])[0] / _synthetic_cost([big])[0] - 1) < 0.1
    cm.save(tmp_path / "p.json")
    np.testing.assert_allclose(CostModel.load(tmp_path / "p.json")([big]), cm([big]), rtol=1e-6)
    assert CostModel(prior=False, n_members=1, num_rounds=5).fit(recs).prior is None


def test_costmodel_refuses_mixed_units_and_empty():
    wl = _workloads()[0]
    recs = [_record(wl, "int8", 8, 8, 1000),
            dict(_record(wl, "int8", 4, 4, 0, profile="host"), instructions=None, seconds=1e-3)]
    with pytest.raises(ValueError, match="mix"):
        CostModel().fit(recs)
    assert CostModel(target="seconds", num_rounds=5).fit(recs).target == "seconds"
    with pytest.raises(ValueError, match="no usable"):
        CostModel().fit([_record(wl, "int8", 8, 8, None, status="run_error")])


def test_initial_design_and_selection():
    table = _chain_table()
    qs = initial_design(table, ("int8", "bitserial", "unpack"), BITS, PROFILE, budget=30)
    assert len(qs) == 30 and len({q.key() for q in qs}) == 30
    wl_keys = {workload_from_layer(r).key() for r in table}
    fp32 = {q.workload.key() for q in qs if q.variant == "fp32"}
    assert fp32 == wl_keys  # every workload measured at the fp32 anchor
    cells = {(q.variant, q.w_bits, q.a_bits) for q in qs if q.variant != "fp32"}
    assert len(cells) >= 7  # spread over the (variant, bits) grid, not piled in one cell
    recs = [_record(q.workload, q.variant, q.w_bits, q.a_bits, _synthetic_cost([q])[0]) for q in qs]
    cm = CostModel(n_members=4, num_rounds=60).fit(recs)
    cands = initial_design(table, ("int8", "bitserial", "unpack"), BITS, PROFILE, budget=10_000)
    picked = select_for_measurement(cands, cm, k=5)
    assert len(picked) == 5
    assert not {q.key() for q in picked} & cm.trained_keys


# ---------------------------------------------------------------------- sensitivity
def test_sensitivity_tiny_net(tmp_path):
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(96, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    calib, ev = x[:48], (x[48:], y[48:])
    bits = [(8, 8), (2, 2)]
    sens = layer_sensitivity(model, calib, ev, bits=bits, progress=False)
    assert sens.layers == ["conv1", "conv2", "conv3", "fc"]
    assert sens.base["acc"] == 1.0  # labels are the fp32 predictions
    for n in sens.layers:
        assert sens.value(n, 2, 2, "kl") > sens.value(n, 8, 8, "kl") >= 0
        assert sens.value(n, FP32, FP32) == 0.0
    # single-layer plan through the reference fake_quant gives the same KL
    q = fake_quant(model, QuantPlan.fp32(model).set("conv3", 2, 2), calib)
    with torch.no_grad():
        ref = F.log_softmax(model(ev[0]), 1)
        lq = F.log_softmax(q(ev[0]), 1)
    kl = float((ref.exp() * (ref - lq)).sum(1).mean())
    assert math.isclose(kl, sens.value("conv3", 2, 2, "kl"), rel_tol=1e-4, abs_tol=1e-7)
    plan = QuantPlan.uniform(model, 2, 2).set("fc", "fp32")
    expect = sum(max(sens.value(n, 2, 2), 0) for n in ("conv1", "conv2", "conv3"))
    assert math.isclose(sens.plan_drop(plan), expect)
    sens.save(tmp_path / "s.json")
    back = SensitivityTable.load(tmp_path / "s.json")
    assert back.entries == sens.entries and back.bits == sens.bits
    with pytest.raises(KeyError, match="w4a4 not measured"):
        sens.value("conv1", 4, 4)
    # KL only without labels
    assert layer_sensitivity(model, calib, ev[0], bits=[(4, 4)], layers=["fc"],
                             progress=False).default_metric() == "kl"


# ---------------------------------------------------------------------- problem + NSGA-II
def test_problem_encode_decode_and_objectives():
    torch.manual_seed(0)
    model = TinyNet()
    table = _table_of(model, torch.randn(1, 1, 8, 8))
    sens = _synthetic_sens(table, BITS)
    prob = MPQProblem(table, _synthetic_cost, sens, PROFILE, bits=BITS)
    plan = QuantPlan.uniform(table, 4, 4).set("conv1", 8, 8).set("fc", "fp32")
    vals = prob.evaluate_plan(plan)
    assert vals["size"] == plan.weight_bytes(table)
    assert math.isclose(vals["drop"], sens.plan_drop(plan, "loss"))
    decoded = prob.decode(prob.encode(plan))
    assert [decoded[n].short().split(":")[0] for n in decoded] == \
        [plan[n].short() for n in plan]
    # the variant picked is the fastest predicted one: bitserial for w2a2 in the synthetic costs
    d2 = prob.decode(prob.encode(QuantPlan.uniform(table, 2, 2)))
    assert {d2[n].variant for n in d2} == {"bitserial"}
    lat = sum(_synthetic_cost(prob.plan_queries(plan, table)))
    assert math.isclose(vals["latency"], lat)
    assert len(prob.uniform_genomes()) == 4  # fp32, w8a8, w4a4, w2a2


def test_nsga_front_close_to_exhaustive(tmp_path):
    prob = _problem()
    assert prob.n_plans == 4 ** 6
    _, F_ex = exhaustive_front(prob)
    res = run_nsga(prob, pop_size=32, n_gen=40, seed=1)
    assert res.feasible and res.members
    ratio = hv_ratio(res.F, F_ex)
    assert ratio >= 0.9, ratio
    # every member is a valid plan whose objectives re-evaluate to the stored ones
    m = res.members[0]
    vals = prob.evaluate_plan(m.plan)
    assert math.isclose(vals["latency"], m.latency) and vals["size"] == m.size
    plot_pareto(res, tmp_path / "front.png")
    plot_bits(m.plan, tmp_path / "bits.png")
    assert (tmp_path / "front.png").stat().st_size > 1000
    assert (tmp_path / "bits.png").stat().st_size > 1000


def test_constraints_respected_and_infeasible_returns_front():
    prob = _problem()
    w8 = prob.evaluate_plan(prob.decode(prob.uniform_genomes([(8, 8)])[0]))
    budget = 0.6 * w8["latency"]
    res = run_nsga(_problem(max_latency=budget), pop_size=24, n_gen=15)
    assert res.feasible and all(m.latency <= budget for m in res.members)

    res = run_nsga(_problem(max_drop=-1.0, max_latency=1.0), pop_size=16, n_gen=5)
    assert not res.feasible
    assert res.members, "an infeasible search must still return plans"
    assert "no plan meets the constraints" in res.message and "drop" in res.message
    assert all(m.violation > 0 for m in res.members)


def _stored_weight_bytes(table: LayerTable, plan: QuantPlan, rng) -> int:
    """Bytes of each layer's weight argument as compile() stores it (prepare_weight of
    random integer weights) + fp32 biases."""
    from tvm_mpq.schedules import make_kernel

    total = 0
    for r in table:
        c = plan[r.name]
        if c.is_fp32:
            total += 4 * (r.weight_numel + r.bias_numel)
            continue
        kd = make_kernel(workload_from_layer(r), c.variant, c.w_bits, c.a_bits)
        lo = -1 if c.w_bits == 1 else -(1 << (c.w_bits - 1))
        w = rng.integers(lo, 1 << max(c.w_bits - 1, 1), r.weight_shape)
        if c.w_bits == 1:
            w = np.where(w < 0, -1, 1)
        total += kd.prepare_weight(w).nbytes + 4 * r.bias_numel
    return total


def test_flash_constraint_prices_the_packed_weights():
    """``flash`` is what compile() stores for the chosen kernels (swar w8a8: 4 bytes per
    weight), never below the size objective; ``max_flash`` bounds it."""
    table, rng = _chain_table(), np.random.default_rng(0)
    prob = _problem(max_flash=1e12)
    assert prob.constraint_names == ("flash",)
    for g in prob.uniform_genomes():
        plan = prob.decode(g)
        vals = prob.evaluate_plan(plan)
        assert vals["flash"] == _stored_weight_bytes(table, plan, rng) >= vals["size"]
    swar = _problem(max_flash=1e12, variants=["swar"])
    v8 = swar.evaluate_plan(swar.decode(swar.uniform_genomes([(8, 8)])[0]))
    # channel lanes store two weights per 64-bit word (4 bytes each), pixel lanes int8 bytes
    assert v8["flash"] == _stored_weight_bytes(table, swar.decode(swar.uniform_genomes([(8, 8)])[0]),
                                               rng) >= v8["size"]
    w8 = prob.evaluate_plan(prob.decode(prob.uniform_genomes([(8, 8)])[0]))
    budget = 0.7 * w8["flash"]
    res = run_nsga(_problem(max_flash=budget), pop_size=24, n_gen=10)
    assert res.feasible and all(prob.evaluate_plan(m.plan)["flash"] <= budget for m in res.members)
    assert _problem().fingerprint() != _problem(max_flash=budget).fingerprint()
    # with the variant as a gene, the narrowest layout fits a budget the fastest kernels miss:
    # int8 stores a byte per weight whatever the bits, unpack packs w4 two to a byte
    def int8_fastest(qs):
        return np.asarray([(1.0 if q.variant == "int8" else 3.0) * q.workload.macs for q in qs])

    sens = _synthetic_sens(table, BITS)
    wide = MPQProblem(table, int8_fastest, sens, PROFILE, bits=BITS, max_flash=1e12)
    genes = MPQProblem(table, int8_fastest, sens, PROFILE, bits=BITS, max_flash=1e12,
                       search_variant=True)
    narrow = genes.evaluate_plan(QuantPlan.uniform(table, 4, 4, variant="unpack"))["flash"]
    assert narrow * 1.5 < wide.evaluate_plan(QuantPlan.uniform(table, 4, 4))["flash"]  # int8 w4
    tight = MPQProblem(table, int8_fastest, sens, PROFILE, bits=BITS, max_flash=narrow * 1.01,
                       search_variant=True)
    res = run_nsga(tight, pop_size=24, n_gen=10)
    assert res.feasible and all(tight.evaluate_plan(m.plan)["flash"] <= narrow * 1.01
                                for m in res.members)


def test_checkpoint_resume(tmp_path):
    prob = _problem()
    first = run_nsga(prob, pop_size=16, n_gen=4, seed=3, workdir=tmp_path)
    assert first.n_gen == 4 and (tmp_path / "nsga_state.npz").exists()
    gens: list[int] = []
    res = run_nsga(_problem(), pop_size=16, n_gen=9, seed=3, workdir=tmp_path,
                   callback=lambda g, r: gens.append(g))
    assert gens == [5, 6, 7, 8, 9]  # continued from generation 4
    assert res.n_gen == 9 and res.n_evals > first.n_evals
    # the archive carried over: the resumed front is at least as good as the first one
    _, F_ex = exhaustive_front(prob)
    assert hv_ratio(res.F, F_ex) >= hv_ratio(first.F, F_ex) - 1e-9
    # done already: returns the saved front without running
    again = run_nsga(_problem(), pop_size=16, n_gen=9, workdir=tmp_path)
    assert again.n_gen == 9 and again.n_evals == res.n_evals
    # another problem: old checkpoint moved aside, fresh start
    other = run_nsga(_problem(max_latency=1e12), pop_size=16, n_gen=2, workdir=tmp_path)
    assert other.n_gen == 2 and (tmp_path / "nsga_state.stale.npz").exists()


def test_refine_replaces_proxy_and_save_load(tmp_path):
    prob = _problem()
    res = run_nsga(prob, pop_size=16, n_gen=5)

    def eval_fn(plan: QuantPlan) -> float:  # fake "accuracy": loses 1% per 2-bit layer
        return 0.9 - 0.01 * sum(1 for n in plan if plan[n] == LayerConfig(2, 2, plan[n].variant))

    ref = refine(res, eval_fn)
    assert ref.refined and ref.members
    for m in ref.members:
        assert m.accuracy is not None and math.isclose(m.drop, 0.9 - m.accuracy)
        assert m.proxy_drop is not None
    ref.save(tmp_path / "front.json")
    from tvm_mpq.search.front import SearchResult
    back = SearchResult.load(tmp_path / "front.json")
    assert back.plans == ref.plans and back.refined


def test_analytic_terms_follow_the_default_schedules():
    """Terms track the stages each variant really runs: bitserial pads packed words (no byte
    padding stage), swar and bitserial count register tiles, and a 1x1 one-word bitserial
    kernel whose W x G plane loop is too big for LLVM to unroll gets the rolled-loop term."""
    from tvm_mpq.costmodel.features import kernel_shape_class
    from tvm_mpq.costmodel.terms import ANALYTIC_TERMS, analytic_terms

    col = {n: i for i, n in enumerate(ANALYTIC_TERMS)}
    dw = Conv2dWorkload.make((1, 16, 8, 8), (16, 1, 3, 3), 1, 1, 16)
    pw = Conv2dWorkload.make((1, 16, 8, 8), (32, 16, 1, 1), 1, 0, 1)
    wide = Conv2dWorkload.make((1, 128, 4, 4), (32, 128, 1, 1), 1, 0, 1)
    assert (kernel_shape_class(dw), kernel_shape_class(pw)) == ("window", "1x1")
    T = analytic_terms([CostQuery(dw, "bitserial", 2, 2, PROFILE), CostQuery(dw, "swar", 2, 2, PROFILE),
                        CostQuery(dw, "int8", 8, 8, PROFILE)])
    assert T[0, col["pad"]] == 0 and T[0, col["pk_pad"]] > 0 and T[0, col["bs_tiles"]] > 0
    assert T[1, col["pad"]] > 0 and T[1, col["swar_tiles"]] > 0 and T[1, col["bs_pop"]] == 0
    assert T[2, col["pad"]] > 0 and T[2, col["swar_tiles"]] == T[2, col["bs_tiles"]] == 0
    flat = analytic_terms([CostQuery(wl, "bitserial", w, a, PROFILE)
                           for wl, w, a in ((pw, 4, 8), (pw, 4, 4), (wide, 4, 8))])[:, col["bs_flat"]]
    assert flat[0] > 0 and flat[1] == 0 and flat[2] == 0


def test_analytic_prior_falls_back_when_its_group_never_saw_a_stage():
    """Trained on depthwise 3x3 (gather packing) and 1x1 (blocked packing) bitserial kernels,
    the prior predicts a full 3x3 convolution, whose packing is blocked (a stage no window
    kernel had: the window group's weight for it is 0), with the weights fitted over both
    shapes; the choice survives a save."""
    from tvm_mpq.costmodel.analytic import AnalyticPrior
    from tvm_mpq.costmodel.terms import ANALYTIC_TERMS, analytic_terms

    col = {n: i for i, n in enumerate(ANALYTIC_TERMS)}
    train = [Conv2dWorkload.make((1, c, hw, hw), (c, 1, 3, 3), 1, 1, c)
             for c in (16, 32, 64) for hw in (4, 8)]
    train += [Conv2dWorkload.make((1, c, hw, hw), (2 * c, c, 1, 1), 1, 0, 1)
              for c in (16, 64, 96) for hw in (2, 4)]
    qs = [CostQuery(wl, "bitserial", 2, 2, PROFILE) for wl in train]
    full = CostQuery(Conv2dWorkload.make((1, 32, 8, 8), (32, 32, 3, 3), 1, 1, 1), "bitserial",
                     2, 2, PROFILE)
    t_full = analytic_terms([full])[0]
    assert t_full[col["pk_blk_out"]] > 0
    assert all(analytic_terms([q])[0, col["pk_blk_out"]] == 0 for q in qs[:6])
    prior = AnalyticPrior().fit(qs, _synthetic_cost(qs))
    nonzero = {n for n in ANALYTIC_TERMS if t_full[col[n]] > 0}
    window, broad = f"bitserial|{PROFILE}|window", f"bitserial|{PROFILE}"
    assert "pk_blk_out" not in prior.support[window]
    assert prior._theta(full, nonzero) == prior.coef[broad] != prior.coef[window]
    again = AnalyticPrior.from_dict(prior.to_dict())
    np.testing.assert_allclose(again.predict([full]), prior.predict([full]))
