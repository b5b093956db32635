"""The schedule of the glue between kernels: elementwise passes with short unrolled rows.

The compiler's passes around a kernel (requantize, spec changes, quantize / dequantize,
residual adds; :mod:`tvm_mpq.compiler.emit`) are TE computations lowered as plain loop
nests: per element a load, a few arithmetic instructions, a store, and the loop's own
pointer increments and branch. Unrolling the innermost loops by up to :data:`MAX_UNROLL`
elements leaves one increment and branch per group. Measured on Spike, the requantize
epilogue over 1x64x28x28 int32 (instructions per element, plain -> unrolled by 7):
rv64gc_zbb 10.39 -> 7.14, rv64gc 13.42 -> 9.85, rv32imc 16.43 -> 12.86.

:func:`schedule_glue` is applied wherever such a pass is compiled: the standalone artifact's
lowering (:func:`tvm_mpq.deploy.lower.lower_for_standalone`) and the measurement of the
passes (:func:`tvm_mpq.measure.overhead.measure_qdq_overhead`), so the search prices what
the artifact runs.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir

__all__ = ["MAX_UNROLL", "schedule_glue", "unroll_rows"]

log = logging.getLogger(__name__)

#: elements per unrolled group (largest divisor of the row up to this; fully unrolled rows
#: of up to this many elements take a divisor of the next loop too). 7 vs 4 on a row of 28:
#: rv32imc 12.86 vs 13.43 instructions per element, rv64gc 9.85 vs 10.17, rv64gc_zbb equal.
MAX_UNROLL = 8


def _divisor(extent: int, limit: int) -> int:
    """The largest divisor of ``extent`` up to ``limit`` (at least 1)."""
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


def unroll_rows(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> None:
    """Unroll the innermost loops of an elementwise ``block`` in groups of up to
    :data:`MAX_UNROLL` elements (a reduction or a symbolic extent: left as it is)."""
    loops = sch.get_loops(block)
    if not loops or any(iv.iter_type != 0 for iv in sch.get(block).iter_vars):
        return  # reductions (pooling) keep their loops
    extents = [sch.get(lp).extent for lp in loops]
    if not isinstance(extents[-1], tvm.tirx.IntImm):
        return
    inner = int(extents[-1])
    if inner > MAX_UNROLL:
        d = _divisor(inner, MAX_UNROLL)
        if d > 1:
            sch.unroll(sch.split(loops[-1], [None, d])[1])
        return
    sch.unroll(loops[-1])
    if len(loops) > 1 and isinstance(extents[-2], tvm.tirx.IntImm):
        d = _divisor(int(extents[-2]), MAX_UNROLL // max(inner, 1))
        if d > 1:
            sch.unroll(sch.split(loops[-2], [None, d])[1])


def schedule_glue(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """``func`` with the innermost loops of each elementwise block unrolled in groups of up
    to :data:`MAX_UNROLL` elements (reductions and symbolic extents are left as they are).
    The same computation; a function the schedule cannot handle is returned unchanged."""
    try:
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            unroll_rows(sch, block)
        return sch.mod["main"]
    except Exception as e:  # noqa: BLE001 - a glue pass we cannot schedule runs as lowered
        log.debug("glue pass left unscheduled: %s", e)
        return func
