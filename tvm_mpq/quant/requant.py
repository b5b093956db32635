"""Integer-only requantization: the fixed-point (dyadic) epilogue of a quantized layer.

A quantized layer's int32 accumulator ``acc`` (plus the int32 bias) is rescaled to the next
layer's activation by the real multiplier ``s_in * s_w[k] / s_out`` of its output channel
``k``. Integer-only inference (issue 11) replaces that float multiply by a dyadic number
``multiplier * 2^(shift - 31)`` with an int32 ``multiplier`` and applies it exactly as
gemmlowp / TFLite's reference ``MultiplyByQuantizedMultiplier`` and CMSIS-NN /
muRISCV-NN's ``arm_nn_requantize`` (double-rounding build, the default; not the
``*_USE_SINGLE_ROUNDING`` build) do::

    x   = acc + bias[k]                                  (int32)
    v   = SaturatingRoundingDoublingHighMul(x * 2^left, multiplier[k])
    y   = RoundingDivideByPOT(v, right)
    out = clamp(y + out_zero_point, qmin, qmax)

with ``left = max(shift, 0)``, ``right = max(-shift, 0)`` and

* ``SaturatingRoundingDoublingHighMul(a, b)`` (ARM ``VQRDMULH``): the 64-bit product
  ``a * b`` plus a nudge of ``2^30`` (``1 - 2^30`` for a negative product), divided by
  ``2^31`` truncating toward zero; ``a == b == INT32_MIN`` saturates to ``INT32_MAX``. This is
  ``floor((a * b + 2^30) / 2^31)`` everywhere else: round to nearest, ties toward +inf.
  CMSIS-NN's ``arm_nn_doubling_high_mult_no_sat`` computes exactly that floor form.
* ``RoundingDivideByPOT(x, e)``, ``0 <= e <= 31``: ``x / 2^e`` rounded to nearest, ties away
  from zero (``(x >> e) + (x & mask > (mask >> 1) + (x < 0))``, ``mask = 2^e - 1``).

Where the C code would overflow an int32 (undefined behaviour there) this module refuses
the input (:class:`ValueError`): ``acc + bias`` and ``(acc + bias) * 2^left`` must fit an
int32. The final ``y + out_zero_point`` and the clamp are computed exactly.

Activations are unsigned asymmetric (docs/quantization.md): an ``a``-bit output lies in
``[0, 2^a - 1]`` with zero point ``z``; :func:`clamp_bounds` folds ReLU / ReLU6 into the
clamp. :func:`requantize_ref` (numpy) is the definition; :func:`requantize_torch` is the same
arithmetic on torch tensors, bit-identical, for the fake-quant reference.
``tvm_mpq.compiler.requant_ops.requantize_te`` is the TE computation of the same function.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "ACTIVATIONS", "INT32_MAX", "INT32_MIN", "MAX_REAL_MULTIPLIER", "MAX_SHIFT", "MIN_SHIFT",
    "clamp_bounds", "dyadic_value", "quantize_multiplier", "requantize_ref", "requantize_torch",
    "rounding_divide_by_pot", "saturating_rounding_doubling_high_mul",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
#: the shift range of a dyadic multiplier: at most 30 to the left (as TFLite), 31 to the right
MIN_SHIFT, MAX_SHIFT = -31, 30
#: real multipliers must be below this: larger ones round to a shift above MAX_SHIFT
MAX_REAL_MULTIPLIER = 2.0**30 - 0.25
ACTIVATIONS = (None, "none", "relu", "relu6")


# ---- the multiplier ----------------------------------------------------------------------


def quantize_multiplier(real_multiplier) -> tuple[np.ndarray, np.ndarray]:
    """The dyadic approximation ``multiplier * 2^(shift - 31)`` of each real multiplier.

    As TFLite's ``QuantizeMultiplier``: ``real = q * 2^e`` with ``q`` in ``[0.5, 1)``,
    ``multiplier = round_half_away(q * 2^31)`` in ``[2^30, 2^31 - 1]`` (a ``q`` that rounds up
    to ``2^31`` gives ``2^30`` and ``e + 1``), ``shift = e``. The relative error of the dyadic
    value is at most ``2^-31``.

    Accepted: finite ``0 <= real < MAX_REAL_MULTIPLIER`` (``2^30 - 1/4``, the largest value
    whose shift stays <= 30). ``0`` gives ``(0, 0)``; so does every ``real < 2^-32`` (a shift
    below ``-31``): for an int32 input ``|x * real| < 1/2`` there, so the exact result rounds to
    0 too.

    Args:
        real_multiplier: a float or array of floats (one per output channel), typically
            ``s_in * s_w[k] / s_out``.

    Returns:
        ``(multiplier, shift)``: int32 arrays of ``real_multiplier``'s shape (0-d for a
        scalar), ``multiplier`` in ``{0} U [2^30, 2^31 - 1]``, ``shift`` in
        ``[MIN_SHIFT, MAX_SHIFT]``.

    Raises:
        ValueError: a negative, NaN, infinite or too large multiplier.
    """
    real = np.asarray(real_multiplier, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        raise ValueError("real multipliers must be finite and >= 0")
    if np.any(real >= MAX_REAL_MULTIPLIER):
        raise ValueError(f"real multiplier >= {MAX_REAL_MULTIPLIER} (2^30 - 1/4): its shift "
                         f"would exceed {MAX_SHIFT}")
    q, e = np.frexp(real)  # real = q * 2^e, q in [0.5, 1) (0 for 0)
    # q * 2^31 is exact in float64 (53-bit q) and adding 0.5 is exact too: round half away
    m = np.floor(q * 2.0**31 + 0.5).astype(np.int64)
    carry = m == 2**31
    m = np.where(carry, 2**30, m)
    e = e.astype(np.int64) + carry
    tiny = (e < MIN_SHIFT) | (m == 0)
    m = np.where(tiny, 0, m)
    e = np.where(tiny, 0, e)
    return m.astype(np.int32), e.astype(np.int32)


def dyadic_value(multiplier, shift) -> np.ndarray:
    """``multiplier * 2^(shift - 31)`` as float64 (exact: 31-bit mantissa)."""
    return np.ldexp(np.asarray(multiplier, np.float64), np.asarray(shift, np.int64) - 31)


# ---- the two rounding primitives (numpy, on int64 arrays holding int32 values) -----------


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` of int32 values, elementwise
    (ARM ``VQRDMULH``): ``(a * b + nudge) / 2^31`` truncated toward zero, ``nudge = 2^30``
    for ``a * b >= 0`` and ``1 - 2^30`` otherwise; ``INT32_MIN * INT32_MIN -> INT32_MAX``."""
    a = _int32_values(a, "a")
    b = _int32_values(b, "b")
    ab = a * b  # |ab| <= 2^62: exact in int64
    num = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    q = np.abs(num) >> 31
    q = np.where(num < 0, -q, q)  # C's truncating division by 2^31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT`` (CMSIS-NN ``arm_nn_divide_by_power_of_two``):
    ``x / 2^exponent`` rounded to nearest, ties away from zero, ``0 <= exponent <= 31``."""
    x = _int32_values(x, "x")
    e = np.asarray(exponent, dtype=np.int64)
    if np.any((e < 0) | (e > 31)):
        raise ValueError("exponent must be in [0, 31]")
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


# ---- requantization ----------------------------------------------------------------------


def requantize_ref(acc, bias, multiplier, shift, out_zero_point: int, qmin: int, qmax: int,
                   ch_axis: int = 1) -> np.ndarray:
    """Requantize an int32 accumulator (the definition; see the module docstring).

    Args:
        acc: integer array (int32 values), e.g. an NCHW conv or (N, K) dense accumulator.
        bias: per-channel int32 bias (``[C]``), a scalar, or None (no bias).
        multiplier: per-channel int32 multiplier (``[C]``) or a scalar (per tensor).
        shift: per-channel shift in ``[MIN_SHIFT, MAX_SHIFT]`` (``[C]``) or a scalar.
        out_zero_point, qmin, qmax: output zero point and clamp bounds (int32 values,
            ``qmin <= qmax``); see :func:`clamp_bounds`.
        ch_axis: the channel axis of ``acc`` (1: NCHW and dense; negative counts from the end).

    Returns:
        int32 array of ``acc``'s shape, values in ``[qmin, qmax]``.

    Raises:
        ValueError: values outside the int32 range, a shift outside its range, ``acc + bias``
            or ``(acc + bias) * 2^left`` outside int32 (undefined in the C definitions),
            ``qmin > qmax``.
    """
    acc = _int32_values(acc, "acc")
    bias = _per_channel(0 if bias is None else bias, acc.ndim, ch_axis, "bias")
    mult = _per_channel(multiplier, acc.ndim, ch_axis, "multiplier")
    sh = _per_channel(shift, acc.ndim, ch_axis, "shift")
    _check_scalars(out_zero_point, qmin, qmax)
    if np.any((sh < MIN_SHIFT) | (sh > MAX_SHIFT)):
        raise ValueError(f"shift must be in [{MIN_SHIFT}, {MAX_SHIFT}]")
    x = _checked_int32(acc + bias, "acc + bias")
    x = _checked_int32(x << np.maximum(sh, 0), "(acc + bias) * 2^shift")
    v = saturating_rounding_doubling_high_mul(x, mult)
    y = rounding_divide_by_pot(v, np.maximum(-sh, 0))
    return np.clip(y + int(out_zero_point), int(qmin), int(qmax)).astype(np.int32)


def requantize_torch(acc: torch.Tensor, bias, multiplier, shift, out_zero_point: int,
                     qmin: int, qmax: int, ch_axis: int = 1) -> torch.Tensor:
    """:func:`requantize_ref` on torch integer tensors, bit-identical to it (int64 arithmetic,
    the same steps), for the fake-quant reference. Returns an int32 tensor on ``acc``'s
    device; raises :class:`ValueError` on the same inputs as :func:`requantize_ref`."""
    dev = acc.device
    if acc.dtype.is_floating_point or acc.dtype.is_complex:
        raise ValueError("acc must be an integer tensor")
    acc = acc.to(torch.int64)

    def per_channel(v, name):
        return torch.as_tensor(_per_channel(v, acc.dim(), ch_axis, name), device=dev)

    bias_t = per_channel(0 if bias is None else bias, "bias")
    mult = per_channel(multiplier, "multiplier")
    sh = per_channel(shift, "shift")
    _check_scalars(out_zero_point, qmin, qmax)
    if bool(((sh < MIN_SHIFT) | (sh > MAX_SHIFT)).any()):
        raise ValueError(f"shift must be in [{MIN_SHIFT}, {MAX_SHIFT}]")
    _checked_int32_torch(acc, "acc")
    x = _checked_int32_torch(acc + bias_t, "acc + bias")
    x = _checked_int32_torch(x << sh.clamp(min=0), "(acc + bias) * 2^shift")
    ab = x * mult
    num = ab + torch.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    v = torch.div(num, 1 << 31, rounding_mode="trunc")
    v = torch.where((x == INT32_MIN) & (mult == INT32_MIN), INT32_MAX, v)
    e = (-sh).clamp(min=0)
    mask = (torch.ones_like(e) << e) - 1
    y = (v >> e) + ((v & mask) > (mask >> 1) + (v < 0).to(torch.int64)).to(torch.int64)
    return torch.clamp(y + int(out_zero_point), int(qmin), int(qmax)).to(torch.int32)


def clamp_bounds(out_scale: float, out_zero_point: int, bits: int,
                 activation: str | None = None) -> tuple[int, int]:
    """``(qmin, qmax)`` of an unsigned ``bits``-bit output with ReLU / ReLU6 folded in.

    The output range is ``[0, 2^bits - 1]`` (unsigned asymmetric activations, the project's
    contract). ReLU raises ``qmin`` to the zero point (the code of 0.0); ReLU6 also lowers
    ``qmax`` to ``zero_point + round_half_even(float32(6) / float32(out_scale))``, the code of
    6.0 as the contract quantizes it. Clamping the integer result to these bounds equals
    quantizing ``relu(y)`` / ``relu6(y)`` because rounding is monotone and maps 0 to 0.

    Args:
        out_scale: the output activation scale (> 0).
        out_zero_point: its zero point, in ``[0, 2^bits - 1]``.
        bits: 1, 2, 4 or 8.
        activation: None / ``"none"``, ``"relu"`` or ``"relu6"``.

    Raises:
        ValueError: anything else.
    """
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, not {bits!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    top = 2**bits - 1
    zp = int(out_zero_point)
    if not 0 <= zp <= top:
        raise ValueError(f"zero point {zp} outside [0, {top}]")
    if not (math.isfinite(out_scale) and out_scale > 0):
        raise ValueError("out_scale must be finite and > 0")
    if activation in (None, "none"):
        return 0, top
    if activation == "relu":
        return zp, top
    six = float(np.rint(np.float32(6.0) / np.float32(out_scale)))
    return zp, int(min(top, zp + six))


# ---- helpers -----------------------------------------------------------------------------


def _int32_values(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub" and arr.size:
        raise ValueError(f"{name} must hold integers")
    arr = arr.astype(np.int64)
    return _checked_int32(arr, name)


def _checked_int32(a: np.ndarray, name: str) -> np.ndarray:
    if a.size and (a.min() < INT32_MIN or a.max() > INT32_MAX):
        raise ValueError(f"{name} outside the int32 range")
    return a


def _checked_int32_torch(a: torch.Tensor, name: str) -> torch.Tensor:
    if a.numel() and (int(a.min()) < INT32_MIN or int(a.max()) > INT32_MAX):
        raise ValueError(f"{name} outside the int32 range")
    return a


def _per_channel(v, ndim: int, ch_axis: int, name: str) -> np.ndarray:
    """A scalar, or a ``[C]`` vector shaped to broadcast along ``ch_axis`` of an ``ndim``-d
    array (int64 holding int32 values)."""
    arr = _int32_values(v, name)
    if arr.ndim == 0:
        return arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a per-channel vector")
    if not -ndim <= ch_axis < ndim:
        raise ValueError(f"ch_axis {ch_axis} out of range for a {ndim}-d accumulator")
    axis = ch_axis % ndim
    shape = [1] * ndim
    shape[axis] = arr.shape[0]
    return arr.reshape(shape)


def _check_scalars(zp, qmin, qmax) -> None:
    for name, v in (("out_zero_point", zp), ("qmin", qmin), ("qmax", qmax)):
        if not INT32_MIN <= int(v) <= INT32_MAX:
            raise ValueError(f"{name} outside the int32 range")
    if int(qmin) > int(qmax):
        raise ValueError("qmin > qmax")
