"""Writing an artifact (:func:`export_standalone`) and re-opening it (:func:`load_standalone`)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvm_mpq.deploy.artifact import StandaloneArtifact
from tvm_mpq.deploy.buildrules import makefile, tool_vars
from tvm_mpq.deploy.codegen import WEIGHTS_S, layout_weights, model_c, model_h
from tvm_mpq.deploy.graph import ModelGraph, TensorRef, build_graph, plan_memory
from tvm_mpq.deploy.lower import lower_for_standalone
from tvm_mpq.measure import toolchain
from tvm_mpq.measure.baremetal import HARNESS_DIR
from tvm_mpq.targets import Profile, get_profile

if TYPE_CHECKING:
    import tvm

    from tvm_mpq.compiler.compiled import CompiledModel

#: harness files copied into every artifact (so its Makefile builds without this package)
HARNESS_FILES = ("crt0.S", "htif.c", "tvm_rt_stubs.c", "harness.h", "counters.h", "link.ld",
                 "standalone_main.c", "standalone_input.S", "standalone_linux.c")
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
                   linux: bool) -> dict[str, str]:
    """One object with every called PrimFunc, each under its op's unique symbol, per target
    (``"baremetal"``, and ``"linux"`` when asked); returns the object file names."""
    import tvm

    gvs = {gv.name_hint: gv for gv in lowered.functions}
    kmod = tvm.IRModule({op.symbol: lowered[gvs[op.func]].with_attr("global_symbol", op.symbol)
                         for op in g.ops})
    objs = {"baremetal": f"kernels_{prof.name}.o"}
    if linux:
        objs["linux"] = f"kernels_{prof.name}_linux.o"
    for kind, name in objs.items():
        tvm.compile(kmod, target=prof.target(kind)).mod.write_to_file(str(d / name))
    return objs


def _tdesc(t: TensorRef) -> dict[str, Any]:
    return {"buffer": t.storage.sid, "shape": list(t.shape), "dtype": t.dtype}


def _manifest(compiled: CompiledModel, prof: Profile, g: ModelGraph, objs: dict[str, str],
              kernels: set[str], fuse: bool) -> dict[str, Any]:
    """``manifest.json`` without the sizes and timings (added by the caller)."""
    return {
        "format": MANIFEST_FORMAT,
        "profile": prof.name,
        "compiled_profile": compiled.profile.name,
        "targets": {kind: prof.target_dict(kind) for kind in objs},
        "kernel_objects": objs,
        "entry": "int mpq_model_run(const float *input, float *output)",
        "input": {"shape": list(g.input.shape), "dtype": "float32", "bytes": g.input.storage.nbytes},
        "output": {"shape": list(g.output.shape), "dtype": "float32",
                   "bytes": g.output.storage.nbytes},
        "fused": fuse,
        "quantized_sites": [{"layer": s.name, "func": s.func_name, "variant": s.kernel.variant,
                             "w_bits": s.kernel.w_bits, "a_bits": s.kernel.a_bits,
                             "scheduled": s.scheduled} for s in compiled.sites],
        "fp32_sites": [{"layer": s.name, "func": s.func_name, "scheduled": s.scheduled}
                       for s in compiled.fp32_sites],
        "ops": [{"index": i, "func": op.func, "symbol": f"__tvm_ffi_{op.symbol}",
                 "kernel": op.func in kernels, "inputs": [_tdesc(t) for t in op.args[:op.num_inputs]],
                 "outputs": [_tdesc(t) for t in op.args[op.num_inputs:]]}
                for i, op in enumerate(g.ops)],
        "buffers": [{"id": s.sid, "kind": s.kind, "bytes": s.nbytes,
                     **({"offset": s.offset} if s.kind in ("arena", "const") else {}),
                     **({"live": [s.first, s.last]} if s.kind == "arena" else {})}
                    for s in g.storages],
    }


def export_standalone(compiled: CompiledModel, directory: str, profile: str | Profile | None = None,
                      *, linux: bool = True, fuse: bool = True) -> StandaloneArtifact:
    """Write the TVM-runtime-free deployable form of ``compiled`` to ``directory``.

    Writes ``model.c``/``model.h`` (``int mpq_model_run(const float *in, float *out)``),
    ``kernels_<profile>.o`` (all PrimFuncs, bare metal) and ``kernels_<profile>_linux.o``
    (rv64 only), ``weights.bin`` + ``weights.S``, the harness sources it links with
    (``harness/``), the tvm-ffi C headers it includes (``include/``), a ``Makefile``, a zero
    ``input.bin`` and ``manifest.json`` (ops in order, buffers with offsets and live ranges,
    arena and weight bytes, profile). Needs TVM only (no cross toolchain).

    Args:
        compiled: the compiled model.
        directory: output directory (created; existing files are overwritten).
        profile: RISC-V profile to build the kernels for; default ``compiled.profile``. The
            kernels' bit-packing word size was fixed by ``compiled.profile``; any profile runs
            them correctly.
        linux: also build the riscv64 Linux kernel object (ignored for rv32).
        fuse: fuse the float elementwise ops around the kernels (see :func:`lower_for_standalone`).

    Returns:
        The :class:`StandaloneArtifact`.

    Raises:
        ValueError: host profile (no RISC-V target).
        NotImplementedError: the lowered model uses something this exporter cannot express
            (dynamic shapes, several inputs/outputs, an op without TIR legalization).
    """
    prof = get_profile(profile if profile is not None else compiled.profile)
    if prof.is_host:
        raise ValueError("export_standalone needs a RISC-V profile (e.g. profile='rv64gc'); "
                         "the model was compiled for 'host'")
    linux = linux and prof.xlen == 64
    t0 = time.monotonic()
    kernels = {s.func_name for s in [*compiled.sites, *compiled.fp32_sites]}
    lowered = lower_for_standalone(compiled.mod, prof.target("baremetal"), kernels, fuse)
    g = build_graph(lowered["main"])
    arena_bytes = plan_memory(g.storages)
    blob = layout_weights(g.storages)

    d = Path(directory)
    _copy_sources(d)
    objs = _build_kernels(lowered, g, prof, d, linux)
    build_s = time.monotonic() - t0
    (d / "model.h").write_text(model_h(g, arena_bytes))
    (d / "model.c").write_text(model_c(g, arena_bytes))
    (d / "weights.bin").write_bytes(blob)
    (d / "weights.S").write_text(WEIGHTS_S)
    (d / "input.bin").write_bytes(np.zeros(g.input.shape, np.float32).tobytes())
    (d / "Makefile").write_text(makefile(prof, linux, tool_vars(prof)))

    manifest = _manifest(compiled, prof, g, objs, kernels, fuse)
    naive = sum(s.nbytes for s in g.storages if s.kind == "arena")
    manifest.update({
        "arena_bytes": arena_bytes,
        "naive_activation_bytes": naive,
        "weight_bytes": len(blob),
        "num_ops": len(g.ops),
        "num_kernel_calls": sum(op.func in kernels for op in g.ops),
        "export_seconds": round(build_s, 2),
    })
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return StandaloneArtifact(str(d.resolve()), prof, g.input.shape, g.output.shape, arena_bytes,
                              naive, len(blob), len(g.ops), linux, manifest)


def load_standalone(directory: str) -> StandaloneArtifact:
    """Re-open an artifact written by :func:`export_standalone` (from its manifest)."""
    m = json.loads(Path(directory, "manifest.json").read_text())
    return StandaloneArtifact(str(Path(directory).resolve()), get_profile(m["profile"]),
                              tuple(m["input"]["shape"]), tuple(m["output"]["shape"]),
                              m["arena_bytes"], m["naive_activation_bytes"], m["weight_bytes"],
                              m["num_ops"], "linux" in m["kernel_objects"], m)
