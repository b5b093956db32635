"""Hand-written default schedules: what a kernel runs with when nobody tuned it.

Bitserial: the plain TE lowering keeps every bit-plane popcount sum in memory. Here the
output is tiled over (k, ow) and the plane sums of a tile live in a ``local`` buffer whose
loops are fully unrolled, so every index is constant and LLVM promotes it to registers;
the reduction (channel words, kernel window) runs outside the tile, the plane combine is
fused right after it, the padding is applied to packed words (see ``conv2d._pad_packed``)
and the packing gathers channel bytes once per pixel. Tile sizes come from instruction
counts on Spike (see ``_bitserial_config``).

int8 / unpack / fp32 keep the plain lowering: the same register tiling (``_schedule_direct``)
was measured slower on rv64gc (LLVM schedules all loads and multiplies of the unrolled
body first and spills), so it is kept only as an explicit option.

Every schedule falls back to ``None`` (the plain lowering) when a primitive fails, so any
valid workload still compiles.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir

from .kernel import KernelDef
from .workload import Conv2dWorkload, DenseWorkload

log = logging.getLogger(__name__)

def _conv_workload(kd: KernelDef) -> Conv2dWorkload:
    wl = kd.workload
    if isinstance(wl, DenseWorkload):
        return Conv2dWorkload(wl.m, wl.d, 1, 1, wl.n_out, 1, 1)
    return wl


def _fit(extent: int, want: int) -> int:
    """``want`` if it divides ``extent`` (ragged tiles add predicates to the unrolled body)."""
    return want if want <= extent and extent % want == 0 else 1


def _bitserial_config(wl: Conv2dWorkload, w_bits: int, a_bits: int) -> dict[str, int]:
    """Tile parameters measured on rv64gc_zbb (1x64x28x28 -> 64, 3x3).

    LLVM hoists every load and AND of a large unrolled body ahead of the popcounts and
    spills, so big register tiles lose: w1a1 is best with 1x2 (k x ow) outputs, w2a2 with
    one output and its 4 plane accumulators, and wider bits with the plane loops serial
    around a 2x2 tile (all 16 planes of even one output do not fit the 31 registers).
    """
    planes = w_bits * a_bits
    if planes == 1:
        return {"kt": 1, "owt": _fit(wl.ow, 2), "serial_planes": 0}
    if planes <= 4:
        return {"kt": 1, "owt": 1, "serial_planes": 0}
    return {"kt": _fit(wl.kg, 2), "owt": _fit(wl.ow, 2), "serial_planes": 2}


def _roles(sch: s_tir.Schedule, block: Any, loops: list) -> dict[str, Any]:
    """Map each block iterator's name (``v_k`` -> ``k``) to the loop among ``loops`` bound to it.

    compute_at drops unit loops, so positions are not stable; the bindings are.
    """
    blk = sch.get(block)
    srefs = {sch.get(lp).loop_var: lp for lp in loops}
    out: dict[str, Any] = {}
    binding = _block_realize(sch, block)
    for iv, val in zip(blk.iter_vars, binding.iter_values, strict=True):
        used = tvm.tirx.analysis.undefined_vars(val)
        hits = [srefs[v] for v in used if v in srefs]
        if hits:
            out[iv.var.name.removeprefix("v_")] = hits[-1]
    return out


def _depth(sch: s_tir.Schedule, block: Any, loop: Any) -> int:
    """Number of loops of ``block`` down to and including ``loop``."""
    target = sch.get(loop)
    for i, lp in enumerate(sch.get_loops(block)):
        if sch.get(lp).same_as(target):
            return i + 1
    raise ValueError("loop is not an ancestor of the block")


def _block_realize(sch: s_tir.Schedule, block: Any) -> Any:
    """The SBlockRealize of ``block``: the body of its innermost loop (the only child there)."""
    body = sch.get(sch.get_loops(block)[-1]).body
    if not isinstance(body, s_tir.SBlockRealize) or not body.block.same_as(sch.get(block)):
        raise ValueError(f"block {sch.get(block).name_hint} is not alone under its loop")
    return body


def _schedule_bitserial(kd: KernelDef, kt: int | None = None, owt: int | None = None,
                        unroll_rx: bool = True, k_outer: bool = False,
                        serial_planes: int = 0) -> tvm.IRModule:
    """Register-tiled bitserial conv; tile arguments default to :func:`_bitserial_config`.

    Args:
        kt, owt: output channels x output columns per tile.
        unroll_rx: unroll the kernel columns (overlapping activation words reused).
        k_outer: k tiles outermost (weights reused across the row) instead of innermost.
        serial_planes: 0: all W*A plane sums of the tile in registers; 1: the activation
            planes, 2: both plane loops run serially around the reduction.
    """
    wl = _conv_workload(kd)
    if kt is None or owt is None:
        cfg = _bitserial_config(wl, kd.w_bits, kd.a_bits)
        kt, owt, serial_planes = cfg["kt"], cfg["owt"], cfg["serial_planes"]
    sch = s_tir.Schedule(tvm.IRModule({"main": kd.prim_func("main")}))
    if wl.groups > 1 and kt > 1 and wl.kg % kt:
        kt = 1  # a k tile must not straddle two groups (different activation words)

    # the packing: per pixel, gather the channel bytes into registers, then all planes
    pack = sch.get_sblock("a_pack")
    nn, g, b, cw, hh, ww, q = sch.get_loops(pack)
    sch.reorder(nn, g, cw, hh, ww, q, b)
    gather = sch.get_sblock("a_pack_bytes")
    sch.compute_at(gather, q)
    sch.set_scope(gather, 0, "local")
    for lp in sch.get_loops(gather)[6:]:
        sch.unroll(lp)
    sch.unroll(b)

    out = sch.get_sblock(kd.output.op.name)
    n, k, oh, ow, *red = sch.get_loops(out)
    ko, ki = sch.split(k, [None, kt])
    owo, owi = sch.split(ow, [None, owt])
    if k_outer:
        sch.reorder(n, ko, oh, owo, ki, owi, *red)
    else:
        sch.reorder(n, oh, owo, ko, ki, owi, *red)
    for lp in (ki, owi, *red):
        sch.unroll(lp)

    planes = sch.get_sblock("bitserial_planes")
    anchor = owo if k_outer else ko
    sch.compute_at(planes, anchor)
    sch.set_scope(planes, 0, "local")
    ploops = sch.get_loops(planes)
    depth = _depth(sch, out, anchor)
    inner = ploops[depth:]
    role = _roles(sch, planes, inner)
    red_l = [role[r] for r in ("rc", "ry", "rx") if r in role]
    # plane loops run serially outside the reduction when all planes do not fit registers
    serial_names = ("bw", "ba")[2 - serial_planes:] if serial_planes else ()
    ser_l = [role[r] for r in ("bw", "ba") if r in role and r in serial_names]
    tile_l = [role[r] for r in ("k", "bw", "ba", "oh", "ow") if r in role and r not in serial_names]
    if not red_l:
        return sch.mod
    sch.reorder(*ser_l, *red_l, *tile_l)
    init = sch.decompose_reduction(planes, red_l[0])
    for lp in tile_l:
        sch.unroll(lp)
    if "rx" in role and unroll_rx:
        sch.unroll(role["rx"])
    for lp in sch.get_loops(init)[depth + len(ser_l):]:
        sch.unroll(lp)
    return sch.mod


def _schedule_direct(kd: KernelDef, kt: int = 4, owt: int = 2, unroll_rx: bool = True,
                     k_outer: bool = False) -> tvm.IRModule:
    """int8 / unpack (and fp32 if asked): register tile of kt x owt int32 accumulators."""
    wl = _conv_workload(kd)
    if wl.groups > 1 and wl.kg % kt:
        kt = 1
    sch = s_tir.Schedule(tvm.IRModule({"main": kd.prim_func("main")}))
    out = sch.get_sblock(kd.output.op.name)
    acc = sch.cache_write(out, 0, "local")
    n, k, oh, ow = sch.get_loops(acc)
    ko, ki = sch.split(k, [None, kt])
    owo, owi = sch.split(ow, [None, owt])
    if k_outer:
        sch.reorder(n, ko, oh, owo, ki, owi)
    else:
        sch.reorder(n, oh, owo, ko, ki, owi)
    for lp in (ki, owi):
        sch.unroll(lp)
    sch.compute_at(out, ko)
    inner = sch.get_loops(out)[_depth(sch, acc, ko):]
    role = _roles(sch, out, inner)
    red_l = [role[r] for r in ("rc", "ry", "rx") if r in role]
    tile_l = [role[r] for r in ("n", "k", "oh", "ow") if r in role]
    if not red_l:
        return sch.mod
    sch.reorder(*red_l, *tile_l)
    sch.decompose_reduction(out, red_l[0])
    for lp in tile_l:
        sch.unroll(lp)
    if "rx" in role and unroll_rx:
        sch.unroll(role["rx"])
    init = sch.get_sblock(kd.output.op.name + "_init")
    for lp in sch.get_loops(init)[_depth(sch, acc, ko):]:
        sch.unroll(lp)
    return sch.mod


def has_hw_popcount(target: Any) -> bool:
    """Whether ``target`` (profile name, JSON dict, Target or None = host) has a popcount
    instruction: x86-64 hosts and RISC-V with Zbb. Without one LLVM expands popcount into
    ~15 instructions and a few temporaries, and the register tiles spill (measured slower
    than the plain lowering on rv64gc), so bitserial keeps the plain lowering there."""
    if target is None:
        return True
    if isinstance(target, str):
        if target in ("llvm", "host"):
            return True
        from ..targets import get_profile

        prof = get_profile(target)
        return bool(prof.is_host or prof.has_zbb)
    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    mtriple = str(tgt.attrs.get("mtriple", ""))
    if not mtriple.startswith("riscv"):
        return True
    return any(str(a) == "+zbb" for a in tgt.attrs.get("mattr", []))


def default_schedule(kd: KernelDef, target: Any = None) -> tvm.IRModule | None:
    """A scheduled module (PrimFunc under "main") for ``kd``, or None for the plain lowering.

    Args:
        kd: the kernel.
        target: the TVM target, profile name or JSON dict (None: the host).
    """
    try:
        if kd.variant == "bitserial" and has_hw_popcount(target):
            return _schedule_bitserial(kd)
    except Exception as e:  # noqa: BLE001 - any primitive failing means: plain lowering
        log.debug("default schedule for %s failed, using the plain lowering: %s",
                  kd.describe(), e)
    return None
