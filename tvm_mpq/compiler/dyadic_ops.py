"""Single-rounding dyadic requantization in TE (:mod:`tvm_mpq.quant.dyadic` is the definition).

Two forms compute the same ``clamp((x * M + K) >> T, lo, hi)``:

* ``"wide"``: an int64 multiply-add and shift (``mul``, ``add``, ``sra`` on RV64);
* ``"hi32"`` (RV32, every ``T >= 32``): only the high word of ``x * M + K`` is needed: the
  high word of the product (``mulh``) plus ``K``'s high word plus the carry of the low words,
  shifted by ``T - 32``. The carry is ``lo(x * M) > ~lo(K)`` (no wrapping add: TVM marks
  unsigned adds no-wrap, so a wrapped sum could not be compared).

:func:`dyadic_consts` gives the per-channel constant arrays a form reads;
:func:`requantize_dyadic_te` takes them as TE tensors (per channel) or Python ints (scalars).
"""

from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import te

if TYPE_CHECKING:
    from tvm_mpq.schedules.kernel import KernelDef

__all__ = ["FORMS", "dyadic_consts", "dyadic_expr", "dyadic_form", "requantize_dyadic_te",
           "with_requantize"]

FORMS = ("wide", "hi32")


def dyadic_form(t: np.ndarray, xlen: int) -> str:
    """``"hi32"`` on RV32 when every shift is at least 32, else ``"wide"``."""
    return "hi32" if xlen == 32 and bool(np.all(np.asarray(t) >= 32)) else "wide"


def dyadic_consts(m: np.ndarray, k: np.ndarray, t: np.ndarray, form: str) -> list[np.ndarray]:
    """The constant arrays of ``form``: ``[M int32, K int64, T int32]`` (wide) or
    ``[M int32, ~lo(K) uint32, hi(K) int32, T - 32 int32]`` (hi32)."""
    m, k, t = (np.asarray(v, np.int64) for v in (m, k, t))
    if form == "wide":
        return [m.astype(np.int32), k, t.astype(np.int32)]
    if form != "hi32":
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if np.any(t < 32):
        raise ValueError("the hi32 form needs every shift >= 32")
    return [m.astype(np.int32), (~k & 0xFFFFFFFF).astype(np.uint32),
            (k >> 32).astype(np.int32), (t - 32).astype(np.int32)]


def _c(v: Any, dtype: str) -> Any:
    return tvm.tirx.const(int(v), dtype) if isinstance(v, Integral | np.integer) else v


def dyadic_expr(x: Any, consts: list[Any], form: str) -> Any:
    """``(x * M + K) >> T`` of an int32 expression (values or expressions of ``consts``);
    int64 (wide) or int32 (hi32) result, before the clamp."""
    if form == "wide":
        m, k, t = _c(consts[0], "int32"), _c(consts[1], "int64"), _c(consts[2], "int32")
        return (x.astype("int64") * m.astype("int64") + k) >> t.astype("int64")
    m, nklo, khi, t2 = (_c(consts[0], "int32"), _c(consts[1], "uint32"), _c(consts[2], "int32"),
                        _c(consts[3], "int32"))
    p = x.astype("int64") * m.astype("int64")  # mul + mulh on RV32
    hi = (p >> tvm.tirx.const(32, "int64")).astype("int32")
    carry = (p.astype("uint32") > nklo).astype("int32")
    return (hi + khi + carry) >> t2


def requantize_dyadic_te(x: te.Tensor, consts: list[Any], lo: int, hi: int,
                         out_dtype: str = "uint8", ch_axis: int = 1, form: str = "wide",
                         name: str = "requantize") -> te.Tensor:
    """``clamp((x * M + K) >> T, lo, hi)`` of int32 ``x`` stored as ``out_dtype``.

    Args:
        x: int32 tensor (e.g. a kernel's accumulator).
        consts: :func:`dyadic_consts` of ``form``: per-channel TE tensors indexed along
            ``ch_axis``, or Python ints (one value for the whole tensor).
        lo, hi: the clamp (output codes, a folded ReLU / ReLU6 included).
    """
    axis = ch_axis % len(x.shape)
    dt = "int64" if form == "wide" else "int32"
    lo_c, hi_c = tvm.tirx.const(lo, dt), tvm.tirx.const(hi, dt)

    def f(*i):
        vals = [c[i[axis]] if isinstance(c, te.Tensor) else c for c in consts]
        xv = x(*i) if x.dtype == "int32" else x(*i).astype("int32")
        y = dyadic_expr(xv, vals, form)
        return tvm.tirx.max(tvm.tirx.min(y, hi_c), lo_c).astype(out_dtype)

    return te.compute(x.shape, f, name=name)


def with_requantize(kd: KernelDef, consts: list[np.ndarray], lo: int, hi: int,
                    form: str = "wide") -> KernelDef:
    """Kernel ``kd`` with :func:`requantize_dyadic_te` fused after its output to uint8
    (:meth:`~tvm_mpq.schedules.kernel.KernelDef.with_epilogue`): the per-channel constant
    arrays ``consts`` (:func:`dyadic_consts` of ``form``) become parameters after the weight."""
    k = int(kd.output.shape[1])
    ph = [te.placeholder((k,), str(c.dtype), f"rq{i}") for i, c in enumerate(consts)]
    return kd.with_epilogue(lambda o, p: requantize_dyadic_te(o, p, lo, hi, "uint8", 1, form),
                            ph, f"{lo},{hi},{form}")
