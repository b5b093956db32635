"""torch.export programs as plannable modules (:mod:`tvm_mpq.frontend.exported`): the lifted
module computes what the program computes, with the original layer names."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_mpq.frontend.exported import load_exported, module_from_exported
from tvm_mpq.frontend.importer import quantizable_modules


class Block(nn.Module):
    """ResNet style: conv / bn as attributes, a conv called twice, a functional conv with a
    computed weight (stays an ATen op), a BN without affine parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 1)
        self.scale = nn.Parameter(torch.rand(4, 4, 1, 1))
        self.bn2 = nn.BatchNorm2d(4, affine=False)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.shared(self.shared(y)) + torch.nn.functional.conv2d(y, self.scale * 2)
        return self.fc(self.bn2(y).mean((2, 3)))


def _randomize_bn(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


def test_lifted_block_keeps_names_and_values(tmp_path):
    torch.manual_seed(0)
    m = _randomize_bn(Block())
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match="static batch size 1: calibration and evaluation"):
        module_from_exported(torch.export.export(m, (x[:1],)))
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, tmp_path / "b.pt2")
    lifted = load_exported(str(tmp_path / "b.pt2"))
    mods = dict(lifted.named_modules())
    assert isinstance(mods["conv1"], nn.Conv2d) and isinstance(mods["bn1"], nn.BatchNorm2d)
    assert isinstance(mods["shared"], nn.Conv2d) and isinstance(mods["fc"], nn.Linear)
    assert isinstance(mods["bn2"], nn.BatchNorm2d) and not mods["bn2"].affine
    # the conv with a computed weight is not a layer (it stays fp32); the shared one is one
    assert quantizable_modules(lifted) == ["conv1", "shared", "fc"]
    calls = [n.target for n in lifted.graph.nodes if n.op == "call_module"]
    assert calls.count("shared") == 2
    with torch.no_grad():
        assert torch.equal(lifted(x), ep.module()(x))
        x5 = torch.randn(5, 4, 6, 6)  # another batch size
        assert torch.allclose(lifted(x5), m(x5), atol=1e-6)
    lifted.train()  # a plain GraphModule: the tuner switches modes and deep-copies it


@settings(max_examples=15, deadline=None)
@given(cin=st.integers(1, 6), mult=st.integers(1, 3), k=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 2), pad=st.integers(0, 2), depthwise=st.booleans(),
       bias=st.booleans(), hw=st.integers(5, 9))
def test_lifted_conv_equals_the_program(cin, mult, k, stride, pad, depthwise, bias, hw):
    """Random conv -> bn -> relu -> linear nets: the lifted module gives the program's
    output bit for bit, and every layer is an nn module again."""
    torch.manual_seed(cin * 100 + k)
    cout = cin * mult
    groups = cin if depthwise else 1
    conv = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=bias)
    m = _randomize_bn(nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.Flatten(),
                                    nn.LazyLinear(2)))
    x = torch.randn(2, cin, hw, hw)
    if (hw + 2 * pad - k) < 0:
        return
    m(x)  # materialise the lazy linear
    ep = torch.export.export(m.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    lifted = module_from_exported(ep)
    got = dict(lifted.named_modules())
    assert isinstance(got["0"], nn.Conv2d) and got["0"].groups == groups
    assert tuple(got["0"].stride) == (stride, stride) and tuple(got["0"].padding) == (pad, pad)
    assert isinstance(got["1"], nn.BatchNorm2d) and isinstance(got["4"], nn.Linear)
    with torch.no_grad():
        assert torch.equal(lifted(x), ep.module()(x))
