"""The import is verified against torch before anything is tuned (issue 14)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn as nn

import tvm_mpq
from tvm_mpq.frontend.verify import ImportMismatchError, verify_import

sys.path.insert(0, os.path.dirname(__file__))
from test_compile import SmallNet  # noqa: E402


class ConvLSTM(nn.Module):
    """A conv feature extractor read as a sequence by an LSTM, classified from its last step
    (``out[:, -1]``: TVM 0.27 converts the negative index wrongly; the importer rewrites it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.lstm = nn.LSTM(24, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        out, _ = self.lstm(h.permute(0, 2, 1, 3).reshape(x.shape[0], 6, 24))
        return self.fc(out[:, -1])


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc((h * torch.sigmoid(h)).mean((2, 3)))


def test_correct_import_passes():
    torch.manual_seed(0)
    assert verify_import(SmallNet(), (torch.randn(1, 1, 12, 12),)) < 1e-5


def test_negative_select_is_converted_right():
    """The LSTM model that TVM 0.27 got wrong (3.7e26 off) imports exactly once the
    importer rewrites ``out[:, -1]`` to a positive index."""
    torch.manual_seed(0)
    assert verify_import(ConvLSTM(), (torch.randn(1, 1, 8, 8),)) < 1e-5


@pytest.fixture
def broken_sigmoid(monkeypatch):
    """A converter bug, simulated: TVM's sigmoid converter computes tanh."""
    from tvm import relax
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    original = ExportedProgramImporter.create_convert_map

    def create_convert_map(self):
        m = original(self)
        m["sigmoid.default"] = lambda node: self.block_builder.emit(
            relax.op.tanh(self.env[node.args[0]]))
        return m

    monkeypatch.setattr(ExportedProgramImporter, "create_convert_map", create_convert_map)


def test_wrong_conversion_is_named_and_stops_tune(tmp_path, broken_sigmoid):
    """The mismatch names the first operator whose conversion disagrees, and tune() stops
    before any stage."""
    torch.manual_seed(0)
    m, x = Gated(), torch.randn(8, 1, 8, 8)
    with pytest.raises(ImportMismatchError, match=r"does not compute what torch computes.*first "
                       r"operator whose conversion disagrees: aten.sigmoid.default \(node "
                       r"'sigmoid', in module '<top level>'\)"):
        verify_import(m, (x[:1],))
    with pytest.raises(ImportMismatchError, match="Nothing was tuned"):
        tvm_mpq.tune(m, target="riscv", calib_data=x, eval_fn=lambda f: 1.0,
                     workdir=str(tmp_path), progress=False)
    assert not (tmp_path / "sensitivity.json").exists()
    assert not (tmp_path / "stages" / "import.json").exists()
