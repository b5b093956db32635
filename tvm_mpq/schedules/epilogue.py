"""A kernel with its epilogue fused: the int32 result is requantized where the tile is stored.

The compiler's requantize epilogue (:func:`~tvm_mpq.compiler.dyadic_ops.requantize_dyadic_te`)
as a pass of its own stores every int32 accumulator to memory and reads it back in a loop
of its own. Fused (:meth:`~tvm_mpq.schedules.kernel.KernelDef.with_epilogue`), the kernel's
default schedule is applied to its own stages and the epilogue is inlined into the stage
that writes the output (the register tile's write-back, or the lane read-out of a swar
kernel): each accumulator is requantized from its register and stored as one byte. Where it
cannot be inlined (e.g. the plain lowering, whose output stage is the reduction itself) the
epilogue stays a loop nest of its own in the same function, with the glue's unrolled rows.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir

from tvm_mpq.schedules.glue import unroll_rows
from tvm_mpq.schedules.kernel import KernelDef

__all__ = ["fused_schedule", "fuses"]

log = logging.getLogger(__name__)


def fuses(kd: KernelDef, profile: Any) -> bool:
    """Whether the compiler fuses the requantize epilogue into kernel ``kd`` on ``profile``
    (a :class:`~tvm_mpq.targets.Profile`): where it was measured cheaper than the kernel and
    the epilogue's own (unrolled) pass, i.e. 64-bit registers, a kernel window, and the
    int8 / unpack / swar variants, except depthwise int8 without Zbb and the unblocked
    pixel lanes of a conv that is not depthwise.

    Measured on Spike (kernel + epilogue pass -> fused, instructions): rv64gc_zbb depthwise
    3x3 64 ch 28x28 swar w2a2 1.14M -> 1.05M, int8 1.69M -> 1.64M, 3x3 conv 64 -> 64 int8
    80.2M -> 79.0M, swar w4a4 22.35M -> 22.25M; rv64gc depthwise swar w2a2 1.28M -> 1.16M,
    int8 1.83M -> 2.17M (the clamp branches); 3x3 conv swar w8a8 (2 pixel lanes) 44.6M ->
    45.2M. Not fused: pointwise 64 -> 128 at 14x14
    (int8 and swar w4a4: 0.3-0.9% more; the tile loads each channel's constants), bitserial
    (its output stage is the plane combine: not inlined), and rv32imc (the hi32 form's
    registers spill in the tile: depthwise swar w2a2 1.50M -> 2.03M)."""
    from tvm_mpq.schedules.workload import Conv2dWorkload

    wl = kd.workload
    if (profile.xlen != 64 or kd.variant not in ("int8", "unpack", "swar")
            or not isinstance(wl, Conv2dWorkload) or wl.kh * wl.kw == 1):
        return False
    depthwise = wl.groups > 1 and wl.kg == 1
    if not depthwise and kd.attrs.get("layout") == "pixels" and "block" not in kd.attrs:
        return False  # the conv's 2-lane read-out (w8a8) tile: the fused one spills
    return not (depthwise and kd.variant != "swar" and not profile.has_zbb)


def fused_schedule(kd: KernelDef, target: Any = None) -> tvm.IRModule:
    """The scheduled module (PrimFunc under ``"main"``) of ``kd`` with its epilogue: the
    default schedule of the kernel (:func:`~tvm_mpq.schedules.default_schedules.
    default_schedule`) with the epilogue inlined into the output's write (``attrs
    "epilogue_inlined"`` says whether it was)."""
    from tvm_mpq.schedules.default_schedules import default_schedule

    if kd.epilogue is None:
        raise ValueError(f"{kd.describe()} has no epilogue to fuse")
    mod = default_schedule(kd, target)
    inlined = False
    if mod is None:  # the plain lowering
        mod = tvm.IRModule({"main": kd.prim_func("main")})
    else:
        sch = s_tir.Schedule(mod)
        try:
            sch.reverse_compute_inline(sch.get_sblock(kd.epilogue.name))
            mod, inlined = sch.mod, True
        except Exception as e:  # noqa: BLE001 - e.g. the output stage is a reduction
            log.debug("epilogue of %s not inlined: %s", kd.describe(), e)
    if not inlined:  # its own loop nest, as the glue runs it
        sch = s_tir.Schedule(mod)
        unroll_rows(sch, sch.get_sblock(kd.epilogue.name))
        mod = sch.mod
    return tvm.IRModule({"main": mod["main"].with_attr("epilogue_inlined", inlined)})
