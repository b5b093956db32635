"""The integer glue of integer-only inference as TE computations: entry quantize, exit
dequantize, spec change, ReLU clamp, residual add and global average pooling on codes.

Each computes exactly what :mod:`tvm_mpq.quant.intref` computes in torch (the arithmetic
is defined in :mod:`tvm_mpq.quant.integer`); between input and output only integer
operations are used. Codes are uint8; ``xlen`` (32 / 64) picks the code of the dyadic
rescale for the register width (:func:`~tvm_mpq.compiler.dyadic_ops.dyadic_form`). They are
public because the measurement of the glue (:mod:`tvm_mpq.measure.overhead`) must time what
the compiler emits.
"""

from __future__ import annotations

import tvm
from tvm import te

from tvm_mpq.compiler.dyadic_ops import dyadic_consts, dyadic_form, requantize_dyadic_te
from tvm_mpq.quant import integer as I

__all__ = ["add_codes_te", "clamp_codes_te", "dequantize_codes_te", "mean_codes_te",
           "quantize_codes_te", "respec_codes_te"]


def _scalar_requant(x: te.Tensor, mkt: tuple[int, int, int], lo: int, hi: int, xlen: int,
                    name: str) -> te.Tensor:
    """``clamp((x * m + k) >> t, lo, hi)`` with scalar constants."""
    m, k, t = mkt
    form = dyadic_form(t, xlen)
    consts = [int(c) for c in dyadic_consts(m, k, t, form)]
    return requantize_dyadic_te(x, consts, lo, hi, "uint8", 1, form, name=name)


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


def respec_codes_te(q: te.Tensor, src: I.QSpec, dst: I.QSpec, xlen: int = 64) -> te.Tensor:
    """Integer spec change: ``requant(q - z_src, s_src / s_dst) + z_dst`` into ``[0, qmax]``."""
    return _scalar_requant(q, I.requant_params(src, dst), 0, dst.qmax, xlen, "respec")


def clamp_codes_te(q: te.Tensor, lo: int, hi: int) -> te.Tensor:
    """An activation on codes: ``clamp(q, lo, hi)``."""
    a, b = tvm.tirx.const(lo, "uint8"), tvm.tirx.const(hi, "uint8")
    return te.compute(q.shape, lambda *i: tvm.tirx.max(tvm.tirx.min(q(*i), b), a), name="clamp")


def add_codes_te(a: te.Tensor, b: te.Tensor, sa: I.QSpec, sb: I.QSpec, out: I.QSpec,
                 lo: int, hi: int, xlen: int = 64) -> te.Tensor:
    """Residual add on codes: ``clamp((qa * ma + qb * mb + k) >> t, lo, hi)``
    (:func:`~tvm_mpq.quant.integer.add_params`; ``[lo, hi]`` holds a folded activation).
    int64 arithmetic: the shift is a constant, so RV32 needs a few instructions more."""
    ma, mb, k, t = I.add_params(sa, sb, out)
    c64 = [tvm.tirx.const(v, "int64") for v in (ma, mb, k, t, lo, hi)]

    def f(*i):
        y = (a(*i).astype("int64") * c64[0] + b(*i).astype("int64") * c64[1] + c64[2]) >> c64[3]
        return tvm.tirx.max(tvm.tirx.min(y, c64[5]), c64[4]).astype("uint8")

    return te.compute(a.shape, f, name="add")


def mean_codes_te(q: te.Tensor, src: I.QSpec, out: I.QSpec, lo: int, hi: int,
                  keepdim: bool = True, xlen: int = 64) -> te.Tensor:
    """Global average pooling of NCHW codes: ``requant(sum(q) - N z_src, s_src / (N s_out))``."""
    n, c, h, w = (int(d) for d in q.shape)
    rh = te.reduce_axis((0, h), "rh")
    rw = te.reduce_axis((0, w), "rw")
    shape = (n, c, 1, 1) if keepdim else (n, c)
    acc = te.compute(shape, lambda b, k, *_: te.sum(q[b, k, rh, rw].astype("int32"),
                                                    axis=[rh, rw]), name="pool_sum")
    return _scalar_requant(acc, I.mean_params(src, out, h * w), lo, hi, xlen, "mean")
