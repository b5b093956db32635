"""The register tiles of the default schedules (:mod:`default_schedules`), chosen from
instruction counts on Spike; the analytic cost model counts with the same tiles
(``costmodel.terms``)."""

from __future__ import annotations

from typing import NamedTuple

from tvm_mpq.schedules.workload import Conv2dWorkload


def fit_tile(extent: int, want: int) -> int:
    """The tile size used for a loop of ``extent`` when ``want`` is asked: the largest divisor
    of ``extent`` up to ``want`` (ragged tiles add predicates to the unrolled body)."""
    return max(d for d in range(1, min(want, extent) + 1) if extent % d == 0)


class BitserialTile(NamedTuple):
    """The register tile of the default bitserial schedule (:func:`bitserial_tile`).

    Attributes:
        kt, owt: output channels x output columns per tile.
        k_outer: k tiles outermost (weights reused across the row) instead of innermost.
        unroll_ry: the kernel rows are unrolled too (the whole window is).
    """

    kt: int
    owt: int
    k_outer: bool
    unroll_ry: bool


def bitserial_tile(wl: Conv2dWorkload, w_bits: int, a_bits: int) -> BitserialTile:
    """The register tile the default schedule gives bitserial conv ``wl`` at these bits
    (the cost model's analytic terms count the schedule's loops with it).

    Measured on rv64gc_zbb (Spike, 1x64x28x28 -> 64, 3x3; rocket-rv64 model). What limits
    the tile is registers: G accumulators per output (A for bipolar 1-bit weights, W+A-1
    with grouped planes, see ``conv2d.grouped_planes``), plus the loaded words. Measured:
    G = 1 (w1a1) is best with 4 outputs along ow sharing each weight word and k innermost
    (the window's activation words stay in registers across k); G <= 3 (w2a2) with 2
    outputs; larger G with one output, k outermost and the whole kernel window unrolled
    (w4a4: 83.6% of the 64/(3WA) limit vs 68% with a 2x2 tile of serial planes). A k tile
    never straddles two groups (they read different activation words).
    """
    from tvm_mpq.schedules.conv2d import plane_accumulators

    g = plane_accumulators(w_bits, a_bits)
    if wl.kh * wl.kw == 1:  # pointwise: no window, so more outputs fit the registers
        if g == 1:
            tile = BitserialTile(1, fit_tile(wl.ow, 7), False, False)
        elif g <= 3 and fit_tile(wl.ow, 4) == 4:  # 4 along ow ...
            tile = BitserialTile(1, 4, False, False)
        elif g <= 3:  # ... else 2 x 2 (k x ow)
            tile = BitserialTile(fit_tile(wl.kg, 2), fit_tile(wl.ow, 2), False, False)
        else:
            tile = BitserialTile(1, fit_tile(wl.ow, 2), False, False)
    elif g == 1:
        tile = BitserialTile(1, fit_tile(wl.ow, 4), False, False)
    elif g <= 3:
        tile = BitserialTile(1, fit_tile(wl.ow, 2), False, False)
    else:
        tile = BitserialTile(1, 1, True, True)
    if wl.groups > 1 and tile.kt > 1 and wl.kg % tile.kt:
        tile = tile._replace(kt=1)
    return tile


def swar_tile(wl: Conv2dWorkload, w_bits: int = 8, a_bits: int = 8,
              layout: str | None = None, word_bits: int = 64,
              block: int | None = None) -> tuple[int, int]:
    """``(kt, owt)``: the k x ow register tile of 64-bit accumulators the default swar schedule
    uses for ``wl`` at these bits (ow counts packed words in the pixel layout; ``layout``
    None: the one :func:`~tvm_mpq.schedules.swar.swar_layout` picks).

    Channel lanes: 4 x 4 where the extents allow. Pixel lanes (Spike, rv64gc_zbb,
    instructions per MAC): depthwise 3x3 1 x 7 words (w4a4 1.89; 4 x 4 1.97); 3x3 conv
    4 x 2 (w8a8 1.54, 4 x 7 spills: 2.2); pointwise 4 x 4 at 2 lanes (w8a8 1.81), else
    1 x 14 (w4a4 1.07 vs 1.18). Blocked pixel lanes (``block`` channels per lane sum; None:
    :func:`~tvm_mpq.schedules.swar.lane_block`): 1 x 7 (rv64gc w4a4 0.75 per MAC; 4 x 1
    0.93, 2 x 2 1.00; rv32imc w4a4 1.49, 2 x 2 1.53, 1 x 14 1.92).
    """
    from tvm_mpq.schedules.swar import channel_ktile, lane_block, pixel_lanes, swar_layout

    layout = layout or swar_layout(wl, w_bits, a_bits, word_bits)
    if layout == "channels":  # the weights are packed for this kt (swar.channel_ktile)
        return channel_ktile(wl, w_bits, a_bits, word_bits), fit_tile(wl.ow, 4)
    block = lane_block(wl, w_bits, a_bits, word_bits) if block is None else block
    block = None if block == wl.cg else block
    lanes = pixel_lanes(wl, w_bits, a_bits, word_bits, block)[0]
    cols = -(-wl.ow // lanes)
    if block is not None or (wl.groups > 1 and wl.kg == 1):
        return 1, fit_tile(cols, 7)
    if wl.kh * wl.kw > 1:
        return fit_tile(wl.kg, 4), fit_tile(cols, 2)
    return (fit_tile(wl.kg, 4), fit_tile(cols, 4)) if lanes <= 2 else (1, fit_tile(cols, 14))


class DirectTile(NamedTuple):
    """The register tile of the default fp32 / int8 / unpack schedule (:func:`direct_tile`).

    Attributes:
        kt, owt: output channels x output columns per tile.
        oht: output rows per tile (> 1: the kernel rows are unrolled and an input row's
            activations serve every output row whose window covers it).
        rc_unroll: input channels per iteration of the reduction loop (its body unrolled).
    """

    kt: int
    owt: int
    oht: int = 1
    rc_unroll: int = 1

    @property
    def rows_unrolled(self) -> bool:
        """Whether the schedule unrolls the kernel rows (two output rows, or several input
        channels per reduction iteration)."""
        return self.oht > 1 or self.rc_unroll > 1


def feature_blocked(wl: Conv2dWorkload) -> bool:
    """Whether ``wl``'s int8 weight is stored blocked by output features
    (``conv2d.feature_block``): a layer whose output is one pixel, with a 1x1 kernel and no
    groups (a dense layer, or a pointwise conv on a 1x1 map)."""
    return wl.oh * wl.ow == 1 and wl.kh * wl.kw == 1 and wl.groups == 1


def direct_loads(wl: Conv2dWorkload, kt: int, oht: int, owt: int) -> tuple[int, int]:
    """``(weights, activations)`` a ``kt x oht x owt`` register tile loads per input channel:
    its kt x kh x kw weights, and the input rows x columns its windows cover, each once (the
    kernel window unrolled keeps them in registers; with one output row that is kh rows of
    the tile's columns, the per-row count before rows were tiled)."""
    rows = (oht - 1) * wl.stride[0] + wl.kh
    cols = (owt - 1) * wl.stride[1] + wl.kw
    return kt * wl.kh * wl.kw, rows * cols


def direct_tile(wl: Conv2dWorkload, variant: str) -> DirectTile:
    """The register tile of the default fp32 / int8 / unpack schedule (:class:`DirectTile`).

    fp32: 4x4 (3x3 conv 1x64x28x28 -> 64, instructions per MAC on Spike, plain lowering ->
    tile: 3.56 -> 1.53; pointwise 64 -> 32: 7.1 -> 1.79). int8 / unpack: of the tiles that
    divide the layer, up to 8 accumulators with a kernel window (its unrolled activation
    columns stay live too; 16 spill) and 16 without, the one that loads the fewest weights and
    activations per MAC (:func:`direct_loads`; rv64gc_zbb and rv32imc alike). With a kernel
    window the tile may span 2 output rows when it spans 2 or more channels (1 channel x 2
    rows x 4 columns measured 2.64 per MAC against 2.51 for 2 x 2 x 2, which the load count
    ranks the other way), and the reduction loop takes 4 input channels per iteration.
    Per MAC, old tile -> this (rv32imc): 3x3 1x64x28x28 -> 64 2x4 2.55 -> 2x2x2 2.51,
    1x64x14x14 -> 64 1x7 2.63 -> 2x2x2 2.50, 1x64x7x7 -> 128 1x7 2.63 -> 2.60 (4 channels per
    iteration); pointwise 1x64x14x14 -> 128 8x2 2.86, 1x96x7x7 -> 160 2x7 3.17, 1x96x4x4 ->
    16 4x4 2.73 (no channel unrolling: 2 channels per iteration helps the 2x7 tile, 2.92, and
    loses on 4x4 tiles, 4.00 -> 4.17). Depthwise 3x3 int8 3.68 -> 2.96 (1 x 7 columns).
    Dense (and pointwise on a 1x1 map) int8: the weight blocked by features
    (``conv2d.feature_block``), 16 features x 2 channels per iteration (1024 -> 256: OIHW 8
    features 3.88, blocked 8 features 3.50, 8 x 4 channels 3.22, 16 x 2 3.16); unpack and
    fp32 keep OIHW and 8 features (256 -> 64 int8 7.0 -> 3.5 before the blocking).
    """
    if wl.groups > 1 and wl.kg == 1:  # depthwise: one output channel per group
        return DirectTile(1, fit_tile(wl.ow, 7))
    if wl.oh * wl.ow == 1:  # dense (a 1x1 conv on a 1x1 map): tile the output features
        if variant == "int8" and feature_blocked(wl):  # (conv2d.feature_block)
            return DirectTile(fit_tile(wl.kg, 16), 1, 1, fit_tile(wl.cg, 2))
        return DirectTile(fit_tile(wl.kg, 8), 1)
    if variant == "fp32":
        return DirectTile(fit_tile(wl.kg, 4), fit_tile(wl.ow, 4))
    window = wl.kh * wl.kw > 1
    cap = 8 if window else 16

    def loads(t: tuple[int, int, int]) -> float:  # per MAC
        return sum(direct_loads(wl, *t)) / (t[0] * t[1] * t[2] * wl.kh * wl.kw)

    tiles = [(kt, oht, owt) for kt in range(1, min(cap, wl.kg) + 1) if wl.kg % kt == 0
             for oht in ((1, 2) if window and kt >= 2 and wl.oh % 2 == 0 else (1,))
             for owt in range(1, min(7, wl.ow) + 1)
             if wl.ow % owt == 0 and kt * oht * owt <= cap]
    kt, oht, owt = min(tiles, key=lambda t: (loads(t), -t[0] * t[1] * t[2], t[1]))
    return DirectTile(kt, owt, oht, fit_tile(wl.cg, 4) if window else 1)
