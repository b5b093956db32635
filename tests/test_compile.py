"""The TVM-compiled mixed-precision model computes what the fake-quant reference computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import tvm_mpq
from tvm_mpq.quant.calibration import calibrate


class SmallNet(nn.Module):
    """conv+bn+relu, depthwise stride 2, pointwise, residual add, mean pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8),
                                nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.dw(x)
        x = x + self.pw(x)  # residual: the next layer's input is signed (zero point > 0)
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    m = SmallNet().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m


def _check(net, plan, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 12, 12, generator=g)
    calib = torch.randn(32, 1, 12, 12, generator=g)
    qp = calibrate(net, plan, calib)
    cm = tvm_mpq.compile(net, x, plan, "host", qparams=qp, glue="float")
    y = cm(x)
    exact = tvm_mpq.fake_quant(net, plan, qparams=qp, integer_accumulate=True)(x).detach().numpy()
    fq = tvm_mpq.fake_quant(net, plan, qparams=qp)(x).detach().numpy()
    fp = net(x).detach().numpy()
    scale = max(1.0, float(np.abs(fq).max()))
    # same integer sums, same float32 dequantization: only float rounding of the
    # non-quantized ops (mean, add) may differ
    assert np.abs(y - exact).max() <= 1e-6 * scale
    assert np.abs(y - fq).max() <= 1e-5 * scale
    return cm, y, fq, fp


@pytest.mark.parametrize("bits", [(8, 8), (4, 4), (2, 2)])
def test_uniform_plans_match_reference(net, bits):
    plan = tvm_mpq.QuantPlan.uniform(net, w_bits=bits[0], a_bits=bits[1])
    cm, y, fq, fp = _check(net, plan)
    assert len(cm.sites) == len(plan.layers()) == 4
    if bits == (2, 2):  # quantization really changed the output: the check is not vacuous
        assert np.abs(fq - fp).max() > 1e-3


@pytest.mark.parametrize("seed", [1, 2])
def test_random_mixed_plans_match_reference(net, seed):
    rng = np.random.default_rng(seed)
    plan = tvm_mpq.QuantPlan.uniform(net, w_bits=8, a_bits=8)
    for name in plan.layers():
        if rng.random() < 0.2:
            plan.set(name, w_bits="fp32", a_bits="fp32")
            continue
        wb, ab = int(rng.choice([1, 2, 4, 8])), int(rng.choice([1, 2, 4, 8]))
        variant = str(rng.choice(["int8", "bitserial", "unpack", "swar", "auto"]))
        plan.set(name, w_bits=wb, a_bits=ab, variant=None if variant == "auto" else variant)
    _check(net, plan, seed)


def test_fp32_plan_is_float_model(net):
    plan = tvm_mpq.QuantPlan.fp32(net)
    x = torch.randn(2, 1, 12, 12)
    cm = tvm_mpq.compile(net, x, plan, "host")
    assert cm.sites == []
    np.testing.assert_allclose(cm(x), net(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    # every fp32 layer runs the measured `fp32` variant kernel (what the cost model priced)
    assert [s.name for s in cm.fp32_sites] == [r.name for r in cm.layers if r.quantizable]
    assert all(s.kernel.variant == "fp32" and s.func_name.startswith("qk_fp32_")
               for s in cm.fp32_sites)
    names = {gv.name_hint for gv in cm.mod.functions}
    assert {s.func_name for s in cm.fp32_sites} <= names
    # TVM's own lowering of the same layers gives the same outputs
    relax_cm = tvm_mpq.compile(net, x, plan, "host", fp32_layers="relax")
    assert relax_cm.fp32_sites == []
    np.testing.assert_allclose(cm(x), relax_cm(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fp32_layers"):
        tvm_mpq.compile(net, x, plan, "host", fp32_layers="topi")


def test_compile_needs_calibration(net):
    with pytest.raises(ValueError, match="calib_data"):
        tvm_mpq.compile(net, torch.randn(1, 1, 12, 12), tvm_mpq.QuantPlan.uniform(net), "host")


def test_cross_export_riscv64_library(net, tmp_path):
    plan = tvm_mpq.QuantPlan.uniform(net, w_bits=4, a_bits=4)
    x = torch.randn(1, 1, 12, 12)
    cm = tvm_mpq.compile(net, x, plan, "rv64gc_zbb", calib_data=torch.randn(8, 1, 12, 12))
    # the default rule: bitserial on Zbb, except below 8 input channels per group (the 1-channel
    # stem, depthwise), where a packed word would be mostly empty
    from tvm_mpq.schedules import Conv2dWorkload

    for s in cm.sites:
        wl = s.kernel.workload
        cg = wl.cg if isinstance(wl, Conv2dWorkload) else wl.d
        assert s.kernel.variant == ("bitserial" if cg >= 8 else "unpack"), (s.name, cg)
    path = cm.export_library(str(tmp_path / "model.so"))
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 243  # EM_RISCV


@pytest.mark.parametrize("a_bits", [2, 4, 8])
def test_quantize_te_equals_torch_reference(a_bits):
    """The compiler's quantize pass (tvm_mpq.compiler.ops, also what the overhead
    measurement times) rounds half to even and clamps exactly as LayerQParams does."""
    import tvm
    from tvm import te

    from tvm_mpq.compiler.ops import dequantize_te, quantize_te
    from tvm_mpq.quant.qparams import LayerQParams

    rng = np.random.default_rng(a_bits)
    qp = LayerQParams("l", "conv2d", 8, a_bits, np.float32(0.05), 2 ** a_bits // 3,
                      np.ones(4, np.float32), np.zeros((4, 1), np.int8), None)
    # values on the rounding ties (k + 0.5) * s and far outside the range
    xv = np.concatenate([(np.arange(-40, 40) + 0.5) * 0.05, rng.normal(0, 5, 176)])
    xv = xv.astype(np.float32).reshape(2, 4, 32)
    x = te.placeholder(xv.shape, "float32", "x")
    f = tvm.compile(te.create_prim_func([x, quantize_te(x, qp)]), target="llvm")
    out = tvm.runtime.tensor(np.zeros(xv.shape, np.uint8))
    f(tvm.runtime.tensor(xv), out)
    np.testing.assert_array_equal(out.numpy(), qp.quantize_input(torch.from_numpy(xv)).numpy())

    acc = te.placeholder((2, 4, 3), "int32", "acc")
    corr = te.placeholder((4,), "int32", "corr")
    scale = te.placeholder((4,), "float32", "scale")
    g = tvm.compile(te.create_prim_func([acc, corr, scale, dequantize_te(acc, corr, scale, None)]),
                    target="llvm")
    av = rng.integers(-1000, 1000, (2, 4, 3)).astype(np.int32)
    cv, sv = rng.integers(-50, 50, 4).astype(np.int32), rng.random(4).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((2, 4, 3), np.float32))
    g(*(tvm.runtime.tensor(v) for v in (av, cv, sv)), y)
    np.testing.assert_array_equal(y.numpy(), (av - cv[:, None]).astype(np.float32) * sv[:, None])
