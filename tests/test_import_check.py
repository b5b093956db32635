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
    """A conv feature extractor read as a sequence by an LSTM (TVM 0.27 converts it wrongly)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.lstm = nn.LSTM(24, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        out, _ = self.lstm(h.permute(0, 2, 1, 3).reshape(x.shape[0], 6, 24))
        return self.fc(out[:, -1])


def test_correct_import_passes():
    torch.manual_seed(0)
    assert verify_import(SmallNet(), (torch.randn(1, 1, 12, 12),)) < 1e-5


def test_wrong_conversion_stops_tune_before_any_stage(tmp_path):
    torch.manual_seed(0)
    m, x = ConvLSTM(), torch.randn(8, 1, 8, 8)
    with pytest.raises(ImportMismatchError, match="does not compute what torch computes.*LSTM"):
        verify_import(m, (x[:1],))
    with pytest.raises(ImportMismatchError, match="Nothing was tuned"):
        tvm_mpq.tune(m, target="riscv", calib_data=x, eval_fn=lambda f: 1.0,
                     workdir=str(tmp_path), progress=False)
    assert not (tmp_path / "sensitivity.json").exists()
    assert not (tmp_path / "stages" / "import.json").exists()
