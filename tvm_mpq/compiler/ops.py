"""The float32 TE computations the compiler puts around every kernel call site.

They are public because the measurement of the quantize / dequantize / bias passes
(:func:`tvm_mpq.measure.overhead.measure_qdq_overhead`) must time exactly what the
compiler emits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tvm
from tvm import te

if TYPE_CHECKING:
    from tvm_mpq.quant.qparams import LayerQParams


def quantize_te(x: te.Tensor, qp: LayerQParams) -> te.Tensor:
    """Quantize a float32 activation to uint8 codes with ``qp``'s per-tensor scale and zero
    point: ``clamp(round_half_even(x / s_a) + z, 0, qmax)``, as the torch fake-quant does.

    Args:
        x: the float32 input tensor.
        qp: the layer's quantization parameters (``a_scale``, ``a_zero_point``, ``a_qmax``).

    Returns:
        A uint8 tensor of ``x``'s shape.
    """
    s = tvm.tirx.const(float(np.float32(qp.a_scale)), "float32")
    z = int(qp.a_zero_point)
    lo = tvm.tirx.const(float(-z), "float32")
    hi = tvm.tirx.const(float(qp.a_qmax - z), "float32")

    def f(*i):
        # true float32 division, as the torch reference does (not x * (1/s)). Clamping to
        # [-z, qmax - z] before rounding equals clamping after (rounding is monotone and the
        # bounds are integers) and keeps the value in range of llvm.lrint, which rounds half
        # to even in the default rounding mode: one fcvt.w.s on RISC-V, then integer add and
        # a byte store (10 instructions per element instead of 20 with llvm.roundeven's
        # float result).
        v = tvm.tirx.max(tvm.tirx.min(x(*i) / s, hi), lo)
        q = tvm.tirx.call_llvm_pure_intrin("int32", "llvm.lrint", v) + z
        return q.astype("uint8")

    return te.compute(x.shape, f, name="quantize")


def dequantize_te(acc: te.Tensor, corr: te.Tensor, scale: te.Tensor, bias: te.Tensor | None,
                  ch_axis: int = 1) -> te.Tensor:
    """Turn a kernel's int32 accumulator into float32:
    ``float32(acc - corr[k]) * scale[k] (+ bias[k])`` for output channel ``k``.

    Args:
        acc: the int32 accumulator (kernel output).
        corr: int32 per-channel zero-point correction ``z * sum(w_q[k])``.
        scale: float32 per-channel ``s_a * s_w[k]``.
        bias: float32 per-channel bias, or None.
        ch_axis: the channel axis of ``acc`` (1 for NCHW and for dense outputs).
    """

    def f(*i):
        k = i[ch_axis]
        y = (acc(*i) - corr[k]).astype("float32") * scale[k]
        return y + bias[k] if bias is not None else y

    return te.compute(acc.shape, f, name="dequantize")


def bias_te(y: te.Tensor, bias: te.Tensor, ch_axis: int = 1) -> te.Tensor:
    """Add a per-channel float32 ``bias`` along ``ch_axis`` (the pass after an fp32 kernel)."""
    return te.compute(y.shape, lambda *i: y(*i) + bias[i[ch_axis]], name="bias_add")
