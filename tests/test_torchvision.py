"""Architectures nobody in this project wrote: torchvision's classification models (random
weights, 3x32x32) through import, the import check, a random mixed plan compiled with the
integer glue against its torch reference, and the tuner's .pt2 path. Skipped, with the reason,
when torchvision is not installed (scripts/setup.sh installs it into .venv/optional)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from tvm_mpq.zoo.torchvision_zoo import ARCHITECTURES, TorchvisionUnavailable, import_torchvision

try:
    import_torchvision()
    _MISSING = ""
except TorchvisionUnavailable as e:
    _MISSING = str(e)

pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_imports_and_compiles_exactly(arch, tmp_path):
    """Every conv / linear is a quantizable layer; the fp32 import matches torch; the random
    mixed plan compiled for the host equals its integer-only torch reference up to float
    rounding of the output dequantization, while differing from fp32 (it is quantized)."""
    from torchvision_archs import check_architecture

    row = check_architecture(arch, 32, None, str(tmp_path))
    assert row["quantizable"] == row["layers"] > 10 and not row["fp32"]
    assert row["import_rel_err"] < 1e-5
    assert row["mixed_rel_err"] < 1e-5
    assert row["mixed_vs_fp32"] > 1e-5  # (beyond float rounding: the plan is quantized)


def test_exported_torchvision_model_keeps_its_layer_names():
    """A torchvision model saved as a torch.export program plans under the same names."""
    from tvm_mpq.frontend.exported import module_from_exported
    from tvm_mpq.frontend.importer import quantizable_modules
    from tvm_mpq.zoo.torchvision_zoo import torchvision_model

    m = torchvision_model("mobilenet_v3_small")
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    lifted = module_from_exported(ep)
    assert quantizable_modules(lifted) == quantizable_modules(m)
    with torch.no_grad():
        assert torch.allclose(lifted(x), m(x), atol=1e-6)
