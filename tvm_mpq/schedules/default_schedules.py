"""Hand-written default schedules: what a kernel runs with when nobody tuned it.

Bitserial: the plain TE lowering keeps every bit-plane popcount sum in memory. Here the
output is tiled over (k, ow) and the plane sums of a tile live in a ``local`` buffer whose
loops are fully unrolled, so every index is constant and LLVM promotes it to registers;
the reduction (channel words, kernel window) runs outside the tile, the plane combine is
fused right after it, the padding is applied to packed words (see ``conv2d._pad_packed``)
and the packing reads 2-8 pixels per load and transposes bit slices (``_schedule_packing``).
Tile sizes come from instruction counts on Spike (see :func:`bitserial_tile`); which targets
get the tiles, from :func:`bitserial_is_tiled`. docs/kernels.md has the design.

fp32 / int8 / unpack / swar: a register tile of kt x owt accumulators (``_schedule_direct``)
around the reduction, the kernel columns unrolled; the tile per layer class comes from
instruction counts on Spike (:mod:`.tiles`: ``direct_tile``, ``swar_tile``). Larger tiles lose:
LLVM hoists every load of the unrolled body and spills.

Every schedule falls back to ``None`` (the plain lowering) when a primitive fails, so any
valid workload still compiles.
"""

from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir

from tvm_mpq.schedules.kernel import KernelDef
from tvm_mpq.schedules.registry import dense_as_conv
from tvm_mpq.schedules.tiles import DirectTile, bitserial_tile, direct_tile, swar_tile
from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload

log = logging.getLogger(__name__)

def _conv_workload(kd: KernelDef) -> Conv2dWorkload:
    wl = kd.workload
    return dense_as_conv(wl) if isinstance(wl, DenseWorkload) else wl


def _schedule_swar(kd: KernelDef) -> tvm.IRModule:
    """The swar kernel: register-tiled packed multiply-adds; with pixel lanes also the lane
    extraction (one accumulator load for its P outputs) and the packing (lanes unrolled)."""
    wl = _conv_workload(kd)
    kt, owt = swar_tile(wl, kd.w_bits, kd.a_bits, kd.attrs.get("layout"), kd.word_bits,
                        kd.attrs.get("block", wl.cg))
    if "block" in kd.attrs or "block_words" in kd.attrs:
        sch = _schedule_blocked(kd, kt, owt)
    else:
        sch = s_tir.Schedule(_schedule_direct(kd, kt=kt, owt=owt, block="swar_acc"))
    if kd.attrs.get("layout") != "pixels":
        # lanes unrolled; in pointwise / dense layers the read-out where the tile is written
        # back (Spike, rv32imc pointwise 64 -> 128 14x14 w4a4 2.79M -> 2.71M; neutral on 3x3)
        sch.unroll(sch.get_loops(sch.get_sblock("swar_pack"))[-1])
        if wl.kh * wl.kw == 1:
            sch.reverse_compute_inline(sch.get_sblock(kd.output.op.name))
        return sch.mod
    cols = -(-wl.ow // kd.attrs["lanes"])
    out = sch.get_sblock(kd.output.op.name)
    *_, ow = sch.get_loops(out)
    lane, col = sch.split(ow, [None, cols])
    if wl.groups > 1 and wl.kg == 1:  # lane by lane (Spike, depthwise w2a2: 837K -> 784K)
        sch.unroll(col)
    else:  # one accumulator load per P outputs (3x3 w8a8: 44.2M; lane by lane 44.6M)
        sch.reorder(col, lane)
        sch.unroll(lane)
    sch.unroll(sch.get_loops(sch.get_sblock("swar_pack"))[-1])
    return sch.mod


def _schedule_blocked(kd: KernelDef, kt: int, owt: int) -> s_tir.Schedule:
    """Blocked lanes: a kt x owt tile of int32 lane sums (``swar_wide``: P per word with
    pixel lanes, one with channel lanes) around the blocks; per block a kt x owt tile of
    packed words (``swar_acc``) around the block's reduction, then emptied into the sums."""
    wl = _conv_workload(kd)
    if wl.groups > 1 and wl.kg % kt:
        kt = 1
    sch = s_tir.Schedule(tvm.IRModule({"main": kd.prim_func("main")}))
    wide = sch.get_sblock("swar_wide")
    wb = sch.cache_write(wide, 0, "local")
    n, k, oh, q, *j = sch.get_loops(wb)  # j: the lanes of a pixel word
    ko, ki = sch.split(k, [None, kt])
    qo, qi = sch.split(q, [None, owt])
    sch.reorder(n, oh, qo, ko, ki, qi, *j)
    for lp in (ki, qi, *j):
        sch.unroll(lp)
    sch.compute_at(wide, ko)
    role = _roles(sch, wide, sch.get_loops(wide)[_depth(sch, wb, ko):])
    tile = [role[r] for r in ("k", "ow", "j") if r in role]
    sch.reorder(role["rb"], *tile)
    sch.decompose_reduction(wide, role["rb"])
    for lp in tile:
        sch.unroll(lp)
    for lp in sch.get_loops(sch.get_sblock("swar_wide_init"))[_depth(sch, wb, ko):]:
        sch.unroll(lp)
    acc = sch.get_sblock("swar_acc")
    rb = role["rb"]
    sch.compute_at(acc, rb)
    sch.set_scope(acc, 0, "local")
    inner = sch.get_loops(acc)[_depth(sch, acc, rb):]  # none: a 1 x 1 tile of 1-word blocks
    ar = _roles(sch, acc, inner) if inner else {}
    red = [ar[r] for r in ("rc", "ry", "rx", "rj") if r in ar]
    atile = [ar[r] for r in ("k", "ow") if r in ar]
    for lp in atile:
        sch.unroll(lp)
    if not red:  # a block of one channel and one tap: nothing to reduce inside
        return sch
    sch.reorder(*red, *atile)
    sch.decompose_reduction(acc, red[0])
    # 4 channel words per iteration (rv32imc dense w4a4, blocks of 128: 534K -> 444K; 8: 440K)
    if "rj" in ar and (e := int(sch.get(ar["rj"]).extent)) % 4 == 0 and e > 4:
        sch.unroll(sch.split(ar["rj"], [None, 4])[1])
    # the kernel rows too on RV32 (Spike, reference layer w4a4: 43.1M -> 42.6M; on RV64 +0.2%)
    for r in ("rx", "ry") if kd.word_bits == 32 else ("rx",):
        if r in ar:
            sch.unroll(ar[r])
    for lp in sch.get_loops(sch.get_sblock("swar_acc_init"))[_depth(sch, acc, rb):]:
        sch.unroll(lp)
    return sch


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


def _schedule_packing(sch: s_tir.Schedule, padded: bool = True) -> None:
    """Schedule the activation bit-packing stages of a bitserial kernel (see ``conv2d``).

    ``padded=False``: the workload has no padding, so the "padded" planes are a view of the
    packed ones and are inlined (no copy)."""
    try:
        blocks = sch.get_sblock("a_pack_blocks")
    except Exception:  # noqa: BLE001 - the per-pixel gather packing
        blocks = None
    pack = sch.get_sblock("a_pack")
    if blocks is None:
        # per pixel, gather the channel bytes into registers, then all planes
        nn, g, b, cw, hh, ww, q = sch.get_loops(pack)
        sch.reorder(nn, g, cw, hh, ww, q, b)
        gather = sch.get_sblock("a_pack_bytes")
        sch.compute_at(gather, q)
        sch.set_scope(gather, 0, "local")
        for lp in sch.get_loops(gather)[6:]:
            sch.unroll(lp)
        sch.unroll(b)
        return
    # slices: the 8 channel blocks of a chunk are loaded once (registers) for all planes
    sl = sch.get_sblock("a_pack_slices")
    nn, g, b, q, pb, j = sch.get_loops(sl)
    sch.reorder(nn, g, q, pb, b, j)
    sch.compute_at(blocks, pb)
    inner = sch.get_loops(blocks)[4:]
    if all(isinstance(sch.get(lp).extent, tvm.tirx.IntImm) for lp in inner):
        sch.set_scope(blocks, 0, "local")
        for lp in inner:
            sch.unroll(lp)
    # else: a ragged last chunk (channels not a multiple of 8) gives a variable extent; the
    # blocks then stay a loop in memory
    sch.unroll(b)
    sch.unroll(j)
    # packed words: per block of s pixels, the 8 slice words are read once
    s = int(sch.get(sch.get_loops(blocks)[-1]).extent)
    nn, g, p, cw, b, qq = sch.get_loops(pack)
    po, pi = sch.split(p, [None, s])
    sch.reorder(nn, g, cw, b, po, pi, qq)
    sch.unroll(pi)
    sch.unroll(qq)
    if not padded:
        sch.compute_inline(sch.get_sblock("a_pack_pad"))


def _schedule_bitserial(kd: KernelDef, kt: int | None = None, owt: int | None = None,
                        unroll_rx: bool = True, k_outer: bool = False,
                        serial_planes: int = 0, unroll_ry: bool = False) -> tvm.IRModule:
    """Register-tiled bitserial conv; tile arguments default to :func:`bitserial_tile`.

    Args:
        kt, owt: output channels x output columns per tile.
        unroll_rx: unroll the kernel columns (overlapping activation words reused).
        k_outer: k tiles outermost (weights reused across the row) instead of innermost.
        serial_planes: 0: all W*A plane sums of the tile in registers; 1: the activation
            planes, 2: both plane loops run serially around the reduction.
    """
    wl = _conv_workload(kd)
    if kt is None or owt is None:
        tile = bitserial_tile(wl, kd.w_bits, kd.a_bits)
        kt, owt = tile.kt, tile.owt
        k_outer, unroll_ry = k_outer or tile.k_outer, unroll_ry or tile.unroll_ry
    sch = s_tir.Schedule(tvm.IRModule({"main": kd.prim_func("main")}))
    if wl.groups > 1 and kt > 1 and wl.kg % kt:
        kt = 1  # a k tile must not straddle two groups (different activation words)

    _schedule_packing(sch, padded=any(wl.padding))

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
    if not inner:  # 1x1 kernel, one word, one plane pair, 1x1 tile: nothing left to arrange
        return sch.mod
    role = _roles(sch, planes, inner)
    red_l = [role[r] for r in ("rc", "ry", "rx") if r in role]
    # plane loops run serially outside the reduction when all planes do not fit registers
    serial_names = ("bw", "ba")[2 - serial_planes:] if serial_planes else ()
    ser_l = [role[r] for r in ("bw", "ba") if r in role and r in serial_names]
    # grouped planes (conv2d.grouped_planes): the weight-plane reduction "rb" is unrolled
    # inside the tile with the shift groups "j"
    tile_l = [role[r] for r in ("k", "rb", "bw", "ba", "j", "oh", "ow")
              if r in role and r not in serial_names]
    if not red_l:
        return sch.mod
    sch.reorder(*ser_l, *red_l, *tile_l)
    init = sch.decompose_reduction(planes, red_l[0])
    for lp in tile_l:
        sch.unroll(lp)
    if "rx" in role and unroll_rx:
        sch.unroll(role["rx"])
    if "ry" in role and unroll_ry:
        sch.unroll(role["ry"])
    for lp in sch.get_loops(init)[depth + len(ser_l):]:
        sch.unroll(lp)
    return sch.mod


def _schedule_direct(kd: KernelDef, kt: int = 4, owt: int = 2, unroll_rx: bool = True,
                     k_outer: bool = False, block: str | None = None, oht: int = 1,
                     rc_unroll: int = 1) -> tvm.IRModule:
    """int8 / unpack / swar (and fp32 if asked): register tile of kt x oht x owt accumulators
    of the reduction ``block`` (default: the output stage); ``rc_unroll`` input channels per
    reduction iteration. With ``oht > 1`` or ``rc_unroll > 1`` the kernel rows are unrolled
    too (tiles.DirectTile)."""
    wl = _conv_workload(kd)
    if wl.groups > 1 and wl.kg % kt:
        kt = 1
    sch = s_tir.Schedule(tvm.IRModule({"main": kd.prim_func("main")}))
    out = sch.get_sblock(block or kd.output.op.name)
    acc = sch.cache_write(out, 0, "local")
    n, k, oh, ow = sch.get_loops(acc)
    ko, ki = sch.split(k, [None, kt])
    oho, ohi = sch.split(oh, [None, oht])
    owo, owi = sch.split(ow, [None, owt])
    if k_outer:
        sch.reorder(n, ko, oho, owo, ki, ohi, owi)
    else:
        sch.reorder(n, oho, owo, ko, ki, ohi, owi)
    for lp in (ki, ohi, owi):
        sch.unroll(lp)
    sch.compute_at(out, ko)
    inner = sch.get_loops(out)[_depth(sch, acc, ko):]
    role = _roles(sch, out, inner)
    red_l = [role[r] for r in ("rc", "ry", "rx", "rj") if r in role]
    tile_l = [role[r] for r in ("n", "k", "oh", "ow") if r in role]
    if not red_l:
        return sch.mod
    sch.reorder(*red_l, *tile_l)
    sch.decompose_reduction(out, red_l[0])
    for lp in tile_l:
        sch.unroll(lp)
    if "rx" in role and unroll_rx:
        sch.unroll(role["rx"])
    if rc_unroll > 1 and "rc" in role:
        sch.unroll(sch.split(role["rc"], [None, rc_unroll])[1])
    if DirectTile(kt, owt, oht, rc_unroll).rows_unrolled and "ry" in role:
        sch.unroll(role["ry"])
    init = sch.get_sblock((block or kd.output.op.name) + "_init")
    for lp in sch.get_loops(init)[_depth(sch, acc, ko):]:
        sch.unroll(lp)
    return sch.mod


def _riscv_mattr(target: Any) -> list[str] | None:
    """The LLVM attributes of a RISC-V ``target`` (profile name, JSON dict or Target); None
    for the host and other architectures."""
    if target is None:
        return None
    if isinstance(target, str):  # a profile name or alias ("llvm", "host": the host profile)
        from tvm_mpq.targets import get_profile

        prof = get_profile(target)
        return None if prof.is_host else list(prof.mattr)
    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if not str(tgt.attrs.get("mtriple", "")).startswith("riscv"):
        return None
    return [str(a) for a in tgt.attrs.get("mattr", [])]


def has_hw_popcount(target: Any) -> bool:
    """Whether ``target`` (profile name, JSON dict, Target or None = host) has a popcount
    instruction: x86-64 hosts and RISC-V with Zbb. Without one LLVM expands popcount into
    ~15 instructions (see :func:`bitserial_is_tiled` for what that means for the schedule)."""
    mattr = _riscv_mattr(target)
    return mattr is None or "+zbb" in mattr


def bitserial_is_tiled(w_bits: int, a_bits: int, target: Any) -> bool:
    """Whether bitserial gets the register-tiled schedule on ``target``.

    Measured on Spike (1x64x28x28 -> 64, 3x3): with a popcount instruction always; on scalar
    cores without one too (rv64gc: w4a4 235M -> 107M, w2a2 47.6M -> 28.0M, w1a1 7.6M ->
    7.2M instructions: the plane loops must be unrolled for the grouped plane sums' constant
    conditions to fold); on vector cores (rv64gcv) LLVM vectorizes the plain lowering's
    popcounts, which wins up to W*A = 4 (w2a2 17.6M plain vs 28.3M tiled; w4a4 234M vs 108M).
    """
    mattr = _riscv_mattr(target)
    if mattr is not None and "+zbb" not in mattr and "+v" in mattr:
        return w_bits * a_bits > 4
    return True


def default_schedule(kd: KernelDef, target: Any = None) -> tvm.IRModule | None:
    """A scheduled module (PrimFunc under "main") for ``kd``, or None for the plain lowering.

    Args:
        kd: the kernel.
        target: the TVM target, profile name or JSON dict (None: the host).
    """
    try:
        if kd.variant == "bitserial" and bitserial_is_tiled(kd.w_bits, kd.a_bits, target):
            return _schedule_bitserial(kd)
        if kd.variant == "swar":
            # measured on rv64gc (Spike) 1.5-1.7x fewer instructions than the plain lowering
            # (conv3x3_64_28 w4a4 channel lanes 46.9M -> 30.3M)
            return _schedule_swar(kd)
        if kd.variant in ("fp32", "int8", "unpack"):
            t = direct_tile(_conv_workload(kd), kd.variant)
            return _schedule_direct(kd, kt=t.kt, owt=t.owt, oht=t.oht, rc_unroll=t.rc_unroll)
    except Exception as e:  # noqa: BLE001 - any primitive failing means: plain lowering
        log.debug("default schedule for %s failed, using the plain lowering: %s",
                  kd.describe(), e)
    return None


def bitserial_packing_func(kd: KernelDef) -> tuple[tvm.tirx.PrimFunc, list[int]]:
    """The activation packing (and padding) of bitserial kernel ``kd`` alone, scheduled as in
    its default schedule: input -> padded packed planes (returns the PrimFunc and the planes'
    shape). Measured next to the whole kernel it splits the kernel's cost into packing and
    convolution (bench/riscv_kernels.py)."""
    from tvm import te

    if kd.variant != "bitserial":
        raise ValueError(f"{kd.describe()} is not a bitserial kernel")
    padded = any(_conv_workload(kd).padding)
    # without padding the kernel reads the packed planes through a view (inlined)
    planes = _producer(kd, "a_pack_pad" if padded else "a_pack")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([kd.tensors[0], planes])}))
    _schedule_packing(sch, padded=True)
    return sch.mod["main"], [int(d) for d in planes.shape]


def _producer(kd: KernelDef, name: str):
    """The TE tensor called ``name`` among the producers of ``kd``'s output."""
    seen, todo = set(), [kd.output]
    while todo:
        t = todo.pop()
        if t.op.name == name:
            return t
        new = [i for i in getattr(t.op, "input_tensors", []) if i.op not in seen]
        seen.update(i.op for i in new)
        todo += new
    raise ValueError(f"{kd.describe()} has no stage {name!r}")
