"""Analytic terms: iteration counts of the stages of a kernel's default lowering.

For each :class:`~tvm_mpq.costmodel.query.CostQuery`, how many times each stage of its
default schedule (:mod:`tvm_mpq.schedules.conv2d`, :mod:`tvm_mpq.schedules.default_schedules`)
runs: padded elements, packed words, MACs, plane popcounts, register tiles, ... The cost
model's analytic prior (:mod:`tvm_mpq.costmodel.analytic`) fits instructions per iteration
on them; the features (:mod:`tvm_mpq.costmodel.features`) summarise them per MAC.

The counts follow the schedules' own tile choices (:mod:`tvm_mpq.schedules.tiles`:
``bitserial_tile``, ``swar_tile``, ``direct_tile``) and a small model of
what LLVM fully unrolls (:func:`reduction_unrolled`), measured on Spike.

Public API::

    T = analytic_terms(queries)                  # (n, len(ANALYTIC_TERMS))
    t = stage_counts(q, conv_view(q.workload), word_bits)   # {term: count} of one query
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tvm_mpq.costmodel.query import CostQuery
from tvm_mpq.schedules.conv2d import grouped_planes, pixel_block, plane_accumulators
from tvm_mpq.schedules.default_schedules import bitserial_is_tiled
from tvm_mpq.schedules.registry import dense_as_conv
from tvm_mpq.schedules.swar import channel_block, lane_block, swar_kernel_lanes
from tvm_mpq.schedules.tiles import bitserial_tile, direct_loads, direct_tile, swar_tile
from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload, Workload
from tvm_mpq.targets import get_profile

__all__ = [
    "ANALYTIC_TERMS",
    "analytic_terms",
    "conv_view",
    "inner_extent",
    "reduction_unrolled",
    "stage_counts",
]

#: Iteration counts of the stages of each variant's default lowering (see
#: :mod:`tvm_mpq.schedules.conv2d` and :mod:`tvm_mpq.schedules.default_schedules`). A term is
#: 0 where the variant has no such stage. The cost model fits per-(variant, profile, window
#: class) non-negative instructions-per-iteration weights on them (an *analytic prior*) and
#: learns the residual with XGBoost.
ANALYTIC_TERMS: tuple[str, ...] = (
    "call",          # one per kernel call
    "planes",        # output channel planes (n * k)
    "out",           # output elements (init + store of the accumulator / plane combine)
    "out_rows",      # output rows (n * k * oh): loop overhead of the ow loop
    # byte/float padding stage (fp32, int8, unpack, swar): a select per padded element, a
    # load for the ones inside the input
    "pad",
    "pad_inside",
    "pad_rows",
    "pad_planes",
    # direct lowering (fp32 / int8 / unpack)
    "macs",          # multiply-accumulates
    "unpack",        # sub-byte weights unpacked (unpack, w_bits < 8), innermost loop over c
    "unpack_unrolled",  # the same when LLVM unrolls the innermost loop (kw, or few channels)
    # bitserial, register-tiled schedule (bitserial_tile's kt x owt tiles)
    "bs_pop",        # AND + popcount + add of (weight plane, activation plane) words
    "bs_pop_hot",    # the same again for tiles needing more registers than there are (spills)
    "bs_wload",      # weight-plane words loaded (once per tile and tap)
    "bs_aload",      # activation-plane words loaded (the tile's columns per tap)
    "bs_red",        # reduction loop iterations (tiles * words * kh; rx is unrolled)
    "bs_acc",        # plane accumulators initialised and combined (tiles * kt * owt * G)
    "bs_tiles",      # output tiles
    "bs_flat",       # 1x1 with one word: plane-loop iterations left rolled (W x G per output)
    "bs_asum",       # 1-bit weights: popcounts of the activation window sums
    "bs_asum_out",   # 1-bit weights: activation window sums
    # bitserial activation packing: blocked bit-slice transpose (cg >= 8, even H*W) ...
    "pk_blk_bytes",  # channel bytes read (s pixels per load)
    "pk_blk_slices",  # bit-slice words built (8 channels x s pixels per plane)
    "pk_blk_out",    # packed words assembled, 8 chunk bytes each
    # ... or the per-pixel gather
    "pk_g_bytes",    # channel bytes gathered (64 per word, ragged ones selected away)
    "pk_g_planes",   # plane words extracted (8 multiply-shift steps each)
    "pk_pad",        # packed words of the padded planes (a select per border word)
    # swar: 4x4 (k x ow) register tile of packed multiply-adds
    "swar_words",    # packed multiply-adds (out * kh * kw * ceil(cg / lanes))
    "swar_wload",    # packed weight words loaded
    "swar_aload",    # packed activation words loaded
    "swar_red",      # reduction loop iterations (tiles * kh * kw * words)
    "swar_tiles",    # output tiles
    "swar_pack",     # activation lanes packed over the padded extent
    "swar_pack_words",  # packed activation words
    "swar_extract",  # outputs read back from their lanes (shift, mask, unbias)
    "swar_flush",    # blocked lanes: lane sums emptied into int32 after each block
    # fp32 / int8 / unpack: direct_tile's kt x oht x owt register tiles (rx unrolled)
    "dir_wload",     # weights loaded (once per tile, channel and tap)
    "dir_aload",     # activations loaded (the input rows x columns of a tile, per channel)
    "dir_red",       # reduction loop iterations (tiles * cg * kh)
    "dir_tiles",     # output tiles
)

#: Rough LLVM IR size of one multiply-accumulate and LLVM's full-unroll budget: a loop of
#: ``extent`` iterations is unrolled when ``extent * body <= _UNROLL_BUDGET``. Measured
#: (Spike): the plain fp32 / int8 / unpack 1x1 reduction is unrolled up to 32 channels
#: (2.2-5 instructions per MAC), rolled from 48 (6.0 fp32, 7.0 int8 per MAC).
_MAC_BODY = {"fp32": 8, "int8": 8, "unpack": 8, "bitserial": 6, "swar": 4}
_UNROLL_BUDGET = 300
#: Rough IR size of one sub-byte weight unpack (load, shift, mask, sign-extend, store): its
#: innermost loop is unrolled up to 24 channels (~2 instructions a weight), rolled from 32 (~12).
_UNPACK_BODY = 12
#: Live values (accumulators + loaded words) a bitserial tile keeps without spilling.
_TILE_REGS = 20
#: Largest W x G plane loop LLVM still unrolls on its own (w4a4: 28 is, w4a8: 44 is not).
_PLANE_UNROLL = 32


def conv_view(wl: Workload) -> Conv2dWorkload:
    """``wl`` as the conv2d the kernels compute (a dense layer is a 1x1 conv on a 1x1 map)."""
    return dense_as_conv(wl) if isinstance(wl, DenseWorkload) else wl


def inner_extent(q: CostQuery, cv: Conv2dWorkload, word_bits: float) -> int:
    """Extent of the innermost reduction loop as lowered (rx; the channel loop for 1x1)."""
    if cv.kw > 1:
        return cv.kw
    if q.variant == "swar":
        layout, lanes, _ = swar_kernel_lanes(cv, q.w_bits, q.a_bits, int(word_bits))
        return cv.cg if layout == "pixels" else math.ceil(cv.cg / lanes)
    return math.ceil(cv.cg / word_bits) if q.variant == "bitserial" else cv.cg


def reduction_unrolled(variant: str, inner: int) -> bool:
    """Whether LLVM fully unrolls an innermost reduction loop of ``inner`` iterations of
    ``variant``'s multiply-accumulate (a size budget, measured on Spike)."""
    return inner * _MAC_BODY[variant] <= _UNROLL_BUDGET


def stage_counts(q: CostQuery, cv: Conv2dWorkload, word_bits: float) -> dict[str, float]:
    """Iteration counts of the stages of ``q``'s default lowering, one per
    :data:`ANALYTIC_TERMS` name (0 for stages the variant does not have).

    Args:
        q: the kernel.
        cv: ``conv_view(q.workload)``.
        word_bits: machine word bits of ``q.profile``.
    """
    t = dict.fromkeys(ANALYTIC_TERMS, 0.0)
    t["call"] = 1.0
    t["out"] = float(cv.n * cv.k * cv.oh * cv.ow)
    t["out_rows"] = float(cv.n * cv.k * cv.oh)
    t["planes"] = float(cv.n * cv.k)
    if any(cv.padding) and q.variant != "bitserial":  # bitserial pads packed words instead
        t["pad"] = float(cv.n * cv.c * cv.hp * cv.wp)
        t["pad_inside"] = float(cv.n * cv.c * cv.h * cv.w)
        t["pad_rows"] = float(cv.n * cv.c * cv.hp)
        t["pad_planes"] = float(cv.n * cv.c)
    if q.variant == "bitserial":
        _bitserial_counts(t, q, cv, int(word_bits))
        _packing_counts(t, q, cv, int(word_bits))
    elif q.variant == "swar":
        _swar_counts(t, q, cv, int(word_bits))
    else:
        _direct_counts(t, q, cv)
    return t


def _bitserial_counts(t: dict[str, float], q: CostQuery, cv: Conv2dWorkload,
                      wbits: int) -> None:
    """The popcount loop nest of a bitserial kernel: register tiles where the target gets
    them (:func:`~tvm_mpq.schedules.default_schedules.bitserial_is_tiled`), else every plane
    sum in memory."""
    wb, ab = q.w_bits, q.a_bits
    out = t["out"]
    nw = math.ceil(cv.cg / wbits)
    taps = cv.kh * cv.kw
    t["bs_pop"] = out * wb * ab * nw * taps
    if bitserial_is_tiled(wb, ab, q.profile):
        kt, owt, _, unroll_ry = bitserial_tile(cv, wb, ab)
        g = plane_accumulators(wb, ab)
        tiles = float(cv.n * math.ceil(cv.k / kt) * cv.oh * math.ceil(cv.ow / owt))
        t["bs_tiles"] = tiles
        t["bs_wload"] = tiles * kt * wb * nw * taps
        t["bs_aload"] = tiles * ab * nw * cv.kh * ((owt - 1) * cv.stride[1] + cv.kw)
        t["bs_red"] = tiles * nw * (1 if unroll_ry else cv.kh)
        t["bs_acc"] = tiles * kt * owt * g
        # accumulators plus the words of one tap in registers: past ~20 of RISC-V's 31
        # the tile spills (w4a8 / w8a8: ~5.3 instead of ~3.7 instructions a popcount)
        if g * kt * owt + kt * wb + owt * ab > _TILE_REGS:
            t["bs_pop_hot"] = t["bs_pop"]
        iters = wb * (g if grouped_planes(wb, ab) else ab)
        if nw == 1 and taps == 1 and iters > _PLANE_UNROLL:
            # no reduction loop is left (unit loops vanish), so the schedule stops before
            # unrolling the plane loops; past LLVM's own full-unroll size the W x G loop
            # stays rolled with its grouped-plane Selects (measured: ~15 instructions per
            # iteration, 3-6x the unrolled cost at w4a8 / w8a8)
            t["bs_flat"] = out * iters
    else:  # plain lowering: every plane sum in memory
        t["bs_acc"] = out * wb * ab
        t["bs_red"] = out * wb * ab * nw * cv.kh
    if wb == 1:
        t["bs_asum_out"] = float(cv.n * cv.groups * ab * cv.oh * cv.ow)
        t["bs_asum"] = t["bs_asum_out"] * nw * taps


def _packing_counts(t: dict[str, float], q: CostQuery, cv: Conv2dWorkload, wbits: int) -> None:
    """Activation bit-packing of a bitserial kernel: blocked bit-slice transpose or per-pixel
    gather, then padding of the packed words."""
    ab = q.a_bits
    nw = math.ceil(cv.cg / wbits)
    hw = cv.h * cv.w
    s = pixel_block(hw, wbits) if cv.cg >= 8 else 0
    if s:
        nq = math.ceil(cv.cg / 8)
        t["pk_blk_bytes"] = float(cv.n * cv.c * hw)
        t["pk_blk_slices"] = float(cv.n * cv.groups * ab * nq * 8 * (hw // s))
        t["pk_blk_out"] = float(cv.n * cv.groups * hw * nw * ab * 8)
    else:
        t["pk_g_bytes"] = float(cv.n * cv.groups * nw * hw * wbits)
        t["pk_g_planes"] = float(cv.n * cv.groups * nw * hw * 8 * ab)
    if any(cv.padding):
        t["pk_pad"] = float(cv.n * cv.groups * cv.hp * cv.wp * nw * ab)


def _swar_counts(t: dict[str, float], q: CostQuery, cv: Conv2dWorkload, wbits: int) -> None:
    """The swar kernel: register tiles of packed multiply-adds, lane packing, the lane read-out
    and, where lanes are summed over blocks, one flush per block and output lane."""
    layout, lanes, _ = swar_kernel_lanes(cv, q.w_bits, q.a_bits, wbits)
    taps = cv.kh * cv.kw
    kt, owt = swar_tile(cv, q.w_bits, q.a_bits, layout, wbits)
    if layout == "pixels":  # one word per (channel, tap) for P columns
        cols = math.ceil(cv.ow / lanes)
        tiles = float(cv.n * (cv.k // kt) * cv.oh * (cols // owt))
        steps = float(taps * cv.cg)
        t["swar_pack_words"] = float(cv.n * cv.c * cv.hp * ((cols - 1) * cv.stride[1] + cv.kw))
        t["swar_extract"] = t["out"]
        t["swar_words"] = float(cv.n * cv.k * cv.oh * cols) * steps
        block = lane_block(cv, q.w_bits, q.a_bits, wbits)
        if block is not None:
            t["swar_flush"] = float(cv.n * cv.k * cv.oh * cols * (cv.cg // block) * lanes)
    else:
        nwp = math.ceil(cv.cg / lanes)
        tiles = float(cv.n * (cv.k // kt) * cv.oh * (cv.ow // owt))
        steps = float(taps * nwp)
        t["swar_pack_words"] = float(cv.n * cv.groups * cv.hp * cv.wp * nwp)
        t["swar_extract"] = t["out"]  # the biased top lane (signed lanes: no window sums)
        t["swar_words"] = t["out"] * steps
        bw = channel_block(cv, q.w_bits, q.a_bits, wbits)
        if bw is not None:
            t["swar_flush"] = t["out"] * (nwp // bw)
    t["swar_wload"] = tiles * kt * steps
    t["swar_aload"] = tiles * owt * steps
    t["swar_red"] = tiles * steps
    t["swar_tiles"] = tiles
    t["swar_pack"] = t["swar_pack_words"] * lanes


def _direct_counts(t: dict[str, float], q: CostQuery, cv: Conv2dWorkload) -> None:
    """The register-tiled direct lowering of fp32 / int8 / unpack (:func:`direct_tile`).

    Every MAC costs its multiply and add; per tile and input channel the tile's weights and
    the activations its windows cover are loaded once (:func:`direct_loads`); the reduction
    loop iterates per channel and kernel row, or per ``rc_unroll`` channels where the kernel
    rows are unrolled.
    """
    d = direct_tile(cv, q.variant)
    tiles = float(cv.n * (cv.k // d.kt) * (cv.oh // d.oht) * (cv.ow // d.owt))
    wload, aload = direct_loads(cv, d.kt, d.oht, d.owt)
    t["macs"] = float(cv.macs)
    t["dir_tiles"] = tiles
    t["dir_red"] = tiles * (cv.cg / d.rc_unroll if d.rows_unrolled else cv.cg * cv.kh)
    t["dir_wload"] = tiles * cv.cg * wload
    t["dir_aload"] = tiles * cv.cg * aload
    if q.variant == "unpack" and q.w_bits < 8:
        inner = cv.kw if cv.kw > 1 else cv.cg
        unrolled = inner * _UNPACK_BODY <= _UNROLL_BUDGET
        t["unpack_unrolled" if unrolled else "unpack"] = float(cv.k * cv.cg * cv.kh * cv.kw)


def analytic_terms(queries: Sequence[CostQuery]) -> np.ndarray:
    """Stage iteration counts ``(len(queries), len(ANALYTIC_TERMS))`` of each query's
    default lowering: the regressors of the cost model's analytic prior."""
    if not queries:
        return np.zeros((0, len(ANALYTIC_TERMS)))
    rows = []
    for q in queries:
        t = stage_counts(q, conv_view(q.workload), float(get_profile(q.profile).word_bits))
        rows.append([t[k] for k in ANALYTIC_TERMS])
    return np.asarray(rows, dtype=np.float64)
