"""Feature vectors of a cost query: (workload, variant, bits, target profile).

:func:`featurize` turns :class:`~tvm_mpq.costmodel.query.CostQuery` objects into a float
matrix whose columns are :data:`FEATURE_NAMES` (the *feature schema*; a saved cost model
stores it and refuses to load against a different one, see :mod:`tvm_mpq.costmodel.model`).

Features are analytic and cheap: shape numbers, MACs, bytes moved at the
given bit-widths, the number of packed machine words a bit-serial output
element reads, the variant (one-hot), the bits, and the profile (xlen, Zbb,
VLEN), and the loop structure of the default lowering (from the analytic terms,
:mod:`tvm_mpq.costmodel.terms`). fp32 kernels ignore the bit-widths: their bits
features are 32 whatever the record says (fp32 measurements are stored with
placeholder bits).

Public API::

    X = featurize([q, ...])                                     # (n, len(FEATURE_NAMES))
    kernel_shape_class(q.workload)                              # "window" or "1x1"
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tvm_mpq.costmodel.query import VARIANT_ORDER, CostQuery
from tvm_mpq.costmodel.terms import conv_view, inner_extent, reduction_unrolled, stage_counts
from tvm_mpq.quant.plan import FP32
from tvm_mpq.schedules.swar import swar_kernel_lanes
from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload, Workload
from tvm_mpq.targets import get_profile

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_SCHEMA_VERSION",
    "QUANT_VARIANTS",
    "featurize",
    "kernel_shape_class",
    "query_macs",
]

#: Bump when the meaning of a feature changes (the names alone would not show it).
FEATURE_SCHEMA_VERSION = 5  # 4: schedule-aware analytic terms; 5: swar window sum by adds

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
    "log_dir_load_per_mac", "swar_pixel_lanes",
)


def kernel_shape_class(wl: Workload) -> str:
    """"window" for kernels with a spatial window (kh * kw > 1), else "1x1" (dense too)."""
    cv = conv_view(wl)
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
    """The feature vector of ``q`` (the columns of :data:`FEATURE_NAMES`)."""
    wl = q.workload
    cv = conv_view(wl)
    dense = isinstance(wl, DenseWorkload)
    fp32 = q.variant == "fp32"
    wb, ab = _effective_bits(q)
    xlen, word_bits, zbb, vlen, host = _profile_feats(q.profile)
    t = stage_counts(q, cv, word_bits)
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
    elif q.variant == "swar":  # lanes of word / P bits each; pixel lanes keep int8 weights
        layout, lanes, _ = swar_kernel_lanes(cv, q.w_bits, q.a_bits, int(word_bits))
        in_b, w_b = word_bits / 8 / lanes, (1.0 if layout == "pixels" else word_bits / 8 / lanes)
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


def _structure_feats(q: CostQuery, cv: Conv2dWorkload, t: dict[str, float],
                     word_bits: float) -> list[float]:
    """The loop-structure features: the stage counts ``t`` summarised per MAC."""
    macs = float(max(cv.macs, 1))
    pack = t["pk_blk_out"] + t["pk_g_planes"]
    tiles = t["bs_tiles"] + t["swar_tiles"] + t["dir_tiles"]
    tile = t["out"] / tiles if tiles > 0 else 1.0  # outputs per register tile
    return [
        float(t["pad"] > 0), _log(t["pad"]), t["pad"] / macs, _log(t["out"]) - _log(macs),
        _log(cv.cg), float(cv.kw),
        float(cv.cg <= 8), float(cv.cg <= 16), float(cv.cg <= 32), float(cv.cg <= 64),
        _log(pack), math.log2(max(pack, 1.0) / macs),
        math.log2(max(t["bs_pop"] + t["swar_words"], 1.0) / macs),
        math.log2(max(t["bs_acc"], 1.0) / macs),
        math.log2(max(t["unpack"] + t["unpack_unrolled"], 1.0) / macs),
        _log(inner_extent(q, cv, word_bits)),
        float(reduction_unrolled(q.variant, inner_extent(q, cv, word_bits))),
        math.log2(tile), float(t["pk_blk_out"] > 0),
        math.log2(max(t["dir_wload"] + t["dir_aload"], 1.0) / macs),
        float(t["swar_extract"] > 0),
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
