"""Integer-only inference: the compiled model equals fake_quant(..., integer_only=True) bit for
bit on random mixed plans (every variant and bit pair, residual adds, depthwise layers, odd
channel counts, a value read by two layers with different parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tvm_mpq
from tvm_mpq.quant import integer as I
from tvm_mpq.quant.calibration import calibrate

BITS = (1, 2, 4, 8)
VARIANTS = ("int8", "bitserial", "unpack", "swar", None)


class IntNet(nn.Module):
    """stem (ReLU6) -> depthwise s2 (ReLU) -> x + pointwise(x) -> relu(a(x) + b(x)) -> mean -> fc.

    ``a`` and ``b`` read the same block output: with different input parameters one of them
    requantizes it (integer to integer)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 7, 3, 1, 1), nn.BatchNorm2d(7), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(7, 7, 3, 2, 1, groups=7), nn.BatchNorm2d(7), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(7, 7, 1, bias=False), nn.BatchNorm2d(7))
        self.a = nn.Sequential(nn.Conv2d(7, 5, 3, 1, 1), nn.BatchNorm2d(5))
        self.b = nn.Sequential(nn.Conv2d(7, 5, 1), nn.BatchNorm2d(5))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        x = x + self.pw(x)
        y = self.relu(self.a(x) + self.b(x))
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    m = IntNet().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 1, 10, 10, generator=g), torch.randn(32, 1, 10, 10, generator=g)


def _plan(net: nn.Module, choices: list[tuple[int, int, str | None]], fp32: set[int] = frozenset()):
    plan = tvm_mpq.QuantPlan.uniform(net, w_bits=8, a_bits=8)
    for i, name in enumerate(plan.layers()):
        if i in fp32:
            plan.set(name, w_bits="fp32", a_bits="fp32")
        else:
            wb, ab, v = choices[i % len(choices)]
            plan.set(name, w_bits=wb, a_bits=ab, variant=v)
    return plan


def _codes(x: torch.Tensor, quant: tuple[float, int], bits: int = 8) -> np.ndarray:
    s, z = quant
    return np.clip(np.round(x.numpy() / np.float32(s)) + z, 0, 2**bits - 1).astype(np.uint8)


layer_choice = st.tuples(st.sampled_from(BITS), st.sampled_from(BITS), st.sampled_from(VARIANTS))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choices=st.lists(layer_choice, min_size=6, max_size=6))
def test_integer_io_codes_equal_reference(net, data, choices):
    x, calib = data
    plan = _plan(net, choices)
    qp = calibrate(net, plan, calib)
    cm = tvm_mpq.compile(net, x, plan, "host", qparams=qp, integer_io=True)
    ref = tvm_mpq.fake_quant(net, plan, qparams=qp, integer_only=True, integer_io=True)
    xq = _codes(x, cm.input_quant, cm.program.input_spec.bits)
    got = cm(xq)
    want = ref(torch.from_numpy(xq)).numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert cm.output_quant == ref.output_quant


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choices=st.lists(layer_choice, min_size=6, max_size=6),
       fp32=st.sets(st.integers(0, 5), max_size=3))
def test_mixed_plans_with_fp32_layers_match_reference(net, data, choices, fp32):
    """Boundaries to fp32 layers dequantize once; the float parts may differ by float
    summation order only (fp32 kernels vs torch), the integer parts are exact."""
    x, calib = data
    plan = _plan(net, choices, fp32)
    qp = calibrate(net, plan, calib)
    cm = tvm_mpq.compile(net, x, plan, "host", qparams=qp)
    want = tvm_mpq.fake_quant(net, plan, qparams=qp, integer_only=True)(x).numpy()
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(cm(x) - want).max() <= 1e-4 * scale


def test_program_folds_activations_and_keeps_glue_integer(net, data):
    x, calib = data
    plan = tvm_mpq.QuantPlan.uniform(net, w_bits=8, a_bits=8)
    qp = calibrate(net, plan, calib)
    cm = tvm_mpq.compile(net, x, plan, "host", qparams=qp, integer_io=True)
    kinds = [n.kind for n in cm.program.nodes.values()]
    assert kinds.count("add") == 2 and kinds.count("mean") == 1 and kinds.count("layer") == 6
    # stem's ReLU6, dw's ReLU and the relu after the second add are clamp bounds, not ops
    assert "clamp" not in kinds
    stem = cm.program.nodes[cm.program.layer_nodes["stem.0"]]
    assert stem.lo == stem.spec.zero_point  # ReLU folded: nothing below the code of 0.0
    # no float arithmetic anywhere between input and output
    for gv, func in cm.mod.functions.items():
        if isinstance(func, tvm_mpq.compiler.compiled.tvm.tirx.PrimFunc):
            assert "float" not in func.script(), gv.name_hint


def test_integer_only_accuracy_close_to_float_glue(net, data):
    x, calib = data
    plan = tvm_mpq.QuantPlan.uniform(net, w_bits=8, a_bits=8)
    qp = calibrate(net, plan, calib)
    xs = torch.randn(64, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    fq = tvm_mpq.fake_quant(net, plan, qparams=qp)(xs)
    iq = tvm_mpq.fake_quant(net, plan, qparams=qp, integer_only=True)(xs)
    scale = float(fq.abs().max())
    assert float((fq - iq).abs().max()) < 0.1 * scale  # same quantization, other rounding
    assert not torch.equal(fq, iq)  # the integer path really is a different computation


def test_float_glue_still_available(net, data):
    x, calib = data
    plan = tvm_mpq.QuantPlan.uniform(net, w_bits=4, a_bits=4)
    qp = calibrate(net, plan, calib)
    cm = tvm_mpq.compile(net, x, plan, "host", qparams=qp, glue="float")
    assert cm.glue == "float" and cm.program is None and cm.input_quant is None
    exact = tvm_mpq.fake_quant(net, plan, qparams=qp, integer_accumulate=True)(x).numpy()
    assert np.abs(cm(x) - exact).max() <= 1e-5 * max(1.0, float(np.abs(exact).max()))


def test_integer_io_errors(net, data):
    x, calib = data
    plan = _plan(net, [(8, 8, None)], fp32={5})
    qp = calibrate(net, plan, calib)
    with pytest.raises(ValueError, match="needs integer outputs"):
        tvm_mpq.compile(net, x, plan, "host", qparams=qp, integer_io=True)
    with pytest.raises(ValueError, match="needs glue='integer'"):
        tvm_mpq.compile(net, x, plan, "host", qparams=qp, integer_io=True, glue="float")
    with pytest.raises(ValueError, match="glue="):
        tvm_mpq.compile(net, x, plan, "host", qparams=qp, glue="fixed")
    plan8 = tvm_mpq.QuantPlan.uniform(net, w_bits=8, a_bits=8)
    qp8 = calibrate(net, plan8, calib)
    qp8.tensors = {}
    with pytest.raises(ValueError, match="no observed range"):
        tvm_mpq.compile(net, x, plan8, "host", qparams=qp8)


def test_fixed_point_parameters():
    a, b, out = I.QSpec(0.02, 10, 8), I.QSpec(0.05, 3, 8), I.QSpec(0.04, 128, 8)
    ma, mb, k, t = I.add_params(a, b, out)
    qa, qb = np.arange(256), np.arange(256)[::-1]
    got = (qa * ma + qb * mb + k) >> t
    want = np.floor((qa - 10) * 0.5 + (qb - 3) * 1.25 + 0.5) + 128  # one rounding, half up
    assert np.abs(got - want).max() <= 1  # float32 scales: the multipliers are not exact
    assert np.mean(got != want) < 0.02
    m, k, t = I.mean_params(a, out, 49)
    q = np.full(49, 200)
    assert int((q.sum() * m + k) >> t) == int(np.floor((200 - 10) * 0.02 / 0.04 + 0.5)) + 128
    assert I.clamp_codes(out, 0.0, 6.0) == (128, 255)
    assert I.clamp_codes(I.QSpec(0.1, 0, 4), 0.0, 0.6) == (0, 6)


def test_dyadic_forms_agree_with_the_definition():
    import tvm
    from tvm import te

    from tvm_mpq.compiler.dyadic_ops import dyadic_consts, requantize_dyadic_te
    from tvm_mpq.quant.dyadic import dyadic_params, requantize_dyadic_ref

    rng = np.random.default_rng(0)
    real = 10 ** rng.uniform(-9, -0.5, 16)  # tiny multipliers hit the capped shift
    m, k, t = dyadic_params(real, rng.integers(-5000, 5000, 16), 77)
    assert t.max() <= 54 and t.min() >= 32
    x = rng.integers(-(2**31), 2**31 - 1, (2, 16, 5), dtype=np.int64).astype(np.int32)
    ref = requantize_dyadic_ref(x, m, k, t, 0, 255)
    for form in ("wide", "hi32"):
        cs = dyadic_consts(m, k, t, form)
        xp = te.placeholder(x.shape, "int32", "x")
        ph = [te.placeholder(c.shape, str(c.dtype), f"c{i}") for i, c in enumerate(cs)]
        f = tvm.compile(te.create_prim_func(
            [xp, *ph, requantize_dyadic_te(xp, ph, 0, 255, "uint8", 1, form)]), target="llvm")
        out = tvm.runtime.tensor(np.zeros(x.shape, np.uint8))
        f(tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in cs], out)
        np.testing.assert_array_equal(out.numpy(), ref)
