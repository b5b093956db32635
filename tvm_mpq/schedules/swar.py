"""SWAR packed-multiply conv: P lanes per machine word, one ``mul`` + ``add`` = P MACs.

For cores without popcount or vector units (rv64gc): the arithmetic of ``bitserial`` needs a
popcount (~15 instructions without Zbb), that of ``int8`` one multiply per MAC. Two layouts:

* **channels** (:func:`swar_lanes`, ULPPACK): P input channels per word; a packed activation
  word times a packed (reversed) weight word holds their P-term dot product in the top lane.
  Needs cg >= P to fill the lanes: useless for depthwise layers (one channel per group).
* **pixels** (:func:`pixel_lanes`): P output columns per word. Activation word q of a row
  holds the inputs of columns q, q + Q, ..., q + (P-1) Q (Q = ceil(ow / P)); multiplied by
  one signed weight it advances P outputs at once, so every layer class fills its lanes,
  depthwise included. The lanes hold signed sums, read back with a bias per lane. Where
  narrower lanes would fit more per word, the sum runs over blocks of input channels
  (:func:`lane_block`) and each block's lanes are emptied into int32 sums.

:func:`swar_layout` picks the one with more filled lanes (ties: see there).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te

from tvm_mpq.schedules.conv2d import pad_te
from tvm_mpq.schedules.kernel import KernelDef
from tvm_mpq.schedules.workload import Conv2dWorkload

__all__ = [
    "channel_block", "channel_ktile", "channel_lane_bias", "conv2d_swar", "lane_block",
    "pixel_lanes", "swar_kernel_lanes", "swar_lanes", "swar_layout",
]


def swar_lanes(wl: Conv2dWorkload, w_bits: int, a_bits: int,
               word_bits: int = 64, block_words: int | None = None) -> tuple[int, int]:
    """(lanes P, lane width S) of the channel-lane swar kernel for ``wl`` at these bits.

    Activations a in [0, 2^A) and signed weights w in [-2^(W-1), 2^(W-1)) (1-bit: bipolar
    +-1) are packed P per word (``word_bits``: 64, or 32 on RV32), S bits apart, the weights in
    reverse lane order: the product then holds sum_i a_i * w_i in lane P-1 (lanes are signed
    sums; see :func:`channel_lane_bias`). Summing T such products per output (T = kh * kw *
    ceil(cg / P), or kh * kw * ``block_words`` when each block of that many packed words is
    emptied into an int32 sum), every lane stays inside its S bits once biased while
    T * P * max(a) * (max(w) - min(w)) < 2^S, and the lanes must fit: P * S <= word_bits. The
    most lanes that satisfy both win (ULPPACK, Won et al., MLSys 2022, on plain integer
    multiplies).
    """
    span = _lane_span(w_bits, a_bits)
    for p in range(8, 0, -1):
        s = word_bits // p
        t = wl.kh * wl.kw * (block_words or -(-wl.cg // p))
        if t * p * span < (1 << s) or p == 1:
            return p, s
    raise AssertionError("unreachable")


def _lane_span(w_bits: int, a_bits: int) -> int:
    """max(a) * (max(w) - min(w)): the width of one signed lane term's range."""
    return ((1 << a_bits) - 1) * (2 if w_bits == 1 else (1 << w_bits) - 1)


def channel_lane_bias(wl: Conv2dWorkload, w_bits: int, a_bits: int, word_bits: int = 64,
                      block_words: int | None = None) -> int:
    """The bias beta added to every lane of a channel-layout sum before it is read.

    Lane k (from the bottom) of a sum of T word products holds (k + 1) * T terms a_i * w_j
    in [-max(a) 2^(W-1), max(a) (2^(W-1) - 1)] (1-bit: +-max(a)): beta = P * T * max(a) *
    2^(W-1) makes every lane non-negative and, by :func:`swar_lanes`' bound, below 2^S, so
    adding beta to each lane of the word (once, at the end: the sum is exact modulo the
    word) separates the lanes; the top lane minus beta is the signed dot product."""
    p, _ = swar_lanes(wl, w_bits, a_bits, word_bits, block_words)
    t = wl.kh * wl.kw * (block_words or -(-wl.cg // p))
    return p * t * ((1 << a_bits) - 1) * (1 if w_bits == 1 else 1 << (w_bits - 1))


#: instructions per packed multiply-add and per block flush (bias add, shift, add) of the
#: blocked channel kernel, used only to compare lane counts: they underestimate Spike by ~20%
#: alike for both sides (dense 1024 -> 256 w2a2: rv32imc 0.84 vs 1.0 per MAC measured,
#: rv64gc 0.43 vs 0.54)
_CH_STEP, _CH_FLUSH = 2.6, 3.0


def channel_block(wl: Conv2dWorkload, w_bits: int, a_bits: int,
                  word_bits: int = 64) -> int | None:
    """Packed words per lane sum of the channel layout: None (all of them, no flush) unless
    blocks of words let more lanes fit per word at an estimated lower cost per MAC (a block
    count divides the words; each block's top lane is added into an int32 sum).

    Pays on long reductions with few taps, i.e. dense and wide pointwise layers, where the
    whole sum would need wide lanes (see docs/kernels.md, "Blocked channel lanes")."""
    taps = wl.kh * wl.kw
    if taps > 1:  # with a kernel window the tiles of block sums spill (pixel lanes block)
        return None
    span = _lane_span(w_bits, a_bits)

    def per_mac(p: int, bw: int | None) -> float:
        nwp = -(-wl.cg // p)
        t = taps * (bw or nwp)
        flush = 0.0 if bw is None else _CH_FLUSH
        return (_CH_STEP * t + flush) / (t * p * wl.cg / (nwp * p))

    p0 = swar_lanes(wl, w_bits, a_bits, word_bits)[0]
    best: tuple[float, int | None] = (per_mac(p0, None), None)
    for p in range(p0 + 1, 9):
        s = word_bits // p
        nwp = -(-wl.cg // p)
        fits = [b for b in range(1, nwp) if nwp % b == 0 and taps * b * p * span < (1 << s)]
        if fits and per_mac(p, max(fits)) < best[0]:
            best = (per_mac(p, max(fits)), max(fits))
    return best[1]


def channel_ktile(wl: Conv2dWorkload, w_bits: int = 8, a_bits: int = 8,
                  word_bits: int = 64) -> int:
    """Output channels per register tile of the channel layout: its packed weights are stored
    side by side. The largest divisor of the channels per group up to 4, or up to 8 for a
    dense layer (one column, nothing else to tile) unless its blocks are shorter than 8 words
    (Spike, rv32imc, dense 1024 -> 256 with blocks: w4a4 (128 words) 8 outputs 444K vs 4
    469K; w2a2 (4 words) 8 outputs 269K vs 4 251K: the 8 block sums spill)."""
    want = 4
    if wl.oh * wl.ow == 1 and wl.kh * wl.kw == 1:
        bw = channel_block(wl, w_bits, a_bits, word_bits)
        want = 4 if bw is not None and bw < 8 else 8
    return max(d for d in range(1, min(want, wl.kg) + 1) if wl.kg % d == 0)


def _swar_channels(wl: Conv2dWorkload, w_bits: int, a_bits: int, pad_value: int,
                   word_bits: int, block_words: int | None = None) -> KernelDef:
    """Lanes along the input channels: one multiply of two packed words is a P-term dot product.

    Weights are pre-packed (k / kt, kh, kw, words, kt) as signed lanes in reverse order; in
    pointwise and dense layers the kt output channels of the default schedule's register tile
    side by side (one pointer for the tile's weight loads: on RV32 four row pointers ran out
    of registers; on 3x3 layers it lost, rv64gc 64 -> 64 w2a2 23.2M vs 25.1M), else kt = 1;
    activations are padded (with ``pad_value``) and packed in the kernel, shifted so that the
    dot product's lane ends at the word's top bit. The sum is read back as ``((acc + B) >> shift) - beta``
    (B: :func:`channel_lane_bias` in every lane), so no zero-point correction is needed.
    ``block_words``: packed words per lane sum (None: all); each block's lane is added into
    an int32 sum, so it only holds a block's sum.
    """
    p, s = swar_lanes(wl, w_bits, a_bits, word_bits, block_words)
    beta = channel_lane_bias(wl, w_bits, a_bits, word_bits, block_words)
    nwp = -(-wl.cg // p)
    base = word_bits - p * s  # activation lanes start here: lane P-1 ends at the top bit
    wdt = f"uint{word_bits}"
    x = te.placeholder(wl.input_shape, "uint8", "x")
    # weights of a register tile side by side where that was measured to pay (taps == 1)
    kt = channel_ktile(wl, w_bits, a_bits, word_bits) if wl.kh * wl.kw == 1 else 1
    wpk = te.placeholder((wl.k // kt, wl.kh, wl.kw, nwp, kt), wdt, "w_packed")
    xp = pad_te(x, wl, pad_value)
    i = te.reduce_axis((0, p), "i")

    def pack(nn, g, hh, ww, j):
        c = j * p + i
        lane = xp[nn, tvm.te.min(g * wl.cg + c, wl.c - 1), hh, ww].astype(wdt)
        if nwp * p != wl.cg:  # ragged last word: lanes past cg are zero
            lane = tvm.tirx.if_then_else(c < wl.cg, lane, tvm.tirx.const(0, wdt))
        return te.sum(lane << (i * s + base).astype(wdt), axis=i)

    apk = te.compute((wl.n, wl.groups, wl.hp, wl.wp, nwp), pack, name="swar_pack")
    sh, sw = wl.stride
    ry = te.reduce_axis((0, wl.kh), "ry")
    rx = te.reduce_axis((0, wl.kw), "rx")

    def grp(k):
        return 0 if wl.groups == 1 else k // wl.kg

    shift = tvm.tirx.const(base + s * (p - 1), wdt)
    bias = tvm.tirx.const(sum(beta << (base + q * s) for q in range(p)) % (1 << word_bits), wdt)

    def lane(v):  # the biased top lane: the bits above it are gone modulo the word
        return ((v + bias) >> shift).astype("int32")

    if block_words is None:
        rj = te.reduce_axis((0, nwp), "rj")
        acc = te.compute(
            (wl.n, wl.k, wl.oh, wl.ow),
            lambda n, k, oh, ow: te.sum(apk[n, grp(k), oh * sh + ry, ow * sw + rx, rj]
                                        * wpk[k // kt, ry, rx, rj, k % kt],
                                        axis=[ry, rx, rj]),
            name="swar_acc")
        res = te.compute(wl.output_shape,
                         lambda n, k, oh, ow: lane(acc[n, k, oh, ow]) - beta, name="conv2d_swar")
    else:
        bw, nb = block_words, nwp // block_words
        rj = te.reduce_axis((0, bw), "rj")
        acc = te.compute(
            (wl.n, wl.k, wl.oh, wl.ow, nb),
            lambda n, k, oh, ow, b: te.sum(
                apk[n, grp(k), oh * sh + ry, ow * sw + rx, b * bw + rj]
                * wpk[k // kt, ry, rx, b * bw + rj, k % kt], axis=[ry, rx, rj]),
            name="swar_acc")
        rb = te.reduce_axis((0, nb), "rb")
        wide = te.compute((wl.n, wl.k, wl.oh, wl.ow),
                          lambda n, k, oh, ow: te.sum(lane(acc[n, k, oh, ow, rb]), axis=rb),
                          name="swar_wide")
        res = te.compute(wl.output_shape,
                         lambda n, k, oh, ow: wide[n, k, oh, ow] - nb * beta, name="conv2d_swar")

    def prep_w(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.int64)  # bipolar 1-bit weights are +-1 already
        lanes = np.zeros((wl.k, nwp * p, wl.kh, wl.kw), np.int64)  # channels past cg: 0
        lanes[:, :wl.cg] = a
        shifts = (s * (p - 1 - np.arange(p))).astype(np.uint64)  # reversed lane order
        # two's complement lanes summed modulo 2^64 (a borrow is part of the exact sum)
        parts = lanes.reshape(wl.k, nwp, p, wl.kh, wl.kw).astype(np.uint64) \
            << shifts[:, None, None]
        words = parts.sum(axis=2, dtype=np.uint64)
        if word_bits == 32:
            words &= np.uint64(0xFFFFFFFF)
        words = words.reshape(wl.k // kt, kt, nwp, wl.kh, wl.kw)
        words = words.transpose(0, 3, 4, 2, 1).astype(f"uint{word_bits}")  # (k/kt,kh,kw,nwp,kt)
        return np.ascontiguousarray(words)

    return KernelDef(wl, "swar", w_bits, a_bits, [x, wpk, res], prepare_weight=prep_w,
                     prepare_input=lambda a: a.astype(np.uint8), word_bits=word_bits,
                     pad_value=pad_value, attrs={"lanes": p, "lane_bits": s, "layout": "channels",
                                                 **({"block_words": block_words}
                                                    if block_words else {})})


def pixel_lanes(wl: Conv2dWorkload, w_bits: int, a_bits: int,
                word_bits: int = 64, block: int | None = None) -> tuple[int, int]:
    """(lanes P, lane width S) of the pixel layout for ``wl`` at these bits.

    A lane holds one output's signed sum L, |L| <= R * max|w| * max(a) with R = cg * kh * kw
    terms, max|w| = 2^(W-1) (1 for bipolar 1-bit weights) and max(a) = 2^A - 1; with a bias of
    2^(S-1) per lane it never leaves [0, 2^S) when that bound is below 2^(S-1). P =
    word_bits // S lanes, at most as many as the output columns need (P = ceil(ow / Q),
    Q = ceil(ow / P)). S <= 32 always: the outputs are int32.
    """
    maxw = 1 if w_bits == 1 else 1 << (w_bits - 1)
    bound = (block or wl.cg) * wl.kh * wl.kw * maxw * ((1 << a_bits) - 1)
    s = bound.bit_length() + 1
    p = max(1, min(word_bits // s, wl.ow))
    q = -(-wl.ow // p)
    return -(-wl.ow // q), s


#: instructions per packed multiply-add and per block flush (a bias add per word, then
#: shift + mask + add per lane) of the blocked pixel kernel: fitted on Spike (rv64gc and
#: rv32imc, 3x3 64 -> 64 at 28x28, w4a4 / w2a2 / w1a1, blocks of 4-32 channels)
_WORD_STEP, _FLUSH_LANE, _FLUSH_WORD = 2.7, 8.0, 4.0


def lane_block(wl: Conv2dWorkload, w_bits: int, a_bits: int,
                word_bits: int = 64) -> int | None:
    """Input channels per lane sum of the pixel layout: None (all of them, no flush) unless a
    block of channels lets narrower lanes fit more of them per word at an estimated lower
    cost per MAC (blocks divide cg; each block's lanes are emptied into int32 sums).

    Measured on Spike, 3x3 conv 1x64x28x28 -> 64, instructions (all channels -> block):
    rv64gc w4a4 32.8M -> 21.8M (3 -> 4 lanes, blocks of 16), w2a2 25.6M -> 17.7M (4 -> 6,
    8), w1a1 19.0M -> 13.7M (5 -> 7, 16); rv32imc w4a4 87.0M -> 43.1M (1 -> 2, 16), w2a2
    44.0M -> 32.3M (2 -> 3, 8). w8a8 keeps its two lanes (a block of 1 channel gives 3 on
    RV64 but loses: 46.5M vs 44.2M); pointwise layers are never blocked (pw 64 -> 128 at
    14x14, rv64gc w2a2: 2.49M, blocks of 32 3.06M)."""
    taps = wl.kh * wl.kw
    if taps == 1:  # a block of a pointwise layer is a few terms: its flush never pays
        return None

    def per_mac(cb: int | None) -> float:
        p, _ = pixel_lanes(wl, w_bits, a_bits, word_bits, cb)
        fill = wl.ow / -(-wl.ow // p)
        t = (cb or wl.cg) * taps
        flush = 0.0 if cb is None else _FLUSH_WORD + _FLUSH_LANE * p
        return (_WORD_STEP * t + flush) / (t * fill)

    blocks = [cb for cb in range(1, wl.cg) if wl.cg % cb == 0]
    return min([None, *blocks], key=lambda cb: (per_mac(cb), -(cb or wl.cg)))


def swar_layout(wl: Conv2dWorkload, w_bits: int, a_bits: int, word_bits: int = 64) -> str:
    """``"pixels"`` or ``"channels"``: the layout with more filled lanes per word (lanes are
    wasted where cg or ow is not a multiple of P). On a tie, pixels only for a layer with a
    kernel window at two lanes (w8a8-like), channels otherwise.

    Measured on Spike rv64gc_zbb / rv64gc (instructions, channels vs pixels): depthwise 3x3
    64 ch 28x28 w4a4 3.10M vs 0.85M (1 filled channel lane, 5 pixel lanes); ties: 3x3 conv
    1x64x28x28 -> 64 w8a8 53.3M vs 44.2M (2 lanes each), w4a4 30.3M vs 31.2M (3 each),
    w2a2 23.2M vs 25.6M (4 each); pointwise 64 -> 128 at 14x14 w8a8 2.83M vs 3.42M.
    """
    pc = swar_lanes(wl, w_bits, a_bits, word_bits, channel_block(wl, w_bits, a_bits, word_bits))[0]
    pp = pixel_lanes(wl, w_bits, a_bits, word_bits, lane_block(wl, w_bits, a_bits, word_bits))[0]
    fill_c = wl.cg / -(-wl.cg // pc)
    fill_p = wl.ow / -(-wl.ow // pp)
    if fill_p > fill_c or (fill_p == fill_c and wl.kw > 1 and pp <= 2):
        return "pixels"
    return "channels"


def conv2d_swar(wl: Conv2dWorkload, w_bits: int, a_bits: int, pad_value: int = 0,
                word_bits: int = 64, layout: str | None = None, block: int | None = None,
                block_words: int | None = None, **_) -> KernelDef:
    """The swar kernel of ``wl`` in ``layout`` (``"channels"`` or ``"pixels"``; None: the one
    :func:`swar_layout` picks) on ``word_bits`` (64, or 32: RV32's registers) words.
    ``block``: input channels per lane sum of the pixel layout (None: :func:`lane_block`);
    ``block_words``: packed words per lane sum of the channel layout (None:
    :func:`channel_block`). ``attrs["layout"]``, ``attrs["lanes"]``, ``attrs["lane_bits"]``
    (and ``attrs["block"]`` / ``attrs["block_words"]`` for a blocked kernel) say which it is."""
    if word_bits not in (32, 64):
        raise ValueError(f"swar word_bits must be 32 or 64, got {word_bits}")
    if block is not None and not (0 < block <= wl.cg and wl.cg % block == 0):
        raise ValueError(f"swar block must divide the {wl.cg} input channels per group, "
                         f"got {block}")
    layout = layout or swar_layout(wl, w_bits, a_bits, word_bits)
    if layout not in ("channels", "pixels"):
        raise ValueError(f"unknown swar layout {layout!r}: expected 'channels' or 'pixels'")
    if layout == "pixels":
        block = block or lane_block(wl, w_bits, a_bits, word_bits)
        return _swar_pixels(wl, w_bits, a_bits, pad_value, word_bits,
                            None if block == wl.cg else block)
    given = block_words is not None
    block_words = block_words if given else channel_block(wl, w_bits, a_bits, word_bits)
    nwp = -(-wl.cg // swar_lanes(wl, w_bits, a_bits, word_bits, block_words)[0])
    if given and not (0 < block_words <= nwp and nwp % block_words == 0):
        raise ValueError(f"swar block_words must divide the {nwp} packed words per "
                         f"window column, got {block_words}")
    return _swar_channels(wl, w_bits, a_bits, pad_value, word_bits,
                          None if block_words == nwp else block_words)


def _swar_pixels(wl: Conv2dWorkload, w_bits: int, a_bits: int, pad_value: int,
                 word_bits: int, block: int | None = None) -> KernelDef:
    """Lanes along the output columns; weights stay int8 (signed, bipolar +-1 at 1 bit).

    ``block`` input channels per lane sum (None: all of them): the lanes are emptied into
    int32 sums after each block, so they only need to hold a block's sum."""
    p, s = pixel_lanes(wl, w_bits, a_bits, word_bits, block)
    cb = wl.cg if block is None else block
    q_ = -(-wl.ow // p)
    sh, sw = wl.stride
    ncol = (q_ - 1) * sw + wl.kw  # packed words per row
    wdt = f"uint{word_bits}"
    x = te.placeholder(wl.input_shape, "uint8", "x")
    w = te.placeholder(wl.weight_shape, "int8", "w")
    xp = pad_te(x, wl, pad_value)
    j = te.reduce_axis((0, p), "j")
    ragged = (p - 1) * q_ * sw + ncol > wl.wp  # the last lane reads past the padded row

    def pack(n, c, hh, col):
        src = j * (q_ * sw) + col
        v = xp[n, c, hh, te.min(src, wl.wp - 1)].astype(wdt)
        if ragged:
            v = tvm.tirx.if_then_else(src < wl.wp, v, tvm.tirx.const(0, wdt))
        return te.sum(v << (j * s).astype(wdt), axis=j)

    apk = te.compute((wl.n, wl.c, wl.hp, ncol), pack, name="swar_pack")
    if cb != wl.cg:
        return _pixels_blocked(wl, w_bits, a_bits, pad_value, word_bits, (p, s, cb), x, w, apk)
    rc = te.reduce_axis((0, wl.cg), "rc")
    ry = te.reduce_axis((0, wl.kh), "ry")
    rx = te.reduce_axis((0, wl.kw), "rx")

    def chan(k):
        return rc if wl.groups == 1 else (k // wl.kg) * wl.cg + rc

    # the signed weight is sign-extended to the word: the product is exact modulo 2^word
    acc = te.compute(
        (wl.n, wl.k, wl.oh, q_),
        lambda n, k, oh, ow: te.sum(apk[n, chan(k), oh * sh + ry, ow * sw + rx]
                                    * w[k, rc, ry, rx].astype(wdt), axis=[rc, ry, rx]),
        name="swar_acc")
    bias = sum(1 << (i * s + s - 1) for i in range(p)) % (1 << word_bits)
    mask = tvm.tirx.const((1 << min(s, word_bits)) - 1, wdt)

    def out(n, k, oh, ow):
        v = acc[n, k, oh, ow % q_] + tvm.tirx.const(bias, wdt)
        lane = (v >> ((ow // q_) * s).astype(wdt)) & mask
        # L in signed arithmetic wide enough to hold it, not as the low 32 bits of the
        # unsigned difference: TVM folds a consumer's widening cast of that truncation into
        # the unsigned value (a fused requantize epilogue read 2^32 + L)
        if s < 32:
            return lane.astype("int32") - tvm.tirx.const(1 << (s - 1), "int32")
        return (lane.astype("int64") - tvm.tirx.const(1 << 31, "int64")).astype("int32")

    res = te.compute(wl.output_shape, out, name="conv2d_swar")
    return KernelDef(wl, "swar", w_bits, a_bits, [x, w, res],
                     prepare_weight=lambda a: np.asarray(a).astype(np.int8),
                     prepare_input=lambda a: a.astype(np.uint8), word_bits=word_bits,
                     pad_value=pad_value, attrs={"lanes": p, "lane_bits": s, "layout": "pixels"})


def swar_kernel_lanes(wl: Conv2dWorkload, w_bits: int, a_bits: int,
                      word_bits: int = 64) -> tuple[str, int, int]:
    """``(layout, lanes P, lane width S)`` of the swar kernel :func:`conv2d_swar` builds."""
    layout = swar_layout(wl, w_bits, a_bits, word_bits)
    if layout == "pixels":
        return (layout, *pixel_lanes(wl, w_bits, a_bits, word_bits,
                                     lane_block(wl, w_bits, a_bits, word_bits)))
    return (layout, *swar_lanes(wl, w_bits, a_bits, word_bits,
                                channel_block(wl, w_bits, a_bits, word_bits)))


def _pixels_blocked(wl: Conv2dWorkload, w_bits: int, a_bits: int, pad_value: int,
                    word_bits: int, lanes: tuple[int, int, int], x, w, apk) -> KernelDef:
    """Pixel lanes over blocks of ``cb`` input channels: the packed sum of each block
    (``swar_acc``, words) is split into its P lane sums and added into int32 sums
    (``swar_wide``): narrower lanes, more of them per word."""
    p, s, cb = lanes
    nb = wl.cg // cb
    q_ = -(-wl.ow // p)
    sh, sw = wl.stride
    wdt = f"uint{word_bits}"
    rc = te.reduce_axis((0, cb), "rc")
    ry = te.reduce_axis((0, wl.kh), "ry")
    rx = te.reduce_axis((0, wl.kw), "rx")

    def chan(k, b):
        c = b * cb + rc
        return c if wl.groups == 1 else (k // wl.kg) * wl.cg + c

    acc = te.compute(
        (wl.n, wl.k, wl.oh, q_, nb),
        lambda n, k, oh, ow, b: te.sum(apk[n, chan(k, b), oh * sh + ry, ow * sw + rx]
                                       * w[k, b * cb + rc, ry, rx].astype(wdt),
                                       axis=[rc, ry, rx]),
        name="swar_acc")
    bias = tvm.tirx.const(sum(1 << (i * s + s - 1) for i in range(p)) % (1 << word_bits), wdt)
    mask = tvm.tirx.const((1 << s) - 1, wdt)
    rb = te.reduce_axis((0, nb), "rb")
    wide = te.compute(
        (wl.n, wl.k, wl.oh, q_, p),
        lambda n, k, oh, ow, j: te.sum((((acc[n, k, oh, ow, rb] + bias) >> (j * s).astype(wdt))
                                        & mask).astype("int32"), axis=rb),
        name="swar_wide")
    half = tvm.tirx.const(nb << (s - 1), "int32")  # each block's lane carries a bias of 2^(S-1)
    res = te.compute(wl.output_shape,
                     lambda n, k, oh, ow: wide[n, k, oh, ow % q_, ow // q_] - half,
                     name="conv2d_swar")
    return KernelDef(wl, "swar", w_bits, a_bits, [x, w, res],
                     prepare_weight=lambda a: np.asarray(a).astype(np.int8),
                     prepare_input=lambda a: a.astype(np.uint8), word_bits=word_bits,
                     pad_value=pad_value,
                     attrs={"lanes": p, "lane_bits": s, "layout": "pixels", "block": cb})
