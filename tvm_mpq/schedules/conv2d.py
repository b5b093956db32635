"""Quantized conv2d computations (NCHW at the API) for every kernel variant.

All variants compute  out[n, k, oh, ow] = sum_{c, r, s} x_pad[n, g*cg + c, oh*sh + r, ow*sw + s]
* w[k, c, r, s]  with g = k // kg, x unsigned a-bit, w signed w-bit, padding
filled with ``pad_value`` (the activation zero point in a quantized model).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te

from tvm_mpq.schedules.kernel import KernelDef
from tvm_mpq.schedules.packing import n_words, pack_bitplanes, pack_subbyte, weight_code, word_dtype
from tvm_mpq.schedules.workload import Conv2dWorkload


def pad_te(data: te.Tensor, wl: Conv2dWorkload, pad_value, name: str = "pad") -> te.Tensor:
    """``data`` padded as ``wl`` says, with ``pad_value`` (the input itself when unpadded)."""
    t, left, _, _ = wl.padding
    if not any(wl.padding):
        return data
    value = tvm.tirx.const(pad_value, data.dtype)

    def f(n, c, h, w):
        inside = tvm.tirx.all(h >= t, h < t + wl.h, w >= left, w < left + wl.w)
        return tvm.tirx.if_then_else(inside, data[n, c, h - t, w - left], value)

    return te.compute((wl.n, wl.c, wl.hp, wl.wp), f, name=name)


def _in_channel(wl: Conv2dWorkload, k, rc):
    return rc if wl.groups == 1 else (k // wl.kg) * wl.cg + rc


def _direct(wl: Conv2dWorkload, data: te.Tensor, weight: te.Tensor, acc: str,
            name: str) -> te.Tensor:
    """Direct grouped convolution of a padded input with an OIHW weight."""
    rc = te.reduce_axis((0, wl.cg), "rc")
    ry = te.reduce_axis((0, wl.kh), "ry")
    rx = te.reduce_axis((0, wl.kw), "rx")
    sh, sw = wl.stride
    return te.compute(
        wl.output_shape,
        lambda n, k, oh, ow: te.sum(
            data[n, _in_channel(wl, k, rc), oh * sh + ry, ow * sw + rx].astype(acc)
            * weight[k, rc, ry, rx].astype(acc),
            axis=[rc, ry, rx]),
        name=name)


def conv2d_fp32(wl: Conv2dWorkload, w_bits: int = 8, a_bits: int = 8, pad_value: int = 0,
                **_) -> KernelDef:
    """Float baseline: float32 input and weight, float32 accumulation."""
    x = te.placeholder(wl.input_shape, "float32", "x")
    w = te.placeholder(wl.weight_shape, "float32", "w")
    out = _direct(wl, pad_te(x, wl, float(pad_value)), w, "float32", "conv2d_fp32")
    return KernelDef(wl, "fp32", w_bits, a_bits, [x, w, out],
                     prepare_weight=lambda a: a.astype(np.float32),
                     prepare_input=lambda a: a.astype(np.float32), pad_value=pad_value)


def feature_block(wl: Conv2dWorkload) -> int | None:
    """Output features stored side by side in the int8 weight of a layer whose output is one
    pixel (a dense layer, or a pointwise conv on a 1x1 map): the register tile's ``kt``
    (:func:`~tvm_mpq.schedules.tiles.direct_tile`); None for every other layer (OIHW).

    Weight (k // kt, c, kt): a tile's kt weights of one input channel are adjacent, so one
    pointer with constant offsets reaches them. In OIHW the tile's kt weight rows lie a whole
    row apart (over the 12-bit load offset for c > 2048 / kt), each on its own pointer,
    incremented per channel (dense 1024 -> 256, Spike, instructions per MAC: 3.88 in OIHW,
    3.16 blocked by 16, two channels per iteration)."""
    from tvm_mpq.schedules.tiles import direct_tile, feature_blocked

    return direct_tile(wl, "int8").kt if feature_blocked(wl) else None


def conv2d_int8(wl: Conv2dWorkload, w_bits: int = 8, a_bits: int = 8, pad_value: int = 0,
                **_) -> KernelDef:
    """uint8 activations x int8 weights -> int32 (any bits <= 8 stored as bytes); the weight
    in OIHW, or blocked by output features on a one-pixel output (:func:`feature_block`)."""
    x = te.placeholder(wl.input_shape, "uint8", "x")
    data = pad_te(x, wl, pad_value)
    kt = feature_block(wl)
    if kt is None:
        w = te.placeholder(wl.weight_shape, "int8", "w")
        out = _direct(wl, data, w, "int32", "conv2d_int8")
        return KernelDef(wl, "int8", w_bits, a_bits, [x, w, out],
                         prepare_weight=lambda a: a.astype(np.int8),
                         prepare_input=lambda a: a.astype(np.uint8), pad_value=pad_value)
    w = te.placeholder((wl.k // kt, wl.c, kt), "int8", "w")
    rc = te.reduce_axis((0, wl.c), "rc")
    out = te.compute(
        wl.output_shape,
        lambda n, k, oh, ow: te.sum(
            data[n, rc, oh, ow].astype("int32") * w[k // kt, rc, k % kt].astype("int32"),
            axis=[rc]),
        name="conv2d_int8")

    def prep_w(a: np.ndarray) -> np.ndarray:
        blocks = np.asarray(a).astype(np.int8).reshape(wl.k // kt, kt, wl.c)
        return np.ascontiguousarray(blocks.transpose(0, 2, 1))

    return KernelDef(wl, "int8", w_bits, a_bits, [x, w, out], prepare_weight=prep_w,
                     prepare_input=lambda a: a.astype(np.uint8), pad_value=pad_value,
                     attrs={"feature_block": kt})


def decode_subbyte(field, w_bits: int):
    """TIR: an unsigned w-bit field -> its signed int32 value (bipolar for 1 bit)."""
    v = field.astype("int32")
    if w_bits == 1:
        return v * 2 - 1
    sign = 1 << (w_bits - 1)
    return (v ^ sign) - sign


def conv2d_unpack(wl: Conv2dWorkload, w_bits: int, a_bits: int, pad_value: int = 0,
                  **_) -> KernelDef:
    """Sub-byte packed weights (8 // w_bits per byte), unpacked to int8 for the arithmetic.

    Each output channel's (c, r, s) weights are flattened and packed into bytes;
    the unpack stage is a separate TE stage a schedule can place per output tile.
    """
    x = te.placeholder(wl.input_shape, "uint8", "x")
    length = wl.cg * wl.kh * wl.kw
    if w_bits == 8:
        wp = te.placeholder(wl.weight_shape, "int8", "w")
        wu = wp
    else:
        per = 8 // w_bits
        wp = te.placeholder((wl.k, -(-length // per)), "uint8", "w_packed")
        mask = (1 << w_bits) - 1

        def unpack(k, c, r, s):
            idx = (c * wl.kh + r) * wl.kw + s
            byte = wp[k, idx // per]
            field = (byte >> ((idx % per) * w_bits).astype("uint8")) & tvm.tirx.const(mask, "uint8")
            return decode_subbyte(field, w_bits).astype("int8")

        wu = te.compute(wl.weight_shape, unpack, name="w_unpack")
    out = _direct(wl, pad_te(x, wl, pad_value), wu, "int32", "conv2d_unpack")

    def prep_w(a: np.ndarray) -> np.ndarray:
        if w_bits == 8:
            return a.astype(np.int8)
        return pack_subbyte(a.reshape(wl.k, length), w_bits)

    return KernelDef(wl, "unpack", w_bits, a_bits, [x, wp, out], prepare_weight=prep_w,
                     prepare_input=lambda a: a.astype(np.uint8), pad_value=pad_value)


def pack_act_te(data: te.Tensor, groups: int, cg: int, a_bits: int, word_bits: int,
                name: str = "a_pack") -> te.Tensor:
    """TIR bit-packing of (n, c, h, w) unsigned activations along channels within each group.

    Result (n, groups, a_bits, words, h, w); bit j of word cw holds channel cw*word_bits + j
    of the group; channels past cg are zero.

    Two stages, SWAR style: ``a_bytes`` gathers word_bits/8 channel bytes into one word (8
    such groups per packed word), then each plane's bits of a group are collected with one
    multiply: ((v >> b) & 0x0101..01) * magic >> shift puts bit 0 of byte i at bit i. That is
    ~1 instruction per (channel, plane) instead of ~4 for a per-bit shift-and-or.
    """
    n, _, h, w = (int(d) for d in data.shape)
    nw = n_words(cg, word_bits)
    wdt = word_dtype(word_bits)
    gb = max(1, word_bits // 8)  # channel bytes per gathered word
    groups_per_word = word_bits // gb
    i = te.reduce_axis((0, gb), "i")

    def gather(nn, g, cw, q, hh, ww):
        c = cw * word_bits + q * gb + i
        src = data[nn, g * cg + c, hh, ww] if groups > 1 else data[nn, c, hh, ww]
        byte = src.astype(wdt)
        if nw * word_bits != cg:  # ragged last word: channels past cg contribute zero
            byte = tvm.tirx.if_then_else(c < cg, byte, tvm.tirx.const(0, wdt))
        return te.sum(byte << (i * 8).astype(wdt), axis=i)

    abytes = te.compute((n, groups, nw, groups_per_word, h, w), gather, name=name + "_bytes")
    ones = sum(1 << (8 * k) for k in range(gb))  # bit 0 of every byte
    magic = sum(1 << (8 * (gb - 1) - 7 * k) for k in range(gb))  # byte i bit 0 -> bit 8(gb-1)+i
    q = te.reduce_axis((0, groups_per_word), "q")

    def f(nn, g, b, cw, hh, ww):
        v = (abytes[nn, g, cw, q, hh, ww] >> b.astype(wdt)) & tvm.tirx.const(ones, wdt)
        bits = (v * tvm.tirx.const(magic, wdt)) >> tvm.tirx.const(8 * (gb - 1), wdt)
        return te.sum(bits << (q * gb).astype(wdt), axis=q)

    return te.compute((n, groups, a_bits, nw, h, w), f, name=name)


def pixel_block(hw: int, word_bits: int) -> int:
    """Pixels loaded per activation read in the blocked packing (0: use the gather packing).

    The blocked packing reads ``s`` consecutive pixels of one channel as one s-byte word (LLVM
    merges the byte loads into one aligned ``lw``/``ld``: buffers are 64-byte aligned and
    ``s`` divides H*W, so every block is s-aligned); it needs 64-bit words.
    """
    if word_bits != 64:
        return 0
    for s in (8, 4, 2):
        if hw % s == 0:
            return s
    return 0


def pack_act_blocked_te(data: te.Tensor, groups: int, cg: int, a_bits: int, s: int,
                        name: str = "a_pack") -> te.Tensor:
    """Bit-plane packing through a bit-slice transpose (64-bit words, ``s`` pixels per read).

    1. ``a_pack_blocks``: s pixels of one channel as one word (one aligned load).
    2. ``a_pack_slices``: per plane b and 8-channel chunk q, byte i of the word holds bit b of
       the chunk's 8 channels at pixel i: OR_j ((blk_j >> b) & 0x0101..) << j, 4 instructions
       per channel and plane for s pixels at once.
    3. ``a_pack``: the packed word of a pixel collects its byte from the word's 8 chunks.

    Result (n, groups, h*w, words, a_bits): flat over pixels, planes innermost (the layout of
    ``_pad_packed``'s result, which without padding is then a pure view); same bits as
    :func:`pack_act_te`. ~60 instructions per pixel and plane for 64 channels instead of
    ~6 per channel byte for the per-pixel gather (whose 64 strided byte loads need 64 pointers).
    """
    n, _, h, w = (int(d) for d in data.shape)
    hw = h * w
    nw = n_words(cg, 64)
    nq = -(-cg // 8)  # 8-channel chunks holding real channels (the rest of a word is zero)
    u64 = "uint64"
    bor = te.comm_reducer(lambda a, b: a | b, lambda t: tvm.tirx.const(0, t), name="bit_or")
    i = te.reduce_axis((0, s), "i")

    def block(nn, c, pb):
        p = pb * s + i
        return bor(data[nn, c, p // w, p % w].astype(u64) << (i * 8).astype(u64), axis=i)

    blocks = te.compute((n, groups * cg, hw // s), block, name=name + "_blocks")
    ones = tvm.tirx.const(sum(1 << (8 * k) for k in range(s)), u64)
    j = te.reduce_axis((0, 8), "j")

    def slices(nn, g, b, q, pb):
        c = q * 8 + j
        src = blocks[nn, g * cg + c, pb] if groups > 1 else blocks[nn, c, pb]
        if nq * 8 != cg:  # ragged last chunk: channels past cg are zero (and not read)
            src = tvm.tirx.if_then_else(c < cg, blocks[nn, tvm.te.min(g * cg + c, groups * cg - 1), pb],
                                        tvm.tirx.const(0, u64))
        return bor(((src >> b.astype(u64)) & ones) << j.astype(u64), axis=j)

    sl = te.compute((n, groups, a_bits, nq, hw // s), slices, name=name + "_slices")
    qq = te.reduce_axis((0, 8), "qq")

    def packed(nn, g, p, cw, b):
        q = cw * 8 + qq
        word = sl[nn, g, b, tvm.te.min(q, nq - 1), p // s] if nq % 8 else sl[nn, g, b, q, p // s]
        byte = (word >> ((p % s) * 8).astype(u64)) & tvm.tirx.const(0xFF, u64)
        if nq % 8:  # chunks past the last real one are zero (a constant once qq is unrolled)
            byte = tvm.tirx.Select(q < nq, byte, tvm.tirx.const(0, u64))
        return bor(byte << (qq * 8).astype(u64), axis=qq)

    return te.compute((n, groups, hw, nw, a_bits), packed, name=name)


def _pad_packed(packed: te.Tensor, wl: Conv2dWorkload, pad_value: int, word_bits: int,
                name: str = "a_pack_pad") -> te.Tensor:
    """Pad the packed activations spatially with the packed word of ``pad_value``.

    Padding after packing costs one word per border position and plane instead of one
    conditional per channel in the packing loop (and keeps the packing loop branch-free).
    ``packed`` is (n, groups, planes, words, h, w) or flat over pixels (n, groups, h*w, words,
    planes); the result is (n, groups, hp, wp, words, planes): all words of a pixel are
    adjacent, so the whole kernel window of a tile is in reach of one base register (12-bit
    load offsets on RISC-V).
    """
    t, left, _, _ = wl.padding
    flat = len(packed.shape) == 5

    def read(nn, g, b, cw, hh, ww):
        return packed[nn, g, hh * wl.w + ww, cw, b] if flat else packed[nn, g, b, cw, hh, ww]

    if flat:
        n, groups, _, nw, a_bits = (int(d) for d in packed.shape)
    else:
        n, groups, a_bits, nw = (int(d) for d in packed.shape[:4])
    if not any(wl.padding):
        return te.compute((n, groups, wl.h, wl.w, nw, a_bits),
                          lambda nn, g, hh, ww, cw, b: read(nn, g, b, cw, hh, ww), name=name)
    wdt = word_dtype(word_bits)
    rem = wl.cg - (nw - 1) * word_bits  # valid channels in the last word

    def const_word(nbits: int, b: int):
        return tvm.tirx.const(((1 << nbits) - 1) if (pad_value >> b) & 1 else 0, wdt)

    def pad_word(b, cw):
        # a Select chain of Python-computed constants (TIR arithmetic on uint64 constants
        # such as 0 - 1 is not reliably wrapped by the simplifier)
        word = const_word(rem, a_bits - 1) if nw == 1 else tvm.tirx.Select(
            cw == nw - 1, const_word(rem, a_bits - 1), const_word(word_bits, a_bits - 1))
        for bb in range(a_bits - 2, -1, -1):
            wb = const_word(rem, bb) if nw == 1 else tvm.tirx.Select(
                cw == nw - 1, const_word(rem, bb), const_word(word_bits, bb))
            word = tvm.tirx.Select(b == bb, wb, word)
        return word

    def f(nn, g, hh, ww, cw, b):
        inside = tvm.tirx.all(hh >= t, hh < t + wl.h, ww >= left, ww < left + wl.w)
        return tvm.tirx.if_then_else(inside, read(nn, g, b, cw, hh - t, ww - left),
                                     pad_word(b, cw))

    return te.compute((n, groups, wl.hp, wl.wp, nw, a_bits), f, name=name)


def conv2d_bitserial(wl: Conv2dWorkload, w_bits: int, a_bits: int, pad_value: int = 0,
                     word_bits: int = 64, **_) -> KernelDef:
    """Bit-serial conv: AND + popcount per (weight plane, activation plane), then combine.

    Weights are pre-packed (k, kh, kw, words, w_bits); activations are padded and
    packed in the kernel. Per-plane popcount sums are accumulated separately and
    shifted once per output (not per word). Signed weights: two's complement planes
    with a negative top plane; 1-bit weights are bipolar, w = 2b - 1, so
    sum(w*a) = 2*sum(b*a) - sum(a).
    """
    wdt = word_dtype(word_bits)
    nw = n_words(wl.cg, word_bits)
    x = te.placeholder(wl.input_shape, "uint8", "x")
    wp = te.placeholder((wl.k, wl.kh, wl.kw, nw, w_bits), wdt, "w_packed")
    blk = pixel_block(wl.h * wl.w, word_bits) if wl.cg >= 8 else 0
    packed = (pack_act_blocked_te(x, wl.groups, wl.cg, a_bits, blk) if blk
              else pack_act_te(x, wl.groups, wl.cg, a_bits, word_bits))
    apack = _pad_packed(packed, wl, pad_value, word_bits)
    sh, sw = wl.stride
    rc = te.reduce_axis((0, nw), "rc")
    ry = te.reduce_axis((0, wl.kh), "ry")
    rx = te.reduce_axis((0, wl.kw), "rx")

    def grp(k):
        return 0 if wl.groups == 1 else k // wl.kg

    if grouped_planes(w_bits, a_bits):
        return _bitserial_grouped(wl, w_bits, a_bits, pad_value, word_bits, x, wp, apack, grp)
    planes = te.compute(
        (wl.n, wl.k, w_bits, a_bits, wl.oh, wl.ow),
        lambda n, k, bw, ba, oh, ow: te.sum(
            tvm.tirx.popcount(apack[n, grp(k), oh * sh + ry, ow * sw + rx, rc, ba]
                              & wp[k, ry, rx, rc, bw]).astype("int32"),
            axis=[rc, ry, rx]),
        name="bitserial_planes")
    asum = None
    if w_bits == 1:
        rc2 = te.reduce_axis((0, nw), "rc2")
        ry2 = te.reduce_axis((0, wl.kh), "ry2")
        rx2 = te.reduce_axis((0, wl.kw), "rx2")
        # sum of activations over the window, per group (shared by all k of the group)
        asum = te.compute(
            (wl.n, wl.groups, a_bits, wl.oh, wl.ow),
            lambda n, g, ba, oh, ow: te.sum(
                tvm.tirx.popcount(apack[n, g, oh * sh + ry2, ow * sw + rx2, rc2, ba]).astype(
                    "int32"),
                axis=[rc2, ry2, rx2]),
            name="bitserial_asum")

    # The plane combination is itself a small reduction (not an unrolled sum of constant
    # plane indices): MetaSchedule's compute-at analysis fails on constant-index reads.
    rba = te.reduce_axis((0, a_bits), "rba")
    if w_bits == 1:
        def combine(n, k, oh, ow):
            term = planes[n, k, 0, rba, oh, ow] * 2 - asum[n, grp(k), rba, oh, ow]
            return te.sum(term << rba, axis=rba)
    else:
        rbw = te.reduce_axis((0, w_bits), "rbw")

        def combine(n, k, oh, ow):
            mag = planes[n, k, rbw, rba, oh, ow] << (rbw + rba)
            signed = tvm.tirx.Select(rbw == w_bits - 1, -mag, mag)
            return te.sum(signed, axis=[rbw, rba])

    out = te.compute(wl.output_shape, combine, name="conv2d_bitserial")
    return _bitserial_kdef(wl, w_bits, a_bits, pad_value, word_bits, x, wp, out)


def _bitserial_kdef(wl, w_bits, a_bits, pad_value, word_bits, x, wp, out) -> KernelDef:
    def prep_w(a: np.ndarray) -> np.ndarray:
        # (k, cg, kh, kw) -> planes along cg: (k, w_bits, nw, kh, kw) -> (k, kh, kw, nw, w_bits)
        planes = pack_bitplanes(weight_code(a, w_bits), w_bits, axis=1, word_bits=word_bits)
        return np.ascontiguousarray(planes.transpose(0, 3, 4, 2, 1))

    return KernelDef(wl, "bitserial", w_bits, a_bits, [x, wp, out], prepare_weight=prep_w,
                     prepare_input=lambda a: a.astype(np.uint8), word_bits=word_bits,
                     pad_value=pad_value)


def grouped_planes(w_bits: int, a_bits: int) -> bool:
    """Whether plane pairs are accumulated by shift (fewer accumulators than W*A pairs)."""
    return w_bits >= 2 and w_bits + a_bits - 1 < w_bits * a_bits


def plane_accumulators(w_bits: int, a_bits: int) -> int:
    """Accumulators per output of the bitserial kernel: A for bipolar 1-bit weights, W+A-1
    with grouped planes, else W*A (what limits its register tiles)."""
    if w_bits == 1:
        return a_bits
    return w_bits + a_bits - 1 if grouped_planes(w_bits, a_bits) else w_bits * a_bits


def _bitserial_grouped(wl, w_bits, a_bits, pad_value, word_bits, x, wp, apack, grp) -> KernelDef:
    """Bitserial with the W*A plane-pair sums accumulated by their weight 2^(bw+ba).

    All pairs with equal bw+ba share one accumulator, the negative top weight plane
    subtracting: W+A-1 accumulators per output instead of W*A (7 instead of 16 at w4a4,
    3 instead of 4 at w2a2), so a register tile holds more outputs. The popcount work is
    unchanged (an add becomes a subtract).
    """
    nw = n_words(wl.cg, word_bits)
    sh, sw = wl.stride
    ng = w_bits + a_bits - 1
    rc = te.reduce_axis((0, nw), "rc")
    ry = te.reduce_axis((0, wl.kh), "ry")
    rx = te.reduce_axis((0, wl.kw), "rx")
    rb = te.reduce_axis((0, w_bits), "rb")

    def gsum(n, k, j, oh, ow):
        ba = tvm.te.max(tvm.te.min(j - rb, a_bits - 1), 0)  # clamped: only read when valid
        pop = tvm.tirx.popcount(apack[n, grp(k), oh * sh + ry, ow * sw + rx, rc, ba]
                                & wp[k, ry, rx, rc, rb]).astype("int32")
        signed = tvm.tirx.Select(rb == w_bits - 1, -pop, pop)
        # a Select, not te.sum(where=): create_prim_func drops reduction predicates; once the
        # plane loops are unrolled the condition is a constant and the Select folds away
        valid = tvm.tirx.all(j - rb >= 0, j - rb < a_bits)
        return te.sum(tvm.tirx.Select(valid, signed, tvm.tirx.const(0, "int32")), axis=[rc, ry, rx, rb])

    planes = te.compute((wl.n, wl.k, ng, wl.oh, wl.ow), gsum, name="bitserial_planes")
    rj = te.reduce_axis((0, ng), "rj")

    def combine(n, k, oh, ow):
        return te.sum(planes[n, k, rj, oh, ow] << rj, axis=rj)

    out = te.compute(wl.output_shape, combine, name="conv2d_bitserial")
    return _bitserial_kdef(wl, w_bits, a_bits, pad_value, word_bits, x, wp, out)
