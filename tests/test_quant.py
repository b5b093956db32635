"""Plan API, layer table, calibration and fake-quant semantics (quick, CPU only)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_mpq.quant.calibration import CLIP_RATIOS, act_qparams, calibrate, quantize_weight
from tvm_mpq.quant.fakequant import QuantConv2d, QuantLinear, fake_quant
from tvm_mpq.quant.folding import fold_bn, set_submodule
from tvm_mpq.quant.plan import FP32, LayerConfig, QuantPlan, resolve_variant
from tvm_mpq.quant.qparams import QuantParams


# ---------------------------------------------------------------- models
class Block(nn.Module):
    """ResNet-style block with attribute conv/bn pairs and a residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn1(self.conv1(x))) + x


class Small(nn.Module):
    """Conv (stride/padding), residual blocks, depthwise, grouped 1x1, two linears."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.b1, self.b2 = Block(8), Block(8)
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
                                nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Conv2d(8, 16, 1, groups=2)
        self.fc = nn.Linear(16, 12)
        self.head = nn.Linear(12, 5, bias=False)

    def forward(self, x):
        y = self.pw(self.dw(self.b2(self.b1(self.stem(x)))))
        return self.head(torch.relu(self.fc(y.mean((2, 3)))))


NAMES = ["stem.0", "b1.conv1", "b2.conv1", "dw.0", "pw", "fc", "head"]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = Small()
    for mod in m.modules():  # non-trivial BN statistics so folding matters
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_model()


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def imported(model):
    from tvm_mpq.frontend.importer import import_model

    return import_model(model, torch.randn(1, 3, 12, 12))


# ---------------------------------------------------------------- plan
def test_plan_uniform_and_fp32(model):
    p = QuantPlan.uniform(model, 4, 8)
    assert p.layers() == NAMES
    assert all(p[n] == LayerConfig(4, 8) for n in NAMES)
    f = QuantPlan.fp32(model)
    assert all(f[n].is_fp32 for n in NAMES) and f.quantized_layers() == []
    assert "w4a8 x7" in repr(p)


def test_plan_set_and_errors(model):
    p = QuantPlan.uniform(model)
    p.set("pw", w_bits=2, a_bits=4).set("fc", w_bits="fp32")
    assert (p["pw"].w_bits, p["pw"].a_bits) == (2, 4)
    assert p["fc"].is_fp32 and p["fc"].a_bits == FP32  # fp32 is per layer
    p.set("fc", w_bits=8, a_bits=8)
    assert not p["fc"].is_fp32
    p.set("head", w_bits=32, a_bits="fp32")
    assert p["head"].is_fp32
    with pytest.raises(ValueError, match="nope"):
        p.set("nope", w_bits=8)
    with pytest.raises(ValueError, match="pw.*3"):
        p.set("pw", w_bits=3)
    with pytest.raises(ValueError, match="variant"):
        p.set("pw", w_bits=8, a_bits=8, variant="magic")
    with pytest.raises(ValueError):
        LayerConfig(8, "fp32")  # weight-only quantization is not a layer config
    with pytest.raises(KeyError, match="nope"):
        p["nope"]


def test_plan_json_roundtrip_and_equality(model, tmp_path):
    p = QuantPlan.uniform(model, 8, 8).set("b1.conv1", 2, 2, "bitserial").set("head", "fp32", 32)
    path = tmp_path / "plan.json"
    p.save(path)
    q = QuantPlan.load(path)
    assert q == p and q.layers() == p.layers()
    assert QuantPlan.from_dict(p.to_dict()) == p
    assert q != QuantPlan.uniform(model, 8, 8)


def test_resolve_variant():
    assert resolve_variant(8, 8, "rv64gc") == "int8"
    assert resolve_variant(8, 2, "rv64gc") == "int8"
    assert resolve_variant(2, 2, "rv64gc") == "unpack"
    assert resolve_variant(2, 2, "rv64gc_zbb") == "bitserial"
    assert resolve_variant(1, 4, "host") == "bitserial"
    assert resolve_variant("fp32", "fp32", "rv64gc") == "fp32"
    # below 8 input channels per group (depthwise, 1-channel stem) a packed word is mostly empty
    assert resolve_variant(2, 2, "rv64gc_zbb", channels_per_group=1) == "unpack"
    assert resolve_variant(2, 2, "rv64gc_zbb", channels_per_group=16) == "bitserial"
    assert resolve_variant(8, 8, "rv64gc_zbb", channels_per_group=1) == "int8"


def test_weight_bytes(model, imported):
    t = imported.table
    # the table is of the unfolded model: only pw and fc have biases
    wn = sum(r.weight_numel for r in t)
    bn = sum(r.bias_numel for r in t)
    assert QuantPlan.fp32(model).weight_bytes(t) == 4 * (wn + bn) == t.total_param_bytes
    p8 = QuantPlan.uniform(model, 8, 8)
    assert p8.weight_bytes(t) == wn + 4 * bn
    p = QuantPlan.uniform(model, 8, 8).set("b1.conv1", 1, 1)  # 576 weights -> 72 bytes
    assert p.weight_bytes(t) == wn - 576 + 72 + 4 * bn


# ---------------------------------------------------------------- layer table
def test_layer_table(imported):
    t = imported.table
    assert [r.name for r in t] == NAMES
    stem, b1, b2, dw, pw, fc, head = t
    assert stem.input_shape == (1, 3, 12, 12) and stem.output_shape == (1, 8, 12, 12)
    assert stem.macs == 8 * 12 * 12 * 3 * 9
    assert dw.is_depthwise and dw.stride == (2, 2) and dw.padding == (1, 1) and dw.groups == 8
    assert dw.output_shape == (1, 8, 6, 6) and dw.macs == 8 * 6 * 6 * 9
    assert pw.groups == 2 and pw.weight_shape == (16, 4, 1, 1) and pw.macs == 16 * 36 * 4
    assert pw.param_bytes == 4 * (16 * 4 + 16)
    assert fc.kind == "linear" and fc.input_shape == (1, 16) and fc.weight_shape == (12, 16)
    assert fc.macs == 16 * 12 and fc.has_bias and not head.has_bias
    assert all(r.quantizable for r in t)
    groups = t.distinct_workloads()
    assert len(groups) == len(t) - 1
    assert groups[1].names == ["b1.conv1", "b2.conv1"] and groups[1].count == 2
    assert b1.layer_shape == b2.layer_shape and hash(b1.layer_shape) == hash(b2.layer_shape)
    assert groups[1].shape == b1.layer_shape and b1.layer_shape != dw.layer_shape
    md = t.to_markdown()
    assert "b2.conv1" in md and "6 distinct workloads" in md
    assert QuantPlan.uniform(imported).layers() == NAMES


def test_imported_module_runs(model, imported):
    import tvm
    from tvm import relax

    x = torch.randn(1, 3, 12, 12)
    vm = relax.VirtualMachine(tvm.compile(imported.mod, target="llvm"), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    y = (out if hasattr(out, "numpy") else out[0]).numpy()
    np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-5)
    assert len(imported.call_site_vars) == len(imported.table)


def test_unsupported_operator_error():
    from tvm_mpq.frontend.importer import UnsupportedOperatorError, import_model

    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.erfinv(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.odd = Odd()

        def forward(self, x):
            return self.odd(torch.tanh(self.conv(x)))

    with pytest.raises(UnsupportedOperatorError, match="erfinv.*'odd'") as e:
        import_model(Net().eval(), torch.randn(1, 2, 4, 4))
    assert e.value.op == "erfinv.default" and e.value.module == "odd"


def test_non_quantizable_layer_warns():
    from tvm_mpq.frontend.importer import NonQuantizableLayerWarning, import_model

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                        nn.ConvTranspose2d(4, 2, 2, stride=2)).eval()
    hooked: list[str] = []
    with pytest.warns(NonQuantizableLayerWarning) as rec:
        t = import_model(net, torch.randn(1, 3, 8, 8),
                         convert_hook=lambda info, node, imp: hooked.append(info.name)).table
    assert hooked == ["0", "1", "2"]  # hook returned None: default conversion kept
    msgs = [str(w.message) for w in rec if w.category is NonQuantizableLayerWarning]
    assert len(msgs) == 2 and "'1'" in msgs[0] and "dilation" in msgs[0]
    assert [r.quantizable for r in t] == [True, False, False]
    assert t[2].reason == "transposed convolution"
    assert QuantPlan.uniform(t).layers() == ["0"]
    assert QuantPlan.uniform(net).layers() == ["0"]


# ---------------------------------------------------------------- quantizers
@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), seed=st.integers(0, 10_000),
       shape=st.sampled_from([(4, 3, 3, 3), (6, 1, 3, 3), (5, 7)]))
def test_quantize_weight_range_and_mse(bits, seed, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    q, s = quantize_weight(w, bits)
    assert q.dtype == np.int8 and q.shape == tuple(shape) and s.dtype == np.float32
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    qm, sm = quantize_weight(w, bits, clip="max")
    err = lambda q, s: ((w.numpy() - q * s.reshape(-1, *[1] * (w.dim() - 1))) ** 2)  # noqa: E731
    # MSE clipping never loses to no clipping (r = 1 is in the grid), per channel
    assert np.all(err(q, s).reshape(shape[0], -1).sum(1)
                  <= err(qm, sm).reshape(shape[0], -1).sum(1) * (1 + 1e-6) + 1e-12)
    assert 1.0 in CLIP_RATIOS


def test_quantize_weight_binary():
    w = torch.randn(4, 3, 3, 3)
    w[0, 0, 0, 0] = 0.0
    q, s = quantize_weight(w, 1)
    assert set(np.unique(q)) <= {-1, 1} and q[0, 0, 0, 0] == 1
    np.testing.assert_allclose(s, w.abs().flatten(1).mean(1).numpy(), rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(lo=st.floats(-10, 10), span=st.floats(0, 20), bits=st.sampled_from([1, 2, 4, 8]))
def test_act_qparams(lo, span, bits):
    s, z = act_qparams(lo, lo + span, bits)
    assert s > 0 and 0 <= z <= 2**bits - 1 and isinstance(z, int)
    if lo >= 0:
        assert z == 0


# ---------------------------------------------------------------- fake quant
def test_fold_bn(model, data):
    f = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in f.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    torch.testing.assert_close(f(data), model(data), atol=1e-5, rtol=1e-5)
    assert fold_bn(f).state_dict().keys() == f.state_dict().keys()


def test_set_submodule_replaces_by_dotted_name(model):
    m = copy.deepcopy(model)  # the fixture is shared
    names = [n for n, _ in m.named_modules() if n]
    for name in (names[0], max(names, key=lambda n: n.count("."))):  # top level and deepest
        new = nn.Identity()
        set_submodule(m, name, new)
        assert m.get_submodule(name) is new
    with pytest.raises(AttributeError):
        set_submodule(m, "no_such_parent.child", nn.Identity())


def test_fp32_plan_equals_folded(model, data):
    fq = fake_quant(model, QuantPlan.fp32(model))
    assert torch.equal(fq(data), fold_bn(model)(data))


def test_w8a8_close_to_fp32(model, data):
    y = model(data)
    yq = fake_quant(model, QuantPlan.uniform(model, 8, 8), data)(data)
    assert ((yq - y).norm() / y.norm()) < 0.03


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (4, 4), (2, 2), (1, 1), (2, 8), (8, 1)])
def test_fake_quant_integer_semantics(model, data, w_bits, a_bits):
    plan = QuantPlan.uniform(model, w_bits, a_bits)
    qp = calibrate(model, plan, data)
    fq = fake_quant(model, plan, qparams=qp)
    fq_int = fake_quant(model, plan, qparams=qp, integer_accumulate=True)
    layers = {n: m for n, m in fq.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    assert sorted(layers) == sorted(NAMES)
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.__setitem__(n, a[0]))
             for n, m in layers.items()]
    with torch.no_grad():
        fq(data)
    for h in hooks:
        h.remove()
    for n, m in layers.items():
        p = qp[n]
        lo, hi = p.w_range
        assert p.w_q.min() >= lo and p.w_q.max() <= hi
        if w_bits == 1:
            assert set(np.unique(p.w_q)) <= {-1, 1}
            # 1-bit weights dequantize to +-scale per channel
            wf = m.w_fq.flatten(1).abs()
            torch.testing.assert_close(wf, torch.from_numpy(p.w_scale)[:, None].expand_as(wf))
        a_q = m.quantize_input(seen[n])
        assert torch.equal(a_q, a_q.round()) and a_q.min() >= 0 and a_q.max() <= 2**a_bits - 1
        assert torch.unique(a_q).numel() <= 2**a_bits
        assert 0 <= p.a_zero_point <= 2**a_bits - 1
        # the layer output equals the integer formula s_a*s_w*sum((a_q-z)*w_q) + bias
        exact = fq_int.get_submodule(n)
        assert exact.integer_accumulate
        torch.testing.assert_close(m(seen[n]), exact(seen[n]), atol=1e-5, rtol=1e-5)


def test_fake_quant_matches_explicit_integer_conv(model, data):
    """y = s_a * s_w[k] * sum((a_q - z) * w_q) + bias, padding a_q with z."""
    plan = QuantPlan.fp32(model).set("dw.0", w_bits=4, a_bits=4).set("stem.0", 8, 8)
    fq = fake_quant(model, plan, data)
    for name in ("stem.0", "dw.0"):
        m = fq.get_submodule(name)
        x = data[:4] if name == "stem.0" else torch.relu(torch.randn(4, 8, 12, 12))
        a_q = m.quantize_input(x).double()
        z = m.a_zero_point
        a_pad = torch.nn.functional.pad(a_q, (1, 1, 1, 1), value=float(z)) - z  # pad with z
        acc = torch.nn.functional.conv2d(a_pad, m.w_q.double(), None, m.stride, 0, 1, m.groups)
        y = acc * (m.a_scale.double() * m.w_scale.double()).view(1, -1, 1, 1)
        if m.bias is not None:
            y = y + m.bias.double().view(1, -1, 1, 1)
        torch.testing.assert_close(m(x).double(), y, atol=1e-5, rtol=1e-5)
    assert isinstance(fq.get_submodule("pw"), nn.Conv2d)  # fp32 layer stays float


def test_qparams_save_load_and_reuse(model, data, tmp_path):
    plan = QuantPlan.uniform(model, 4, 4).set("fc", "fp32", "fp32")
    qp = calibrate(model, plan, [data[:16], (data[16:], None)])
    assert "fc" not in qp and len(qp) == len(NAMES) - 1
    qp.save(tmp_path / "qp")
    back = QuantParams.load(tmp_path / "qp.npz")
    for n in qp.names():
        a, b = qp[n], back[n]
        assert (a.a_scale, a.a_zero_point, a.w_bits, a.a_bits) == \
            (b.a_scale, b.a_zero_point, b.w_bits, b.a_bits)
        assert np.array_equal(a.w_q, b.w_q) and np.array_equal(a.w_scale, b.w_scale)
        assert (a.bias is None) == (b.bias is None)
        assert b.w_q.dtype == np.int8 and b.w_scale.dtype == np.float32
    assert qp["stem.0"].bias is not None  # BN-folded bias
    y1 = fake_quant(model, plan, qparams=qp)(data)
    y2 = fake_quant(model, plan, qparams=back)(data)
    assert torch.equal(y1, y2)
    with pytest.raises(ValueError, match="w4a4.*w8a8"):
        fake_quant(model, QuantPlan.uniform(model, 8, 8).set("fc", "fp32"), qparams=qp)
    with pytest.raises(ValueError, match="calib_data"):
        fake_quant(model, plan)


def test_calibration_methods(model, data):
    plan = QuantPlan.uniform(model, 2, 2)
    for method in ("minmax", "percentile", "mse"):
        qp = calibrate(model, plan, data, act_method=method)
        for n in NAMES:
            assert qp[n].a_scale > 0
    mm = calibrate(model, plan, data, act_method="minmax")
    ms = calibrate(model, plan, data, act_method="mse")
    assert all(ms[n].a_scale <= mm[n].a_scale * (1 + 1e-6) for n in NAMES)  # mse only clips


def test_calibration_is_layer_local(model, data):
    """A layer's parameters do not depend on how the plan quantizes the other layers."""
    uni = calibrate(model, QuantPlan.uniform(model, 4, 4), data)
    mixed_plan = QuantPlan.uniform(model, 8, 8).set("dw.0", 4, 4).set("fc", "fp32")
    mixed = calibrate(model, mixed_plan, data)
    a, b = uni["dw.0"], mixed["dw.0"]
    assert (a.a_scale, a.a_zero_point) == (b.a_scale, b.a_zero_point)
    assert np.array_equal(a.w_q, b.w_q) and np.array_equal(a.w_scale, b.w_scale)
    assert np.array_equal(a.bias, b.bias)


def test_bias_correction_and_legacy(model, data):
    from tvm_mpq.quant.calibration import LEGACY

    plan = QuantPlan.uniform(model, 4, 4)
    folded = dict(fold_bn(model).named_modules())
    legacy = calibrate(model, plan, data, **LEGACY)
    new = calibrate(model, plan, data)
    nobc = calibrate(model, plan, data, bias_correction=False)
    for n in NAMES:
        b = folded[n].bias
        if b is None:
            assert legacy[n].bias is None and nobc[n].bias is None
            assert new[n].bias is not None and new[n].bias.dtype == np.float32  # created
        else:
            assert np.array_equal(legacy[n].bias, b.detach().numpy())
            assert np.array_equal(nobc[n].bias, b.detach().numpy())
    # the corrected model's mean output shift on the calibration data is smaller
    ref = fold_bn(model)(data)
    shift = {k: (fake_quant(model, plan, qparams=q)(data) - ref).mean(0).abs().mean()
             for k, q in (("nobc", nobc), ("new", new))}
    assert shift["new"] < shift["nobc"]
    with pytest.raises(ValueError, match="act_method"):
        calibrate(model, plan, data, act_method="bogus")


def test_adaround_keeps_contract(model, data):
    plan = QuantPlan.uniform(model, 2, 4)
    qp = calibrate(model, plan, data, adaround_iters=20, opt_images=16)
    base = calibrate(model, plan, data, opt_images=16)
    for n in NAMES:
        lo, hi = qp[n].w_range
        assert qp[n].w_q.dtype == np.int8 and qp[n].w_q.min() >= lo and qp[n].w_q.max() <= hi
        # rounding changes by at most one step from the nearest-rounded weight, same scale
        assert np.array_equal(qp[n].w_scale, base[n].w_scale)
        assert np.abs(qp[n].w_q.astype(int) - base[n].w_q.astype(int)).max() <= 1
    fake_quant(model, plan, qparams=qp)(data)
