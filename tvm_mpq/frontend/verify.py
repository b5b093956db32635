"""The import is checked before anything is tuned: the fp32 model, imported into Relax and
compiled for the host exactly as a plan is compiled (every layer fp32), must give torch's
output on the example input within float tolerance. A converter that silently produces
garbage (found: TVM 0.27 converts ``x[:, -1]`` with a negative index wrongly, 3.7e26 off torch
in a model reading an LSTM's last step; the importer now rewrites such indices,
:func:`~tvm_mpq.frontend.importer.positive_select_indices`) then stops the run at once
instead of tuning a model that computes something else, and the message names the first
operator whose conversion disagrees (:func:`~tvm_mpq.frontend.diverge.first_diverging_op`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["ImportMismatchError", "verify_import"]


class ImportMismatchError(ValueError):
    """The imported model does not compute what the torch model computes."""


def _first_tensor(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    return torch.as_tensor(out)


def verify_import(model: torch.nn.Module, example_inputs: tuple[Any, ...],
                  rtol: float = 1e-3) -> float:
    """Compile ``model`` in fp32 for the host and compare its output with torch's on
    ``example_inputs``; returns the relative error (max abs difference / max abs output).

    Raises:
        ImportMismatchError: the relative error exceeds ``rtol`` (the message gives both
            maxima and the first operator whose conversion disagrees, when one alone does).
    """
    from tvm_mpq.compiler.compiled import compile as mpq_compile
    from tvm_mpq.quant.plan import QuantPlan

    model = model.eval()
    with torch.no_grad():
        want = _first_tensor(model(*example_inputs)).float().numpy()
    cm = mpq_compile(model, example_inputs, QuantPlan.fp32(model), "host")
    got = np.asarray(cm(example_inputs[0]), dtype=np.float32)
    scale = max(float(np.abs(want).max()), 1e-12)
    if got.shape != want.shape:
        raise ImportMismatchError(f"the model imported into Relax returns shape {got.shape}, "
                                  f"torch {want.shape}")
    diff = np.abs(got.astype(np.float64) - want)
    err = float(np.nan_to_num(diff, nan=np.inf).max()) / scale
    if not err <= rtol:
        from tvm_mpq.frontend.diverge import first_diverging_op

        worst = "NaN in its output" if np.isnan(got).any() else f"max |difference| {diff.max():.3g}"
        op = first_diverging_op(model, example_inputs, rtol)
        hint = (f"; the first operator whose conversion disagrees: {op}" if op else
                "; no single operator's conversion disagrees alone (their composition does)")
        raise ImportMismatchError(
            f"the model imported into Relax does not compute what torch computes on the example "
            f"input: {worst}, max |torch output| {scale:.3g} (relative error {err:.3g} > "
            f"{rtol:g}){hint}. Nothing was tuned.")
    return err
