"""Torch reference of a quantization plan (fake quantization).

A quantized layer ``L`` with input ``x`` computes, in float32::

    a_q  = clamp(round_half_even(x / s_a) + z, 0, 2^a - 1)     # true division
    x_fq = (a_q - z) * s_a
    w_fq = w_q * s_w[k]                                          # per output channel
    y    = conv2d / linear(x_fq, w_fq) + bias[k]

which equals ``s_a * s_w[k] * sum((a_q - z) * w_q) + bias[k]`` up to float
rounding. Zero padding of ``x_fq`` is zero padding of ``a_q`` with ``z``
(quantize(0) = z). With ``integer_accumulate=True`` the layer instead computes
``float32(acc) * float32(s_a * s_w[k]) + bias[k]`` with ``acc`` the exact
integer sum (float64 accumulation): bit-exact with an int32 kernel that
dequantizes in that order.

Layers that are fp32 or not in the plan, and everything between layers
(ReLU, add, pooling), stay float. BN is folded first (:func:`fold_bn`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_mpq.quant.calibration import calibrate
from tvm_mpq.quant.folding import fold_bn, set_submodule
from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.quant.qparams import LayerQParams, QuantParams

__all__ = ["QuantConv2d", "QuantLinear", "fake_quant", "fold_bn"]


class _QuantLayer(nn.Module):
    """Shared state of the quantized wrappers (buffers travel with .to())."""

    def __init__(self, qp: LayerQParams, weight_shape: tuple[int, ...],
                 integer_accumulate: bool) -> None:
        super().__init__()
        if tuple(qp.w_q.shape) != tuple(weight_shape):
            raise ValueError(f"layer {qp.name!r}: quantized weight shape {qp.w_q.shape} != "
                             f"module weight shape {tuple(weight_shape)}")
        self.name, self.w_bits, self.a_bits = qp.name, qp.w_bits, qp.a_bits
        self.a_zero_point, self.a_qmax = int(qp.a_zero_point), qp.a_qmax
        self.integer_accumulate = integer_accumulate
        shape = (-1,) + (1,) * (qp.w_q.ndim - 1)
        w_q = torch.from_numpy(qp.w_q.astype(np.float32))
        w_scale = torch.from_numpy(qp.w_scale.astype(np.float32))
        self.register_buffer("a_scale", torch.tensor(qp.a_scale, dtype=torch.float32))
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_fq", w_q * w_scale.view(shape))
        self.register_buffer("bias", None if qp.bias is None else torch.from_numpy(qp.bias.copy()))
        # dequantization multiplier of the integer path, rounded to float32 once
        self.register_buffer("out_scale", (self.a_scale * w_scale).float())

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Integer activation codes ``a_q`` (as a float32 tensor)."""
        return torch.clamp(torch.round(x.float() / self.a_scale) + self.a_zero_point,
                           0, self.a_qmax)

    def _dequant_out(self, acc: torch.Tensor, ch_dim: int) -> torch.Tensor:
        shape = [1] * acc.dim()
        shape[ch_dim] = -1
        y = acc.float() * self.out_scale.view(shape)
        return y if self.bias is None else y + self.bias.view(shape)

    def extra_repr(self) -> str:
        return (f"w{self.w_bits}a{self.a_bits}, s_a={float(self.a_scale):.4g}, "
                f"z={self.a_zero_point}")


class QuantConv2d(_QuantLayer):
    """Fake-quantized ``nn.Conv2d`` (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d, qp: LayerQParams, integer_accumulate: bool = False):
        super().__init__(qp, tuple(conv.weight.shape), integer_accumulate)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.padding_mode = conv.padding_mode
        self._rpad = getattr(conv, "_reversed_padding_repeated_twice", None)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # same as nn.Conv2d: explicit pad, then no padding
            x = F.pad(x, self._rpad, mode=self.padding_mode)
            return F.conv2d(x, w, None, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = self.quantize_input(x) - self.a_zero_point
        if self.integer_accumulate:  # integer-valued float64: exact sums
            return self._dequant_out(self._conv(centered.double(), self.w_q.double()), 1)
        y = self._conv(centered * self.a_scale, self.w_fq)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class QuantLinear(_QuantLayer):
    """Fake-quantized ``nn.Linear`` (see the module docstring)."""

    def __init__(self, linear: nn.Linear, qp: LayerQParams, integer_accumulate: bool = False):
        super().__init__(qp, tuple(linear.weight.shape), integer_accumulate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = self.quantize_input(x) - self.a_zero_point
        if self.integer_accumulate:
            return self._dequant_out(F.linear(centered.double(), self.w_q.double()), -1)
        return F.linear(centered * self.a_scale, self.w_fq, self.bias)


def fake_quant(
    model: nn.Module,
    plan: QuantPlan,
    calib_data: Any = None,
    qparams: QuantParams | None = None,
    *,
    integer_accumulate: bool = False,
    integer_only: bool = False,
    integer_io: bool = False,
    **calib_kwargs: Any,
) -> nn.Module:
    """Reference model of ``plan``: a BN-folded copy with planned layers fake-quantized.

    Args:
        model: the float model (not modified).
        plan: per-layer bits; fp32 layers and layers not in the plan stay float.
        calib_data: calibration inputs, used when ``qparams`` is None
            (see :func:`~tvm_mpq.quant.calibration.calibrate`).
        qparams: precomputed parameters (e.g. the ones the TVM model uses);
            their bits must match the plan.
        integer_accumulate: exact integer accumulation (see module docstring).
        integer_only: return the integer-only reference instead
            (:class:`~tvm_mpq.quant.intref.IntegerReference`): quantized layers requantize
            to their consumers' codes with fixed-point multipliers, and adds, pooling and
            activations between them run on integers (:mod:`tvm_mpq.quant.integer`), exactly
            as :func:`tvm_mpq.compile` with the default integer glue.
        integer_io: with ``integer_only``: the reference takes input codes and returns output
            codes (as ``compile(..., integer_io=True)``).
        **calib_kwargs: forwarded to ``calibrate``.

    Returns:
        An eval-mode ``nn.Module`` whose quantized layers are
        :class:`QuantConv2d` / :class:`QuantLinear`.
    """
    folded = fold_bn(model)
    names = plan.quantized_layers()
    if qparams is None and names:
        if calib_data is None:
            raise ValueError("fake_quant needs calib_data or qparams for a plan with quantized "
                             f"layers ({len(names)} of {len(plan)})")
        qparams = calibrate(folded, plan, calib_data, **calib_kwargs)
    mods = dict(folded.named_modules())
    if integer_only:
        from tvm_mpq.quant.intref import IntegerReference

        _check_qparams(names, mods, plan, qparams)
        return IntegerReference(folded, {n: plan[n] for n in names}, qparams or QuantParams(),
                                integer_io)
    if integer_io:
        raise ValueError("integer_io=True needs integer_only=True")
    _check_qparams(names, mods, plan, qparams)
    for n in names:
        qp = qparams[n]
        m = mods[n]
        if isinstance(m, nn.Conv2d):
            new: nn.Module = QuantConv2d(m, qp, integer_accumulate)
        elif isinstance(m, nn.Linear):
            new = QuantLinear(m, qp, integer_accumulate)
        else:
            raise ValueError(f"plan layer {n!r} is a {type(m).__name__}, not Conv2d / Linear")
        set_submodule(folded, n, new)
    return folded.eval()


def _check_qparams(names: list[str], mods: dict[str, nn.Module], plan: QuantPlan,
                   qparams: QuantParams | None) -> None:
    for n in names:
        if n not in mods:
            raise ValueError(f"plan layer {n!r} is not a module of the model")
        if qparams is None or n not in qparams:
            raise ValueError(f"qparams has no entry for planned layer {n!r}")
        qp, cfg = qparams[n], plan[n]
        if (qp.w_bits, qp.a_bits) != (cfg.w_bits, cfg.a_bits):
            raise ValueError(f"layer {n!r}: qparams are w{qp.w_bits}a{qp.a_bits} but the plan "
                             f"says w{cfg.w_bits}a{cfg.a_bits}")
