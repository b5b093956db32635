"""The integer requantization epilogue as a TE computation (building block of issue 11).

:func:`requantize_te` computes, with int32 / int64 integer arithmetic only, exactly
:func:`tvm_mpq.quant.requant.requantize_ref`: ``clamp(RoundingDivideByPOT(
SaturatingRoundingDoublingHighMul((acc + bias[k]) * 2^left, multiplier[k]), right) + z,
qmin, qmax)`` for output channel ``k``. Not yet used by :func:`tvm_mpq.compile`.

The two roundings are fused into one biased arithmetic shift of a 64-bit product. With
``p = x' * M`` (``x' = (acc + bias) * 2^left``) and ``r = right``:

* ``r = 0``: the result is ``floor((p + 2^30) / 2^31) = floor((2p + 2^31) / 2^32)``;
* ``r >= 1``: ``floor((p + 2^30 + 2^(30+r) - [p < 0] * 2^31) / 2^(31+r))``. This is the
  nested floor ``floor((floor(p'/2^31) + n) / 2^r) = floor((p' + n 2^31) / 2^(31+r))`` with
  ``p' = p + 2^30`` and ``n = 2^(r-1) - [p' < 0]`` (ties away from zero); using
  ``[p < 0]`` for ``[p' < 0]`` only differs for ``-2^30 <= p < 0``, where both give 0.

So every channel computes ``(P2 + K + ((P2 >> 63) & N)) >> (32 + r2)`` with per-channel
``P2 = p * 2^[r = 0]``, ``K``, ``N`` and ``r2 = max(r - 1, 0)``: one multiply, four simple
operations and a shift per element. The saturating corner ``INT32_MIN * INT32_MIN`` needs a
negative multiplier, which :func:`~tvm_mpq.quant.requant.quantize_multiplier` never gives:
``multiplier`` must be in ``[0, 2^31 - 1]`` here.
"""

from __future__ import annotations

from numbers import Integral

import tvm
from tvm import te

__all__ = ["FORMS", "preferred_form", "requantize_te", "schedule_requantize"]

#: ``"wide"``: int64 product with the left shift folded into a 64-bit multiplier (one ``mul``
#: on RV64); ``"hi32"``: int32 ``x'`` times an unsigned 32-bit multiplier, result taken from
#: the high word (``mul`` + ``mulhsu`` and 32-bit shifts on RV32)
FORMS = ("wide", "hi32")


def preferred_form(xlen: int) -> str:
    """The cheaper form for a register width: ``"wide"`` on RV64, ``"hi32"`` on RV32 (where
    int64 arithmetic is multi-instruction; bench/requant.py measures both)."""
    return "hi32" if xlen == 32 else "wide"


def requantize_te(acc: te.Tensor, bias: te.Tensor | None, multiplier: te.Tensor,
                  shift: te.Tensor, out_zp: int, qmin: int, qmax: int,
                  out_dtype: str = "uint8", ch_axis: int = 1, form: str = "wide") -> te.Tensor:
    """Requantize an int32 accumulator to ``out_dtype`` codes, per output channel.

    Args:
        acc: int32 accumulator, channels along ``ch_axis`` (1: NCHW conv output or (N, K)
            dense output; -1: the last axis).
        bias: int32 ``[C]`` bias or None.
        multiplier: int32 ``[C]``, each in ``[0, 2^31 - 1]``.
        shift: int32 ``[C]``, each in ``[-31, 30]`` (positive: left).
        out_zp, qmin, qmax: the output zero point and clamp bounds: Python ints (constants
            of the kernel) or int32 scalar expressions (e.g. ``tvm.tirx.Var`` parameters);
            ``qmin - out_zp`` and ``qmax - out_zp`` must fit int32 and ``[qmin, qmax]``
            must fit ``out_dtype``.
        out_dtype: the stored dtype (``"uint8"`` for activations up to 8 bits).
        ch_axis: the channel axis of ``acc``.
        form: one of :data:`FORMS` (same results; different code).

    Returns:
        A tensor of ``acc``'s shape and ``out_dtype``. Bit-exact with ``requantize_ref``
        whenever that accepts the input (``acc + bias`` and its left shift fit int32).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if all(isinstance(v, Integral) for v in (qmin, qmax)) and qmin > qmax:
        raise ValueError("qmin > qmax")
    axis = ch_axis % len(acc.shape)
    wide = form == "wide"
    # the clamp and the zero point are int64: TVM's simplifier treats ints as unbounded and
    # may move ``+ zp`` inside the clamp (overflowing int32 for a result near 2^31); LLVM
    # narrows the int64 clamp of an int32 value back to 32-bit code on RV32
    lo = _offset(qmin, out_zp, "int64")
    hi = _offset(qmax, out_zp, "int64")
    zp = _offset(out_zp, 0, "int64")

    def f(*i):
        k = i[axis]
        x = acc(*i) if bias is None else acc(*i) + bias[k]
        if wide:
            y = _rounding_wide(x, multiplier[k], shift[k])
        else:
            y = _rounding_hi32(x, multiplier[k], shift[k]).astype("int64")
        y = tvm.tirx.max(tvm.tirx.min(y, hi), lo) + zp
        return y.astype(out_dtype)

    return te.compute(acc.shape, f, name="requantize")


def _offset(bound, zp, dtype: str):
    """``bound - zp`` as a constant when both are Python ints, else as an expression."""
    if isinstance(bound, Integral) and isinstance(zp, Integral):
        return tvm.tirx.const(int(bound) - int(zp), dtype)

    def expr(v):
        return tvm.tirx.const(int(v), dtype) if isinstance(v, Integral) else v.astype(dtype)

    return expr(bound) - expr(zp)


def _i64(v: int):
    return tvm.tirx.const(v, "int64")


def _i32(v: int):
    return tvm.tirx.const(v, "int32")


def _rounding_wide(x, mult, shift):
    """The fused rounding on int64: ``(P2 + K + ((P2 >> 63) & N)) >> (32 + r2)``."""
    neg_shift = shift < _i32(0)  # r >= 1
    r2 = tvm.tirx.max(_i32(-1) - shift, _i32(0))  # r - 1 for r >= 1, else 0
    k_round = tvm.tirx.Select(neg_shift, _i64(1 << 30) + (_i64(1) << (r2 + 31).astype("int64")),
                              _i64(1 << 31))
    n_mask = (shift >> _i32(31)).astype("int64") << _i64(31)  # -2^31 for r >= 1, else 0
    # r = 0: P2 = 2p = x * (M << (left + 1)); r >= 1: left = 0 and P2 = p = x * M
    m = mult.astype("int64") << tvm.tirx.max(shift + 1, _i32(0)).astype("int64")
    p2 = x.astype("int64") * m
    return (p2 + k_round + ((p2 >> _i64(63)) & n_mask)) >> (r2 + 32).astype("int64")


def _rounding_hi32(x, mult, shift):
    """The fused rounding from the high word of ``P2 = x' * mu`` (``mu = M << [r = 0]``,
    unsigned): ``(hi + C_hi + carry(lo + C_lo)) >> r2`` where the carry is ``lo >= T``
    (``T = 2^32 - C_lo``), so no operation wraps (TVM marks int ops nsw, uint ops nuw).
    ``hi`` in ``[-2^31 + 1, 2^31 - 2]`` (``|hi| <= 2^30`` when ``r >= 1``) keeps
    ``hi - carry_not + h`` in range in any order TVM's simplifier may choose.

    The constant ``C = K - [P2 < 0] * N`` is ``2^31`` for ``r = 0``; for ``r >= 1``:
    ``3 * 2^30`` / ``2^30`` (positive / negative) when ``r = 1``, and
    ``2^(r-2) * 2^32 + 2^30`` / ``(2^(r-2) - 1) * 2^32 + 3 * 2^30`` when ``r >= 2``.
    """
    u32 = "uint32"
    neg_shift = shift < _i32(0)  # r >= 1
    r_ge2 = shift < _i32(-1)
    r2 = tvm.tirx.max(_i32(-1) - shift, _i32(0))
    left = tvm.tirx.max(shift, _i32(0))
    mu = mult.astype(u32) << tvm.tirx.Select(neg_shift, _i32(0), _i32(1)).astype(u32)
    p2 = (x << left).astype("int64") * mu.astype("int64")  # mul + mulhsu on RV32
    lo = p2.astype(u32)
    hi = (p2 >> _i64(32)).astype("int32")
    sgn = hi >> _i32(31)  # -1 for a negative product, else 0
    t_pos = tvm.tirx.Select(neg_shift, tvm.tirx.Select(r_ge2, tvm.tirx.const(3 << 30, u32),
                                                       tvm.tirx.const(1 << 30, u32)),
                            tvm.tirx.const(1 << 31, u32))
    t_flip = tvm.tirx.Select(neg_shift, tvm.tirx.const(1 << 31, u32), tvm.tirx.const(0, u32))
    t = t_pos ^ (sgn.astype(u32) & t_flip)
    h_pos = tvm.tirx.Select(r_ge2, (_i32(1) << tvm.tirx.max(r2 - 1, _i32(0))) + 1, _i32(1))
    h = h_pos + (sgn & tvm.tirx.Select(r_ge2, _i32(-1), _i32(0)))
    carry_not = (lo < t).astype("int32")
    return (hi - carry_not + h) >> r2


def schedule_requantize(func: tvm.tirx.PrimFunc, unroll: int = 4) -> tvm.tirx.PrimFunc:
    """A simple schedule for a PrimFunc made of one :func:`requantize_te` block: the loops
    after the channel axis fused into one, split by ``unroll`` and the inner part unrolled
    (the channel's constants stay in registers, the loop overhead is shared)."""
    sch = tvm.s_tir.Schedule(func)
    block = sch.get_sblock("requantize")
    loops = sch.get_loops(block)
    # fuse the loops after the second one (NCHW: h and w; a 2-d (N, K) keeps its last loop)
    inner = loops[2:] if len(loops) > 2 else loops[-1:]
    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    extent = sch.get(fused).extent
    # a symbolic extent is split too (TVM adds the bound check); a constant one only evenly
    if unroll > 1 and (not isinstance(extent, tvm.tirx.IntImm) or int(extent) % unroll == 0):
        _, u = sch.split(fused, [None, unroll])
        sch.unroll(u)
    return sch.mod["main"]
