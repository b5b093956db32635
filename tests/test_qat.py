"""QAT fine-tuning keeps the quantization contract; MOHAQ beacon correction; tune() beacons."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import tvm_mpq
from tvm_mpq.quant.qat import beacon_correction, plan_distance, qat_finetune
from tvm_mpq.zoo.fashion_mnist import evaluate

sys.path.insert(0, os.path.dirname(__file__))
from test_compile import SmallNet  # noqa: E402


def _task(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + torch.rand(n, generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) * scale.view(-1, 1, 1, 1)
    y = (scale > 1.0).long()  # learnable through ReLU + global mean pooling: signal energy
    return x, y


def _trained() -> torch.nn.Module:
    torch.manual_seed(0)
    m = SmallNet()
    x, y = _task(2048, 0)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(150):
        idx = torch.randint(0, len(x), (128,))
        loss = torch.nn.functional.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def _assert_compiles_exactly(ft: torch.nn.Module, plan, qp, x: torch.Tensor) -> None:
    """The fine-tuned model's integer-only and float-glue compiles equal their fake-quant
    references on ``x``."""
    cm = tvm_mpq.compile(ft, x, plan, "host", qparams=qp)  # integer glue
    exact = tvm_mpq.fake_quant(ft, plan, qparams=qp, integer_only=True)(x).detach().numpy()
    assert np.abs(cm(x) - exact).max() <= 1e-5
    cmf = tvm_mpq.compile(ft, x, plan, "host", qparams=qp, glue="float")
    exact = tvm_mpq.fake_quant(ft, plan, qparams=qp, integer_accumulate=True)(x).detach().numpy()
    assert np.abs(cmf(x) - exact).max() <= 1e-5


def test_qat_recovers_accuracy_and_compiles_exactly():
    m = _trained()
    x, y = _task(512, 1)
    xt, yt = _task(4096, 2)
    plan = tvm_mpq.QuantPlan.uniform(m, w_bits=2, a_bits=2)
    qp = tvm_mpq.calibrate(m, plan, xt[:256])
    ptq = evaluate(tvm_mpq.fake_quant(m, plan, qparams=qp), x, y)
    ft, qp2 = qat_finetune(m, plan, xt[:256], (xt, yt), qparams=qp, steps=200, lr=3e-3)
    ref = tvm_mpq.fake_quant(ft, plan, qparams=qp2)
    qat = evaluate(ref, x, y)
    fp32 = evaluate(m, x, y)
    assert fp32 > 0.85
    assert qat >= ptq + 0.04, (fp32, ptq, qat)  # w2a2 PTQ loses a lot; QAT wins part back
    for name in plan.quantized_layers():  # the contract: same scales, integers in range
        assert np.array_equal(qp2[name].w_scale, qp[name].w_scale)
        assert qp2[name].a_scale == qp[name].a_scale
        assert np.abs(qp2[name].w_q).max() <= 2
    assert qp2.tensors  # the fine-tuned model's own value ranges, for integer-only inference
    _assert_compiles_exactly(ft, plan, qp2, x[:4])


def test_lsq_learns_scales_and_compiles_exactly():
    """LSQ trains the weight and activation scales (they move from the calibration) and wins
    back w2a2 accuracy lost by PTQ; the learned scales are the plan's new contract:
    integer-only and float-glue compiles equal their fake-quant references."""
    m = _trained()
    x, y = _task(512, 1)
    xt, yt = _task(4096, 2)
    plan = tvm_mpq.QuantPlan.uniform(m, w_bits=2, a_bits=2)
    plan.set("fc", w_bits=1, a_bits=4)  # 1-bit weights: sign with a trained scale
    qp = tvm_mpq.calibrate(m, plan, xt[:256])
    ptq = evaluate(tvm_mpq.fake_quant(m, plan, qparams=qp), x, y)
    ft, qp2 = qat_finetune(m, plan, xt[:256], (xt, yt), qparams=qp, steps=200, lr=3e-3,
                           method="lsq")
    lsq = evaluate(tvm_mpq.fake_quant(ft, plan, qparams=qp2), x, y)
    assert lsq >= ptq + 0.04, (ptq, lsq)
    assert qp2.meta["qat"]["method"] == "lsq"
    moved = [name for name in plan.quantized_layers()
             if qp2[name].a_scale != qp[name].a_scale
             and not np.array_equal(qp2[name].w_scale, qp[name].w_scale)]
    assert moved == plan.quantized_layers()
    for name in plan.quantized_layers():
        q = qp2[name]
        assert q.a_scale > 0 and np.all(q.w_scale > 0) and q.w_scale.dtype == np.float32
        lo, hi = q.w_range
        assert lo <= q.w_q.min() and q.w_q.max() <= hi
    _assert_compiles_exactly(ft, plan, qp2, x[:4])
    with pytest.raises(ValueError, match="unknown QAT method 'lsqq'"):
        qat_finetune(m, plan, xt[:256], (xt, yt), method="lsqq")


def test_beacon_correction_uses_nearest_beacon():
    m = SmallNet()
    a = tvm_mpq.QuantPlan.uniform(m, w_bits=2, a_bits=2)
    b = tvm_mpq.QuantPlan.uniform(m, w_bits=8, a_bits=8)
    c = tvm_mpq.QuantPlan.uniform(m, w_bits=2, a_bits=2).set(a.layers()[0], w_bits=4, a_bits=4)
    assert plan_distance(a, c) < plan_distance(b, c)
    est = beacon_correction([0.5, 0.9], [c, b], [(a, 0.4, 0.8), (b, 0.9, 0.9)])
    assert est == [0.9, 0.9]  # c gets a's +0.4 gain (clipped to <= 1 not needed), b its own 0
    assert beacon_correction([0.3], [c], []) == [0.3]


def test_tune_with_beacons(tmp_path):
    m = _trained()
    x, y = _task(256, 1)
    xt, yt = _task(2048, 2)
    res = tvm_mpq.tune(m, x[:1], "riscv", calib_data=xt[:128], eval_data=(x, y),
                       train_data=(xt, yt), qat_beacons=2, qat_steps=60, workdir=str(tmp_path),
                       bits=[(8, 8), (2, 2)], variants=["int8", "bitserial"], pop_size=8,
                       generations=3, active_rounds=0, progress=False, max_accuracy_drop=5.0)
    tuned = [p for p in res.pareto if "QAT fine-tuned" in p.notes]
    assert tuned, "no beacon was fine-tuned"
    for p in tuned:  # adopted (its fine-tuned model), or worse than PTQ and not adopted
        assert (p.qat_dir is not None) != ("PTQ kept" in p.notes)
        if p.qat_dir:
            assert os.path.exists(os.path.join(p.qat_dir, "model.pt"))
    if res.best is not None and res.best.qat_dir:
        # the deployed plan is the fine-tuned one, and it was measured end to end
        assert res.best.compiled_accuracy is not None
        assert abs(res.best.compiled_accuracy - res.best.accuracy) <= 0.02
    loaded = tvm_mpq.load_result(str(tmp_path))
    assert [p.qat_dir for p in loaded.pareto] == [p.qat_dir for p in res.pareto]


def test_tune_with_hybrid_search(tmp_path):
    """search="hybrid": DNAS sweep, free bits up / costly bits down, LSQ beacons; the same
    TuneResult; without training data the error comes before any stage."""
    m = _trained()
    x, y = _task(256, 1)
    xt, yt = _task(2048, 2)
    kw = dict(calib_data=xt[:128], eval_data=(x, y), workdir=str(tmp_path),
              bits=[(8, 8), (2, 2)], variants=["int8", "bitserial"], active_rounds=0,
              progress=False, max_accuracy_drop=5.0, search="hybrid", dnas_steps=20,
              dnas_cost_weights=[0.0, 1.0], qat_steps=30)
    with pytest.raises(ValueError, match="train_data"):
        tvm_mpq.tune(m, x[:1], "riscv", **kw)
    assert not os.path.exists(os.path.join(tmp_path, "stages"))
    res = tvm_mpq.tune(m, x[:1], "riscv", train_data=(xt, yt), **kw)
    assert res.pareto and res.settings["search"] == "hybrid"
    assert len(list(tmp_path.glob("dnas/dnas_*_w1.json"))) == 1  # the supernet's logits
    assert any("QAT fine-tuned" in p.notes for p in res.pareto)
    runs = os.listdir(os.path.join(tmp_path, "qat"))
    assert runs and all(r.endswith("_lsq") for r in runs)  # LSQ fine-tuning
    if res.best is not None:
        assert res.best.measured_cost is not None
