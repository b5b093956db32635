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
from ..schedules.conv2d import swar_lanes
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
    "layer_workload",
]

#: Bump when the meaning of a feature changes (the names alone would not show it).
FEATURE_SCHEMA_VERSION = 3  # 3: the "swar" variant and its terms

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
    "log_pack_words", "log_pack_bits_per_mac", "log_plane_iters_per_mac",
    "log_plane_outs_per_mac", "log_unpack_per_mac", "log_inner_extent", "inner_unrolled",
)

#: Iteration counts of the stages of each variant's default lowering (see
#: :mod:`tvm_mpq.schedules.conv2d`). A term is 0 where the variant has no such stage. The
#: cost model fits per-(variant, profile) non-negative instructions-per-iteration weights on
#: them (an *analytic prior*) and learns the residual with XGBoost.
ANALYTIC_TERMS: tuple[str, ...] = (
    "call",          # one per kernel call
    "planes",        # output channel planes (n * k; bitserial: n * k * w_bits * a_bits)
    "out",           # output elements (init + store of the accumulator)
    "out_rows",      # output rows (n * k * oh): loop overhead of the ow loop
    # inner multiply-accumulates (fp32 / int8 / unpack), split by whether LLVM fully unrolls
    # the innermost reduction loop (rx, or rc for 1x1): trip count x body size under a threshold
    "macs_unrolled",
    "macs",
    "red_loops",     # out * cg * kh: rx-loop entries of the reduction
    "pad",           # padded input elements materialised (0 without padding)
    "pad_rows",      # padded input rows
    "pad_planes",    # padded input channel planes
    "unpack",        # sub-byte weights unpacked (unpack, w_bits < 8), innermost loop over c
    "unpack_unrolled",  # the same when the innermost loop is a short kw loop
    "pack_bits",     # bitserial: activation bits packed, unpadded (groups*a_bits*words*h*w*64)
    "pack_bits_pad", # bitserial: the same over the padded extent hp * wp (pad-then-pack lowering)
    "pack_valid",    # bitserial: valid (non-ragged) channel bits packed, unpadded
    "pack_valid_pad",  # the same over the padded extent
    "pack_words",    # bitserial: packed activation words over the padded extent
    "pack_rows",     # bitserial: packed activation rows over the padded extent
    "plane_iters",   # bitserial: AND+popcount of (weight plane, activation plane) words
    "plane_outs",    # bitserial: per-plane partial sums (out * w_bits * a_bits)
    "plane_rows",    # bitserial: plane_outs * words * kh (inner-loop entries)
    "asum",          # bitserial, w_bits == 1: activation window sums
    "swar_words",    # swar: packed multiply-adds (out * kh * kw * ceil(cg / lanes))
    "swar_pack",     # swar: activation lanes packed over the padded extent
    "swar_asum",     # swar: packed multiply-adds of the activation window sums
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


#: Rough instructions in the innermost MAC loop body (loads, extends, multiply-add) and
#: LLVM's full-unroll budget: a loop of ``extent`` iterations is unrolled when
#: ``extent * body <= _UNROLL_BUDGET`` (fp32 with 32 channels is, int8 with 32 is not).
_MAC_BODY = {"fp32": 4, "int8": 6, "unpack": 6, "bitserial": 6, "swar": 4}
_UNROLL_BUDGET = 150


def _unrolled(variant: str, inner: int) -> bool:
    return inner * _MAC_BODY[variant] <= _UNROLL_BUDGET


def _terms(q: CostQuery, cv: Conv2dWorkload, word_bits: float) -> dict[str, float]:
    """Iteration counts of the stages of ``q``'s default lowering (:data:`ANALYTIC_TERMS`)."""
    t = dict.fromkeys(ANALYTIC_TERMS, 0.0)
    out = float(cv.n * cv.k * cv.oh * cv.ow)
    if any(cv.padding):
        t["pad"] = float(cv.n * cv.c * cv.hp * cv.wp)
        t["pad_rows"] = float(cv.n * cv.c * cv.hp)
        t["pad_planes"] = float(cv.n * cv.c)
    t["call"] = 1.0
    t["out"] = out
    t["out_rows"] = float(cv.n * cv.k * cv.oh)
    if q.variant == "bitserial":
        wb, ab = q.w_bits, q.a_bits
        nw = math.ceil(cv.cg / word_bits)
        pack_words = float(cv.n * cv.groups * ab * nw * cv.hp * cv.wp)
        t["pack_words"], t["pack_bits_pad"] = pack_words, pack_words * word_bits
        t["pack_rows"] = float(cv.n * cv.groups * ab * nw * cv.hp)
        t["pack_bits"] = float(cv.n * cv.groups * ab * nw * cv.h * cv.w) * word_bits
        t["pack_valid"] = float(cv.n * ab * cv.c * cv.h * cv.w)
        t["pack_valid_pad"] = float(cv.n * ab * cv.c * cv.hp * cv.wp)
        t["planes"] = float(cv.n * cv.k * wb * ab)
        t["plane_outs"] = out * wb * ab
        t["plane_rows"] = t["plane_outs"] * nw * cv.kh
        t["plane_iters"] = t["plane_outs"] * nw * cv.kh * cv.kw
        if wb == 1:
            t["asum"] = float(cv.n * cv.groups * ab * cv.oh * cv.ow * nw * cv.kh * cv.kw)
        return t
    t["planes"] = float(cv.n * cv.k)
    if q.variant == "swar":
        lanes = swar_lanes(cv, q.w_bits, q.a_bits)[0]
        nwp = math.ceil(cv.cg / lanes)
        t["swar_words"] = out * cv.kh * cv.kw * nwp
        t["swar_pack"] = float(cv.n * cv.groups * cv.hp * cv.wp * nwp * lanes)
        t["swar_asum"] = float(cv.n * cv.groups * cv.oh * cv.ow * cv.kh * cv.kw * nwp)
        return t
    inner = _inner_extent(q, cv, word_bits)
    t["macs_unrolled" if _unrolled(q.variant, inner) else "macs"] = float(cv.macs)
    t["red_loops"] = out * cv.cg * cv.kh
    if q.variant == "unpack" and q.w_bits < 8:
        t["unpack_unrolled" if cv.kw > 1 else "unpack"] = float(cv.k * cv.cg * cv.kh * cv.kw)
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
    return [
        float(t["pad"] > 0), _log(t["pad"]), t["pad"] / macs, _log(t["out"]) - _log(macs),
        _log(cv.cg), float(cv.kw),
        float(cv.cg <= 8), float(cv.cg <= 16), float(cv.cg <= 32), float(cv.cg <= 64),
        _log(t["pack_words"]), math.log2(max(t["pack_bits"], 1.0) / macs),
        math.log2(max(t["plane_iters"], 1.0) / macs), math.log2(max(t["plane_outs"], 1.0) / macs),
        math.log2(max(t["unpack"], 1.0) / macs),
        _log(_inner_extent(q, cv, word_bits)),
        float(_unrolled(q.variant, _inner_extent(q, cv, word_bits))),
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
