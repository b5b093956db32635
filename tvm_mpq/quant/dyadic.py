"""Single-rounding dyadic requantization: the arithmetic of integer-only inference.

A real rescale ``y = round(x * real) + zero_point`` (``x`` an int32 accumulator plus its
bias) is computed as HAWQ-V3's dyadic numbers / TFLite's single-rounding
``MultiplyByQuantizedMultiplier``::

    y = clamp((x * M + K) >> T, lo, hi)          # int64 product, arithmetic shift
    K = bias * M + 2^(T - 1) + zero_point * 2^T  # per output channel

with ``M * 2^-T`` the dyadic approximation of ``real`` (``M`` in ``[2^30, 2^31)``, from
:func:`~tvm_mpq.quant.requant.quantize_multiplier`): ``floor(((x + bias) * M + 2^(T-1)) /
2^T) + zero_point``, i.e. ``(x + bias) * real`` rounded half up, exactly, with the bias and
the zero point folded into one constant. Per element: one multiply, one add, one shift and
the clamp (7.8 instructions per element on rv64gc_zbb, 13.1 on rv32imc measured on Spike,
against 12.8 / 18.9 for CMSIS-NN's double rounding of :mod:`tvm_mpq.quant.requant` and about
31 / 35 for muRISCV-NN's epilogue).

``T`` is capped at :data:`MAX_T` (a smaller ``M`` for real multipliers below ``2^-23``) so
that ``K`` and ``x * M + K`` fit int64. :func:`dyadic_params` computes ``(M, K, T)``;
:func:`requantize_dyadic_ref` (numpy) is the definition, :func:`requantize_dyadic_torch` the
same on torch tensors; ``tvm_mpq.compiler.dyadic_ops`` computes it in TE.
"""

from __future__ import annotations

import numpy as np
import torch

from tvm_mpq.quant.requant import quantize_multiplier

__all__ = ["MAX_T", "dyadic_params", "requantize_dyadic_ref", "requantize_dyadic_torch"]

#: the largest shift: ``255 * 2^54 + 2^62`` still fits int64
MAX_T = 54
_LIMIT = 2**62


def dyadic_params(real, bias=0, zero_point: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M, K, T)`` (int64 arrays of ``real``'s shape) of ``round_half_up((x + bias) * real)
    + zero_point``.

    Args:
        real: the real multiplier(s), finite and in ``[0, 2^30)``.
        bias: integer bias(es) added to ``x`` before the rescale (broadcast with ``real``).
        zero_point: the output zero point.

    Raises:
        ValueError: a multiplier out of range, or a bias so large that ``K`` would not fit
            (``|bias * M| >= 2^62``).
    """
    m, s = quantize_multiplier(real)
    m, t = m.astype(np.int64), 31 - s.astype(np.int64)
    over = np.maximum(t - MAX_T, 0)  # fewer mantissa bits for tiny multipliers
    m = np.where(over > 0, (m + (np.int64(1) << np.maximum(over - 1, 0))) >> over, m)
    t = t - over
    b = np.broadcast_to(np.asarray(bias, dtype=np.int64), m.shape)
    if np.any(np.abs(b.astype(object) * m.astype(object)) >= _LIMIT):
        raise ValueError("bias * multiplier does not fit the int64 rounding constant")
    k = b * m + (np.int64(1) << (t - 1)) + (np.int64(zero_point) << t)
    return m, k.astype(np.int64), t


def requantize_dyadic_ref(x, m, k, t, lo: int, hi: int, ch_axis: int = 1) -> np.ndarray:
    """``clamp((x * M + K) >> T, lo, hi)`` of int32 values ``x`` (per-channel ``M, K, T``
    along ``ch_axis``, or scalars); int32 result."""
    x = np.asarray(x, dtype=np.int64)
    m, k, t = (_along(np.asarray(v, np.int64), x.ndim, ch_axis) for v in (m, k, t))
    return np.clip((x * m + k) >> t, lo, hi).astype(np.int32)


def requantize_dyadic_torch(x: torch.Tensor, m, k, t, lo: int, hi: int,
                            ch_axis: int = 1) -> torch.Tensor:
    """:func:`requantize_dyadic_ref` on a torch integer tensor (int64 result)."""
    x = x.to(torch.int64)
    m, k, t = (torch.from_numpy(_along(np.asarray(v, np.int64), x.dim(), ch_axis))
               for v in (m, k, t))
    return torch.clamp((x * m + k) >> t, lo, hi)


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)
