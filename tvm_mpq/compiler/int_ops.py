"""The integer glue of integer-only inference as TE computations: entry quantize, exit
dequantize, spec change, ReLU clamp, residual add and global average pooling on codes.

Each computes exactly what :mod:`tvm_mpq.quant.intref` computes in torch (the arithmetic
is defined in :mod:`tvm_mpq.quant.integer`); between input and output only integer
operations are used. Codes are uint8; ``form`` picks the rounding code for the register
width (:func:`~tvm_mpq.compiler.requant_ops.preferred_form`). They are public because the
measurement of the glue (:mod:`tvm_mpq.measure.overhead`) must time what the compiler emits.
"""

from __future__ import annotations

import tvm
from tvm import te

from tvm_mpq.compiler.requant_ops import dyadic_round
from tvm_mpq.quant import integer as I

__all__ = ["add_codes_te", "clamp_codes_te", "dequantize_codes_te", "mean_codes_te",
           "quantize_codes_te", "respec_codes_te"]


def _i64(v: int):
    return tvm.tirx.const(int(v), "int64")


def _store(y, zp: int, lo: int, hi: int):
    """``clamp(y + zp, lo, hi)`` as uint8 (``y`` int64; the clamp before the add, as
    :func:`~tvm_mpq.compiler.requant_ops.requantize_te`)."""
    return (tvm.tirx.max(tvm.tirx.min(y, _i64(hi - zp)), _i64(lo - zp)) + _i64(zp)).astype("uint8")


def quantize_codes_te(x: te.Tensor, spec: I.QSpec) -> te.Tensor:
    """Float32 to codes: ``clamp(round_half_even(x / s) + z, 0, qmax)`` (true division)."""
    s = tvm.tirx.const(float(spec.scale), "float32")
    z = spec.zero_point
    lo = tvm.tirx.const(float(-z), "float32")
    hi = tvm.tirx.const(float(spec.qmax - z), "float32")

    def f(*i):
        # clamping before rounding equals clamping after (see ops.quantize_te)
        v = tvm.tirx.max(tvm.tirx.min(x(*i) / s, hi), lo)
        return (tvm.tirx.call_llvm_pure_intrin("int32", "llvm.lrint", v) + z).astype("uint8")

    return te.compute(x.shape, f, name="quantize")


def dequantize_codes_te(q: te.Tensor, spec: I.QSpec) -> te.Tensor:
    """Codes to float32: ``float32(q - z) * s`` (the one conversion at a float boundary)."""
    s = tvm.tirx.const(float(spec.scale), "float32")
    return te.compute(q.shape, lambda *i: (q(*i).astype("int32") - spec.zero_point)
                      .astype("float32") * s, name="dequantize")


def respec_codes_te(q: te.Tensor, src: I.QSpec, dst: I.QSpec, form: str = "wide") -> te.Tensor:
    """Integer spec change: ``requant(q - z_src, s_src / s_dst)`` into ``[0, qmax_dst]``."""
    m, s = I.requant_params(src, dst)

    def f(*i):
        return _store(dyadic_round(q(*i).astype("int32") - src.zero_point, m, s, form),
                      dst.zero_point, 0, dst.qmax)

    return te.compute(q.shape, f, name="respec")


def clamp_codes_te(q: te.Tensor, lo: int, hi: int) -> te.Tensor:
    """An activation on codes: ``clamp(q, lo, hi)``."""
    a, b = tvm.tirx.const(lo, "uint8"), tvm.tirx.const(hi, "uint8")
    return te.compute(q.shape, lambda *i: tvm.tirx.max(tvm.tirx.min(q(*i), b), a), name="clamp")


def add_codes_te(a: te.Tensor, b: te.Tensor, sa: I.QSpec, sb: I.QSpec, out: I.QSpec,
                 lo: int, hi: int, form: str = "wide") -> te.Tensor:
    """Residual add on codes: both inputs to a common scale, summed, requantized to ``out``
    (:func:`~tvm_mpq.quant.integer.add_params`); ``[lo, hi]`` holds a folded activation."""
    p = I.add_params(sa, sb, out)

    def f(*i):
        xa = dyadic_round(a(*i).astype("int32") - sa.zero_point, *p["a"], form)
        xb = dyadic_round(b(*i).astype("int32") - sb.zero_point, *p["b"], form)
        y = dyadic_round((xa + xb).astype("int32"), *p["out"], form)
        return _store(y, out.zero_point, lo, hi)

    return te.compute(a.shape, f, name="add")


def mean_codes_te(q: te.Tensor, src: I.QSpec, out: I.QSpec, lo: int, hi: int,
                  keepdim: bool = True, form: str = "wide") -> te.Tensor:
    """Global average pooling of NCHW codes: ``requant(sum(q) - N z_src, s_src / (N s_out))``."""
    n, c, h, w = (int(d) for d in q.shape)
    bias, m, s = I.mean_params(src, out, h * w)
    rh = te.reduce_axis((0, h), "rh")
    rw = te.reduce_axis((0, w), "rw")
    acc = te.compute((n, c), lambda b, k: te.sum(q[b, k, rh, rw].astype("int32"), axis=[rh, rw]),
                     name="pool_sum")

    def f(b, k, *_):
        return _store(dyadic_round(acc[b, k] + bias, m, s, form), out.zero_point, lo, hi)

    shape = (n, c, 1, 1) if keepdim else (n, c)
    return te.compute(shape, f, name="mean")
