"""Lowering a compiled Relax model to a flat sequence of TIR calls (what the C code replays)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm


def lower_for_standalone(mod: tvm.IRModule, target: tvm.target.Target,
                         opaque: set[str] | frozenset[str] = frozenset(),
                         fuse: bool = True) -> tvm.IRModule:
    """Lower a Relax module until ``main`` is a flat sequence of ``call_tir`` / ``R.reshape``.

    Args:
        mod: the Relax module (e.g. ``CompiledModel.mod``).
        target: the target (LegalizeOps may choose per target).
        opaque: PrimFuncs never fused with neighbours (our integer kernels: their int32 buffer
            shapes make FuseTIR fail, and their schedules must stay as tuned).
        fuse: fuse the elementwise / reduction TE ops (dequantize + relu + quantize, ...). The
            fused functions perform the same float32 operations as the unfused ones.

    The PrimFuncs outside ``opaque`` (the glue) get the unrolled rows of
    :func:`~tvm_mpq.schedules.glue.schedule_glue`, as their measurement does.
    """
    import tvm
    from tvm import relax

    mod = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    for gv, f in list(mod.functions.items()):
        if gv.name_hint in opaque and isinstance(f, tvm.tirx.PrimFunc):
            mod[gv] = f.with_attr("op_pattern", 8)  # kOpaque: FuseOps keeps it alone
    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.LegalizeOps(),
              relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant()]
    if fuse:
        passes += [relax.transform.FuseOps(), relax.transform.FuseTIR()]
    passes += [relax.transform.DeadCodeElimination(), relax.transform.RewriteDataflowReshape(),
               relax.transform.ToNonDataflow()]
    from tvm_mpq.schedules.glue import schedule_glue

    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    for gv, f in list(mod.functions.items()):
        if gv.name_hint not in opaque and isinstance(f, tvm.tirx.PrimFunc):
            mod[gv] = schedule_glue(f)
    return mod
