"""Feature vectors of a cost query: (workload, variant, bits, target profile).

A :class:`CostQuery` names one kernel on one target profile. :func:`featurize`
turns queries into a float matrix whose columns are :data:`FEATURE_NAMES`
(the *feature schema*; a saved cost model stores it and refuses to load
against a different one, see :mod:`tvm_mpq.search.costmodel`).

Features are analytic and cheap: shape numbers, MACs, bytes moved at the
given bit-widths, the number of packed machine words a bit-serial output
element reads, the variant (one-hot), the bits, and the profile (xlen, Zbb,
VLEN). fp32 kernels ignore the bit-widths: their bits features are 32 whatever
the record says (fp32 measurements are stored with placeholder bits).

Public API::

    q = CostQuery(workload, "bitserial", 2, 2, "rv64gc_zbb")   # or CostQuery.from_record(rec)
    X = featurize([q, ...])                                     # (n, len(FEATURE_NAMES))
    wl = layer_workload(layer_info)                             # LayerInfo -> schedules workload
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..plan import FP32
from ..schedules.conv2d import grouped_planes, pixel_block, plane_accumulators, swar_lanes
from ..schedules.default_schedules import (  # the schedules' own tile choices
    _bitserial_config,
    _fit,
    _tile_bitserial,
)
from ..schedules.registry import dense_as_conv
from ..schedules.workload import Conv2dWorkload, DenseWorkload, Workload, workload_from_dict
from ..targets import get_profile

__all__ = [
    "ANALYTIC_TERMS",
    "FEATURE_NAMES",
    "FEATURE_SCHEMA_VERSION",
    "QUANT_VARIANTS",
    "CostQuery",
    "analytic_terms",
    "featurize",
    "kernel_shape_class",
    "layer_workload",
]

#: Bump when the meaning of a feature changes (the names alone would not show it).
FEATURE_SCHEMA_VERSION = 5  # 4: schedule-aware analytic terms; 5: swar window sum by adds

#: Kernel variants one-hot encoded, in this order.
VARIANT_ORDER: tuple[str, ...] = ("fp32", "int8", "bitserial", "unpack", "swar")
#: Variants a quantized layer can use.
QUANT_VARIANTS: tuple[str, ...] = ("int8", "bitserial", "unpack", "swar")

FEATURE_NAMES: tuple[str, ...] = (
    "is_conv", "is_dense", "depthwise", "pointwise",
    "n", "c", "h", "w", "k", "kh", "kw", "oh", "ow", "stride", "groups", "cg", "kg",
    "log_macs", "log_reduction", "log_out_elems", "log_in_elems", "log_w_elems",
    *(f"var_{v}" for v in VARIANT_ORDER),
    "w_bits", "a_bits", "log_bitprod",
    "log_in_bytes", "log_w_bytes", "log_out_bytes", "log_total_bytes",
    "words_per_reduction", "log_words_per_output", "log_plane_ops", "word_fill",
    "xlen", "word_bits", "zbb", "vlen", "is_host",
    # loop structure of the default lowering (log2 of iteration counts, per MAC where useful)
    "has_pad", "log_pad_elems", "pad_per_mac", "log_out_per_mac", "log_cg", "log_kw",
    "cg_le_8", "cg_le_16", "cg_le_32", "cg_le_64",
    "log_pack_out", "log_pack_per_mac", "log_pop_per_mac", "log_acc_per_mac",
    "log_unpack_per_mac", "log_inner_extent", "inner_unrolled", "log_tile_outs", "pack_blocked",
    "reduction_unrolled", "ow_unrolled",
)

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
    # plain direct lowering (fp32 / int8 / unpack)
    "macs",          # multiply-accumulates
    "inner_trips",   # trips of the innermost rolled reduction loop (0: reduction unrolled)
    "macs_unrolled",  # MACs of a reduction LLVM fully unrolls (rx, ry, rc) ...
    "macs_unrolled_ow",  # ... and the ow loop around the unrolled reduction unrolled as well
    "out_unrolled",  # output elements of the kernels counted in macs_unrolled
    "out_unrolled_ow",  # ... in macs_unrolled_ow
    "macs_unrolled_ohow",  # ... and the oh loop as well
    "out_unrolled_ohow",
    "unpack",        # sub-byte weights unpacked (unpack, w_bits < 8), innermost loop over c
    "unpack_unrolled",  # the same when LLVM unrolls the innermost loop (kw, or few channels)
    # bitserial, register-tiled schedule (_bitserial_config's kt x owt tiles)
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
    "swar_asum",     # adds of the activation window sums (over the padded input)
    "swar_asum_out",  # activation window sums
)


@dataclass(frozen=True)
class CostQuery:
    """One kernel on one target profile.

    Attributes:
        workload: a ``Conv2dWorkload`` or ``DenseWorkload`` (:mod:`tvm_mpq.schedules`).
        variant: "fp32", "int8", "bitserial", "unpack" or "swar".
        w_bits, a_bits: bit-widths (ignored, and normalised to 8, for "fp32").
        profile: target profile name (:data:`tvm_mpq.targets.PROFILES`).
    """

    workload: Workload
    variant: str
    w_bits: int
    a_bits: int
    profile: str

    def __post_init__(self) -> None:
        if self.variant not in VARIANT_ORDER:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANT_ORDER}")
        if self.variant == "fp32":  # one canonical key per fp32 kernel (measure() needs bits <= 8)
            object.__setattr__(self, "w_bits", 8)
            object.__setattr__(self, "a_bits", 8)
        elif self.w_bits not in (1, 2, 4, 8) or self.a_bits not in (1, 2, 4, 8):
            raise ValueError(f"bits w{self.w_bits}a{self.a_bits} not supported by {self.variant!r}")

    @classmethod
    def from_record(cls, rec: Any) -> CostQuery:
        """From a :class:`~tvm_mpq.rpc.database.MeasureRecord` (or its dict)."""
        d = rec if isinstance(rec, dict) else rec.to_dict()
        return cls(workload_from_dict(d["workload"]), d["variant"], int(d["w_bits"]),
                   int(d["a_bits"]), d["profile"])

    def key(self) -> tuple[str, str, int, int, str]:
        """Hashable identity (workload key, variant, bits, profile)."""
        return (self.workload.key(), self.variant, self.w_bits, self.a_bits, self.profile)

    def request(self) -> tuple[Workload, str, int, int]:
        """The ``(workload, variant, w_bits, a_bits)`` tuple ``rpc.measure.measure_many`` takes."""
        return (self.workload, self.variant, self.w_bits, self.a_bits)

    def describe(self) -> str:
        bits = "fp32" if self.variant == "fp32" else f"w{self.w_bits}a{self.a_bits}"
        return f"{self.workload.key()} {self.variant} {bits} @{self.profile}"


def layer_workload(info: Any) -> Workload:
    """The schedules workload of a :class:`~tvm_mpq.frontend.LayerInfo` call site
    (same construction as the compiler's)."""
    if info.kind == "conv2d":
        ph, pw = info.padding
        return Conv2dWorkload.make(info.input_shape, info.weight_shape, info.stride,
                                   (ph, pw, ph, pw), info.groups)
    return DenseWorkload.make(info.input_shape, info.weight_shape)


def _as_conv(wl: Workload) -> Conv2dWorkload:
    return dense_as_conv(wl) if isinstance(wl, DenseWorkload) else wl


def kernel_shape_class(wl: Workload) -> str:
    """"window" for kernels with a spatial window (kh * kw > 1), else "1x1" (dense too)."""
    cv = _as_conv(wl)
    return "window" if cv.kh * cv.kw > 1 else "1x1"


def _log(x: float) -> float:
    return math.log2(max(float(x), 1.0))


_PROFILE_CACHE: dict[str, tuple[float, float, float, float, float]] = {}


def _profile_feats(name: str) -> tuple[float, float, float, float, float]:
    if name not in _PROFILE_CACHE:
        p = get_profile(name)
        _PROFILE_CACHE[name] = (float(p.xlen), float(p.word_bits), float(p.has_zbb or p.is_host),
                                float(p.vlen), float(p.is_host))
    return _PROFILE_CACHE[name]


def _effective_bits(q: CostQuery) -> tuple[int, int]:
    """The bits a kernel's code depends on: none for fp32 (32, 32) and int8 (bytes whatever
    the bits: (8, 8)), the weight bits only for unpack (activations are bytes). Equal costs
    then get equal features, so the model never breaks ties the kernels do not have."""
    if q.variant == "fp32":
        return FP32, FP32
    if q.variant == "int8":
        return 8, 8
    if q.variant == "unpack":
        return q.w_bits, 8
    return q.w_bits, q.a_bits


def _row(q: CostQuery) -> list[float]:
    wl = q.workload
    cv = _as_conv(wl)
    dense = isinstance(wl, DenseWorkload)
    fp32 = q.variant == "fp32"
    wb, ab = _effective_bits(q)
    xlen, word_bits, zbb, vlen, host = _profile_feats(q.profile)
    t = _terms(q, cv, word_bits)
    red = cv.cg * cv.kh * cv.kw
    out_elems = cv.n * cv.k * cv.oh * cv.ow
    in_elems = cv.n * cv.c * cv.h * cv.w
    w_elems = cv.k * cv.cg * cv.kh * cv.kw
    # storage per element as each variant really keeps it: int8 stores bytes whatever the bits,
    # unpack packs weights only, bitserial packs both sides into bit planes
    if fp32:
        in_b, w_b = 4.0, 4.0
    elif q.variant == "int8":
        in_b, w_b = 1.0, 1.0
    elif q.variant == "unpack":
        in_b, w_b = 1.0, wb / 8
    elif q.variant == "swar":  # lanes of 64 / P bits each
        lane_bytes = 8.0 / swar_lanes(cv, q.w_bits, q.a_bits)[0]
        in_b, w_b = lane_bytes, lane_bytes
    else:
        in_b, w_b = ab / 8, wb / 8
    words = math.ceil(cv.cg / word_bits)
    words_per_out = words * cv.kh * cv.kw * (wb * ab if q.variant == "bitserial" else 0)
    plane_ops = out_elems * words_per_out if q.variant == "bitserial" else cv.macs
    return [
        float(not dense), float(dense), float(cv.is_depthwise),
        float(cv.kh == 1 and cv.kw == 1 and cv.groups == 1),
        cv.n, cv.c, cv.h, cv.w, cv.k, cv.kh, cv.kw, cv.oh, cv.ow, cv.stride[0], cv.groups,
        cv.cg, cv.kg,
        _log(cv.macs), _log(red), _log(out_elems), _log(in_elems), _log(w_elems),
        *(float(q.variant == v) for v in VARIANT_ORDER),
        float(wb), float(ab), _log(wb * ab),
        _log(in_elems * in_b), _log(w_elems * w_b), _log(out_elems * 4),
        _log(in_elems * in_b + w_elems * w_b + out_elems * 4),
        float(words), _log(words_per_out), _log(plane_ops), cv.cg / (words * word_bits),
        xlen, word_bits, zbb, vlen, host,
        *_structure_feats(q, cv, t, word_bits),
    ]


def _inner_extent(q: CostQuery, cv: Conv2dWorkload, word_bits: float) -> int:
    """Extent of the innermost reduction loop as lowered (rx; the channel loop for 1x1)."""
    if cv.kw > 1:
        return cv.kw
    if q.variant == "swar":
        return math.ceil(cv.cg / swar_lanes(cv, q.w_bits, q.a_bits)[0])
    return math.ceil(cv.cg / word_bits) if q.variant == "bitserial" else cv.cg


#: Rough LLVM IR size of one multiply-accumulate and LLVM's full-unroll budget: a loop of
#: ``extent`` iterations is unrolled when ``extent * body <= _UNROLL_BUDGET``. Measured
#: (Spike): the plain fp32 / int8 / unpack 1x1 reduction is unrolled up to 32 channels
#: (2.2-5 instructions per MAC), rolled from 48 (6.0 fp32, 7.0 int8 per MAC).
_MAC_BODY = {"fp32": 8, "int8": 8, "unpack": 8, "bitserial": 6, "swar": 4}
_UNROLL_BUDGET = 300


#: Most MACs of a fully unrolled ow loop (and oh x ow nest) around an unrolled reduction:
#: 1x1 with 7 x 8, 4 x 16, 2 x 32 channels and 3x3 depthwise with ow <= 7 unroll the ow loop;
#: 2 x 2 x 32 channels and 2 x 2 depthwise outputs unroll both (rv64 code, LLVM 20).
_OW_UNROLL_MACS = 64
_OHOW_UNROLL_MACS = 128
#: Rough IR size of one sub-byte weight unpack (load, shift, mask, sign-extend, store): its
#: innermost loop is unrolled up to 24 channels (~2 instructions a weight), rolled from 32 (~12).
_UNPACK_BODY = 12


def _unrolled(variant: str, inner: int) -> bool:
    return inner * _MAC_BODY[variant] <= _UNROLL_BUDGET


def _inner_trips(q: CostQuery, cv: Conv2dWorkload) -> float:
    """Trips of the innermost reduction loop LLVM leaves rolled in the plain direct lowering
    (the loops inside it, innermost first among rx, ry, rc, are unrolled); 0 if none is."""
    size, inside = _MAC_BODY[q.variant], 1
    for extent in (cv.kw, cv.kh, cv.cg):
        if size * extent > _UNROLL_BUDGET:
            return float(cv.macs) / inside
        size, inside = size * extent, inside * extent
    return 0.0


def _direct_unroll(q: CostQuery, cv: Conv2dWorkload) -> int:
    """How far LLVM fully unrolls the plain direct lowering (fp32 / int8 / unpack), from the
    innermost loop outwards: 0 the reduction stays rolled, 1 the whole reduction (rx, ry, rc)
    is unrolled, 2 the ow loop around it too, 3 the oh loop as well (checked on the
    generated RISC-V code: multiplies in the kernel = MACs of the unrolled nest)."""
    size = _MAC_BODY[q.variant]
    for extent in (cv.kw, cv.kh, cv.cg):
        size *= extent
        if size > _UNROLL_BUDGET:
            return 0
    red = cv.cg * cv.kh * cv.kw
    if cv.ow * red > _OW_UNROLL_MACS:
        return 1
    return 3 if cv.oh * cv.ow * red <= _OHOW_UNROLL_MACS else 2


#: Live values (accumulators + loaded words) a bitserial tile keeps without spilling.
_TILE_REGS = 20
#: Largest W x G plane loop LLVM still unrolls on its own (w4a4: 28 is, w4a8: 44 is not).
_PLANE_UNROLL = 32


def _bitserial_tile(cv: Conv2dWorkload, w_bits: int, a_bits: int) -> tuple[int, int, int, bool]:
    """(kt, owt, accumulators per output G, kernel rows unrolled) of the default schedule."""
    cfg = _bitserial_config(cv, w_bits, a_bits)
    kt, owt = cfg["kt"], cfg["owt"]
    if cv.groups > 1 and kt > 1 and cv.kg % kt:
        kt = 1  # as _schedule_bitserial: a k tile never straddles two groups
    g = plane_accumulators(w_bits, a_bits)
    return kt, owt, g, bool(cfg.get("unroll_ry", False))


def _terms(q: CostQuery, cv: Conv2dWorkload, word_bits: float) -> dict[str, float]:
    """Iteration counts of the stages of ``q``'s default lowering (:data:`ANALYTIC_TERMS`)."""
    t = dict.fromkeys(ANALYTIC_TERMS, 0.0)
    out = float(cv.n * cv.k * cv.oh * cv.ow)
    padded = any(cv.padding)
    t["call"] = 1.0
    t["out"] = out
    t["out_rows"] = float(cv.n * cv.k * cv.oh)
    t["planes"] = float(cv.n * cv.k)
    if padded and q.variant != "bitserial":  # bitserial pads packed words instead
        t["pad"] = float(cv.n * cv.c * cv.hp * cv.wp)
        t["pad_inside"] = float(cv.n * cv.c * cv.h * cv.w)
        t["pad_rows"] = float(cv.n * cv.c * cv.hp)
        t["pad_planes"] = float(cv.n * cv.c)
    sw = cv.stride[1]
    if q.variant == "bitserial":
        wb, ab = q.w_bits, q.a_bits
        wbits = int(word_bits)
        nw = math.ceil(cv.cg / wbits)
        taps = cv.kh * cv.kw
        t["bs_pop"] = out * wb * ab * nw * taps
        if _tile_bitserial(wb, ab, q.profile):
            kt, owt, g, unroll_ry = _bitserial_tile(cv, wb, ab)
            tiles = float(cv.n * math.ceil(cv.k / kt) * cv.oh * math.ceil(cv.ow / owt))
            t["bs_tiles"] = tiles
            t["bs_wload"] = tiles * kt * wb * nw * taps
            t["bs_aload"] = tiles * ab * nw * cv.kh * ((owt - 1) * sw + cv.kw)
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
        if padded:
            t["pk_pad"] = float(cv.n * cv.groups * cv.hp * cv.wp * nw * ab)
        return t
    if q.variant == "swar":
        lanes = swar_lanes(cv, q.w_bits, q.a_bits)[0]
        nwp = math.ceil(cv.cg / lanes)
        taps = cv.kh * cv.kw
        kt, owt = _fit(cv.kg, 4), _fit(cv.ow, 4)  # the 4x4 tile of default_schedule
        tiles = float(cv.n * (cv.k // kt) * cv.oh * (cv.ow // owt))
        t["swar_words"] = out * taps * nwp
        t["swar_wload"] = tiles * kt * taps * nwp
        t["swar_aload"] = tiles * owt * taps * nwp
        t["swar_red"] = tiles * taps * nwp
        t["swar_tiles"] = tiles
        t["swar_pack_words"] = float(cv.n * cv.groups * cv.hp * cv.wp * nwp)
        t["swar_pack"] = t["swar_pack_words"] * lanes
        t["swar_asum_out"] = float(cv.n * cv.groups * cv.oh * cv.ow)
        t["swar_asum"] = t["swar_asum_out"] * taps * cv.cg  # adds over the padded input
        return t
    # every MAC costs its loads, multiply and add; a rolled innermost loop adds its overhead
    # per trip (1x1: per channel; 3x3 with rx unrolled: per (channel, kernel row)). Fully
    # unrolled reductions (and the output loops LLVM unrolls around them) get their own
    # per-MAC and per-output extras: spills, hoisted weights.
    t["macs"] = float(cv.macs)
    t["inner_trips"] = _inner_trips(q, cv)
    level = _direct_unroll(q, cv)
    if level:
        suffix = ("", "_ow", "_ohow")[level - 1]
        t["macs_unrolled" + suffix], t["out_unrolled" + suffix] = float(cv.macs), out
    if q.variant == "unpack" and q.w_bits < 8:
        inner = cv.kw if cv.kw > 1 else cv.cg
        unrolled = inner * _UNPACK_BODY <= _UNROLL_BUDGET
        t["unpack_unrolled" if unrolled else "unpack"] = float(cv.k * cv.cg * cv.kh * cv.kw)
    return t


def analytic_terms(queries: Sequence[CostQuery]) -> np.ndarray:
    """Stage iteration counts ``(len(queries), len(ANALYTIC_TERMS))`` of each query's
    default lowering: the regressors of the cost model's analytic prior."""
    if not queries:
        return np.zeros((0, len(ANALYTIC_TERMS)))
    rows = []
    for q in queries:
        t = _terms(q, _as_conv(q.workload), _profile_feats(q.profile)[1])
        rows.append([t[k] for k in ANALYTIC_TERMS])
    return np.asarray(rows, dtype=np.float64)


def _structure_feats(q: CostQuery, cv: Conv2dWorkload, t: dict[str, float],
                     word_bits: float) -> list[float]:
    macs = float(max(cv.macs, 1))
    pack = t["pk_blk_out"] + t["pk_g_planes"]
    tiles = t["bs_tiles"] + t["swar_tiles"]
    tile = t["out"] / tiles if tiles > 0 else 1.0  # outputs per register tile
    return [
        float(t["pad"] > 0), _log(t["pad"]), t["pad"] / macs, _log(t["out"]) - _log(macs),
        _log(cv.cg), float(cv.kw),
        float(cv.cg <= 8), float(cv.cg <= 16), float(cv.cg <= 32), float(cv.cg <= 64),
        _log(pack), math.log2(max(pack, 1.0) / macs),
        math.log2(max(t["bs_pop"] + t["swar_words"], 1.0) / macs),
        math.log2(max(t["bs_acc"], 1.0) / macs),
        math.log2(max(t["unpack"] + t["unpack_unrolled"], 1.0) / macs),
        _log(_inner_extent(q, cv, word_bits)),
        float(_unrolled(q.variant, _inner_extent(q, cv, word_bits))),
        math.log2(tile), float(t["pk_blk_out"] > 0),
        float(t["macs_unrolled"] + t["macs_unrolled_ow"] + t["macs_unrolled_ohow"] > 0),
        float(t["macs_unrolled_ow"] + t["macs_unrolled_ohow"] > 0),
    ]


def featurize(queries: Sequence[CostQuery]) -> np.ndarray:
    """Feature matrix ``(len(queries), len(FEATURE_NAMES))`` (float64)."""
    if not queries:
        return np.zeros((0, len(FEATURE_NAMES)))
    X = np.asarray([_row(q) for q in queries], dtype=np.float64)
    assert X.shape[1] == len(FEATURE_NAMES)
    return X


def query_macs(queries: Sequence[CostQuery]) -> np.ndarray:
    """MACs of each query's workload (the cost model's per-MAC baseline)."""
    return np.asarray([max(q.workload.macs, 1) for q in queries], dtype=np.float64)
