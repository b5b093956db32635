"""Writing an artifact (:func:`export_standalone`) and re-opening it (:func:`load_standalone`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvm_mpq.deploy.artifact import StandaloneArtifact
from tvm_mpq.deploy.buildrules import makefile, tool_vars
from tvm_mpq.deploy.codegen import (
    WEIGHTS_S,
    IOQuant,
    entry_signature,
    layout_weights,
    model_c,
    model_h,
)
from tvm_mpq.deploy.graph import (
    ModelGraph,
    TensorRef,
    add_workspaces,
    arena_lower_bound,
    build_graph,
    plan_memory,
    workspace_region,
)
from tvm_mpq.deploy.lower import lower_for_standalone
from tvm_mpq.deploy.memory import (
    DoesNotFitError,
    board_memory,
    link_figures,
    memory_figures,
    undefined_symbols,
)
from tvm_mpq.deploy.workspace import compile_with_workspaces
from tvm_mpq.measure import toolchain
from tvm_mpq.measure.baremetal import HARNESS_DIR
from tvm_mpq.measure.toolchain import BoardMemory
from tvm_mpq.targets import Profile, get_profile

if TYPE_CHECKING:
    import tvm

    from tvm_mpq.compiler.compiled import CompiledModel

#: harness files copied into every artifact (so its Makefile builds without this package)
HARNESS_FILES = ("crt0.S", "htif.c", "tvm_rt_stubs.c", "harness.h", "counters.h", "link.ld",
                 "link_board.ld", "standalone_main.c", "standalone_input.S",
                 "standalone_linux.c")
MANIFEST_FORMAT = "tvm_mpq.standalone/1"


def _copy_sources(d: Path) -> None:
    """The harness sources and the tvm-ffi / dlpack headers the C code includes."""
    (d / "harness").mkdir(parents=True, exist_ok=True)
    for f in HARNESS_FILES:
        shutil.copyfile(HARNESS_DIR / f, d / "harness" / f)
    inc = Path(toolchain.ffi_include_dir())
    for rel in ("tvm/ffi/c_api.h", "dlpack/dlpack.h"):
        (d / "include" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inc / rel, d / "include" / rel)


def _build_kernels(lowered: tvm.IRModule, g: ModelGraph, prof: Profile, d: Path,
                   linux: bool) -> tuple[dict[str, str], dict[str, int]]:
    """One object with every called PrimFunc, each under its op's unique symbol, per target
    (``"baremetal"``, and ``"linux"`` when asked); returns the object file names and each
    symbol's workspace bytes (the larger of the targets')."""
    import tvm

    gvs = {gv.name_hint: gv for gv in lowered.functions}
    kmod = tvm.IRModule({op.symbol: lowered[gvs[op.func]].with_attr("global_symbol", op.symbol)
                         for op in g.ops})
    objs = {"baremetal": f"kernels_{prof.name}.o"}
    if linux:
        objs["linux"] = f"kernels_{prof.name}_linux.o"
    ws: dict[str, int] = {}
    for kind, name in objs.items():
        built, sizes = compile_with_workspaces(kmod, prof.target(kind))
        built.mod.write_to_file(str(d / name))
        for sym, n in sizes.items():
            ws[sym] = max(ws.get(sym, 0), n)
    unused = sorted(k for k, n in ws.items() if n and k not in {op.symbol for op in g.ops})
    if unused:
        raise NotImplementedError(f"workspace in {unused}, a function no op calls directly: "
                                  "its memory cannot be planned exactly")
    return objs, ws


def _precheck(board: BoardMemory | None, arena_bytes: int, weight_bytes: int) -> None:
    """Fail before any build when the arena or the weights alone exceed the board."""
    if board is None:
        return
    for what, need, region, have in (
            (".mpq_arena + .stack", arena_bytes + board.stack_bytes, "ram", board.ram_bytes),
            ("mpq_weights (.rodata)", weight_bytes, "flash", board.flash_bytes)):
        if need > have:
            raise DoesNotFitError(
                f"the model does not fit the board: section {what} does not fit in {region} "
                f"({region}_kib={have / 1024:g}): region {region} overflowed by at least "
                f"{need - have} bytes")


def _tdesc(t: TensorRef) -> dict[str, Any]:
    return {"buffer": t.storage.sid, "shape": list(t.shape), "dtype": t.dtype}


def _io_quant(compiled: CompiledModel, g: ModelGraph) -> dict[str, IOQuant | None]:
    """``(scale, zero_point, bits)`` of the integer input / output codes (``integer_io``), from
    the compiled model's integer program; None for a float buffer."""
    prog = compiled.program
    out: dict[str, IOQuant | None] = {}
    for what, t in (("input", g.input), ("output", g.output)):
        spec = getattr(prog, f"{what}_spec", None) if prog is not None else None
        if t.dtype == "float32":
            out[what] = None
        elif spec is None:
            raise NotImplementedError(f"the model's {what} is {t.dtype} but the compiled model "
                                      "gives no quantization parameters for it")
        else:
            out[what] = (float(spec.scale), int(spec.zero_point), int(spec.bits))
    return out


def _iodesc(t: TensorRef, quant: IOQuant | None) -> dict[str, Any]:
    d: dict[str, Any] = {"shape": list(t.shape), "dtype": t.dtype, "bytes": t.storage.nbytes}
    if quant is not None:  # real value = (code - zero_point) * scale
        d["quant"] = dict(zip(("scale", "zero_point", "bits"), quant, strict=True))
    return d


def _manifest(compiled: CompiledModel, prof: Profile, g: ModelGraph, objs: dict[str, str],
              kernels: set[str], fuse: bool) -> dict[str, Any]:
    """``manifest.json`` without the sizes and timings (added by the caller)."""
    quant = _io_quant(compiled, g)
    return {
        "format": MANIFEST_FORMAT,
        "profile": prof.name,
        "compiled_profile": compiled.profile.name,
        "targets": {kind: prof.target_dict(kind) for kind in objs},
        "kernel_objects": objs,
        "entry": entry_signature(g),
        "integer_io": quant["input"] is not None and quant["output"] is not None,
        "input": _iodesc(g.input, quant["input"]),
        "output": _iodesc(g.output, quant["output"]),
        "fused": fuse,
        "quantized_sites": [{"layer": s.name, "func": s.func_name, "variant": s.kernel.variant,
                             "w_bits": s.kernel.w_bits, "a_bits": s.kernel.a_bits,
                             "scheduled": s.scheduled} for s in compiled.sites],
        "fp32_sites": [{"layer": s.name, "func": s.func_name, "scheduled": s.scheduled}
                       for s in compiled.fp32_sites],
        "ops": [{"index": i, "func": op.func, "symbol": f"__tvm_ffi_{op.symbol}",
                 "kernel": op.func in kernels, "inputs": [_tdesc(t) for t in op.args[:op.num_inputs]],
                 "outputs": [_tdesc(t) for t in op.args[op.num_inputs:]],
                 "workspace": op.workspace}
                for i, op in enumerate(g.ops)],
        "buffers": [{"id": s.sid, "kind": s.kind, "bytes": s.nbytes,
                     **({"offset": s.offset} if s.kind in ("arena", "const", "workspace") else {}),
                     **({"live": [s.first, s.last]} if s.kind in ("arena", "workspace") else {})}
                    for s in g.storages],
    }


def export_standalone(compiled: CompiledModel, directory: str, profile: str | Profile | None = None,
                      *, linux: bool = True, fuse: bool = True, ram_kib: float | None = None,
                      flash_kib: float | None = None, stack_kib: float | None = None
                      ) -> StandaloneArtifact:
    """Write the TVM-runtime-free deployable form of ``compiled`` to ``directory``.

    Writes ``model.c``/``model.h`` (``int mpq_model_run(const float *in, float *out)``, or
    ``(const uint8_t *in, uint8_t *out)``: the codes of a model compiled with ``integer_io``),
    ``kernels_<profile>.o`` (all PrimFuncs, bare metal) and ``kernels_<profile>_linux.o``
    (rv64 only), ``weights.bin`` + ``weights.S``, the harness sources it links with
    (``harness/``), the tvm-ffi C headers it includes (``include/``), a ``Makefile``, a zero
    ``input.bin`` (of the input's dtype) and ``manifest.json`` (ops in order, buffers with
    offsets and live ranges, the memory figures, profile). Needs TVM; with the bare-metal
    toolchain present it also links the Spike ELF for the code / flash / RAM figures
    (:attr:`StandaloneArtifact.memory`).

    Args:
        compiled: the compiled model.
        directory: output directory (created; existing files are overwritten).
        profile: RISC-V profile to build the kernels for; default ``compiled.profile``. The
            kernels' bit-packing word size was fixed by ``compiled.profile``; any profile runs
            them correctly.
        linux: also build the riscv64 Linux kernel object (ignored for rv32).
        fuse: fuse the float elementwise ops around the kernels (see :func:`lower_for_standalone`).
        ram_kib, flash_kib: the board's RAM and flash; with either, the bare-metal ELF is
            linked with ``harness/link_board.ld`` (flash at 0x80000000, RAM after it, both in
            the simulators' DRAM; an unspecified one is 256 MiB) and must fit. Needs the
            bare-metal toolchain.
        stack_kib: the stack the board layout reserves in RAM (default 16 KiB).

    Returns:
        The :class:`StandaloneArtifact`.

    Raises:
        ValueError: host profile (no RISC-V target); impossible board sizes.
        DoesNotFitError: (a ``ValueError``) a section does not fit the board's RAM or flash;
            the message names it and the overflow in bytes.
        NotImplementedError: the lowered model uses something this exporter cannot express
            (dynamic shapes, several inputs/outputs, an op without TIR legalization, a kernel
            workspace whose size is not static).
        ToolchainError: ``ram_kib``/``flash_kib`` given without the bare-metal toolchain.
    """
    prof = get_profile(profile if profile is not None else compiled.profile)
    if prof.is_host:
        raise ValueError("export_standalone needs a RISC-V profile (e.g. profile='rv64gc'); "
                         "the model was compiled for 'host'")
    board = board_memory(ram_kib, flash_kib, stack_kib)
    linux = linux and prof.xlen == 64
    t0 = time.monotonic()
    kernels = {s.func_name for s in [*compiled.sites, *compiled.fp32_sites]}
    lowered = lower_for_standalone(compiled.mod, prof.target("baremetal"), kernels, fuse)
    g = build_graph(lowered["main"])
    d = Path(directory)
    _copy_sources(d)
    objs, ws = _build_kernels(lowered, g, prof, d, linux)
    # the runtime stand-ins' float shim only where a kernel calls it (none: a float-free link)
    shims = any("roundevenf" in undefined_symbols(d / o) for o in objs.values())
    plan = {"workspace_bytes": add_workspaces(g, ws), "arena_bytes": plan_memory(g.storages),
            "arena_lower_bound": arena_lower_bound(g.storages)}
    plan["workspace_offset"] = workspace_region(g.storages)[0]
    blob = layout_weights(g.storages)
    plan["weight_bytes"] = len(blob)
    _precheck(board, plan["arena_bytes"], len(blob))
    build_s = time.monotonic() - t0
    _write_sources(d, g, prof, linux, board, plan, blob, shims, _io_quant(compiled, g))

    manifest = _manifest(compiled, prof, g, objs, kernels, fuse)
    naive = sum(s.nbytes for s in g.storages if s.kind in ("arena", "workspace"))
    manifest.update({
        "arena_bytes": plan["arena_bytes"],
        "naive_activation_bytes": naive,
        "weight_bytes": len(blob),
        "num_ops": len(g.ops),
        "num_kernel_calls": sum(op.func in kernels for op in g.ops),
        "export_seconds": round(build_s, 2),
        "board": dataclasses.asdict(board) if board else None,
        "float_shims": shims,
    })
    manifest["memory"] = memory_figures(plan, link_figures(d, prof, linux, board, shims), board)
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return StandaloneArtifact(str(d.resolve()), prof, g.input.shape, g.output.shape,
                              plan["arena_bytes"], naive, len(blob), len(g.ops), linux, manifest)


def _write_sources(d: Path, g: ModelGraph, prof: Profile, linux: bool,
                   board: BoardMemory | None, plan: dict[str, int], blob: bytes,
                   float_shims: bool, quant: dict[str, IOQuant | None]) -> None:
    """The generated C, the weight blob, a zero input and the Makefile."""
    (d / "model.h").write_text(model_h(g, plan["arena_bytes"], quant["input"], quant["output"]))
    (d / "model.c").write_text(model_c(g, plan["arena_bytes"]))
    (d / "weights.bin").write_bytes(blob)
    (d / "weights.S").write_text(WEIGHTS_S)
    (d / "input.bin").write_bytes(np.zeros(g.input.shape, g.input.dtype).tobytes())
    (d / "Makefile").write_text(makefile(prof, linux, tool_vars(prof, board, float_shims)))


def load_standalone(directory: str) -> StandaloneArtifact:
    """Re-open an artifact written by :func:`export_standalone` (from its manifest)."""
    m = json.loads(Path(directory, "manifest.json").read_text())
    return StandaloneArtifact(str(Path(directory).resolve()), get_profile(m["profile"]),
                              tuple(m["input"]["shape"]), tuple(m["output"]["shape"]),
                              m["arena_bytes"], m["naive_activation_bytes"], m["weight_bytes"],
                              m["num_ops"], "linux" in m["kernel_objects"], m)
