"""Standalone deployable form of a compiled model: plain C + one kernel object, no TVM runtime.

The microTVM replacement. :func:`export_standalone` lowers a :class:`~tvm_mpq.compiler.CompiledModel`
until its Relax ``main`` is a flat, static-shape sequence of ``call_tir`` on TIR PrimFuncs, builds
all those PrimFuncs into ONE object per target (bare-metal ``riscv*-unknown-elf`` and, for rv64,
``riscv64-unknown-linux-gnu``), and writes C that calls them in order::

    int mpq_model_run(const float *input, float *output);   /* model.h */

Intermediate tensors live in one static arena whose offsets come from a liveness-based plan
(``R.reshape`` results alias their source: no copy); constants (pre-packed weights, scales,
biases) are one binary blob linked with ``.incbin``. The kernels need only the workspace /
error stubs of :mod:`tvm_mpq.rpc.harness`.

:func:`run_standalone` builds and runs the artifact on Spike or QEMU system mode (bare metal:
the whole model's retired-instruction count, minstret around ``mpq_model_run``) or as a static
Linux executable under ``qemu-riscv64``.

The float32 parts (quantize, dequantize, relu, add, mean, fp32 layers) are TVM's default
lowering compiled for RISC-V, so outputs equal the host :class:`CompiledModel` call up to
float differences of the ISA's code generation; integer kernel results are exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .rpc import simulators
from .rpc.simulators import ToolchainError
from .targets import Profile, get_profile

if TYPE_CHECKING:
    import tvm

    from .compiler import CompiledModel

HARNESS_DIR = Path(__file__).resolve().parent / "rpc" / "harness"
#: harness files copied into every artifact (so its Makefile builds without this package)
_HARNESS_FILES = ("crt0.S", "htif.c", "tvm_rt_stubs.c", "harness.h", "counters.h", "link.ld",
                  "standalone_main.c", "standalone_input.S", "standalone_linux.c")
BACKENDS = ("spike", "qemu", "qemu-user")
ALIGN = 64  # every tensor: TVM's kernels assume (and the harness uses) 64-byte alignment
_DL_CODES = {"int": 0, "uint": 1, "float": 2, "bool": 6}


# --------------------------------------------------------------------------------------------
# public types


@dataclass
class StandaloneArtifact:
    """A written standalone model (see ``manifest.json`` in ``directory`` for the details).

    Attributes:
        directory: where everything was written.
        profile: the RISC-V profile the kernel objects were built for.
        input_shape, output_shape: float32 shapes of ``mpq_model_run``'s buffers.
        arena_bytes: size of the static activation arena after the liveness plan.
        naive_bytes: sum of all intermediate tensors' sizes (what no reuse would need).
        weight_bytes: size of the constant blob (``weights.bin``).
        num_ops: packed calls per inference.
        linux: whether a riscv64 Linux kernel object was built (rv64 profiles only).
        manifest: the parsed ``manifest.json``.
    """

    directory: str
    profile: Profile
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    arena_bytes: int
    naive_bytes: int
    weight_bytes: int
    num_ops: int
    linux: bool
    manifest: dict[str, Any] = field(repr=False)


@dataclass
class StandaloneResult:
    """One standalone inference.

    Attributes:
        output: the model output (float32, ``output_shape``), or None unless ``status == "ok"``.
        instructions: retired instructions of ``mpq_model_run`` (bare metal only; None on
            ``qemu-user`` and on failure).
        status: ``"ok" | "build_error" | "run_error" | "timeout"``.
        message: empty when ok, otherwise what went wrong.
        cycles: mcycle delta (equals ``instructions`` on Spike and QEMU icount).
        backend: the backend it ran on.
        wall_s: simulator wall time.
        op_instructions: with ``profile_ops=True``, the retired instructions of every op in
            call order, as ``(op index, PrimFunc name, instructions)`` (the names are those
            of the manifest's ``ops``); their sum is ``instructions`` minus the driver's few
            counter reads per call. None otherwise.
    """

    output: np.ndarray | None
    instructions: int | None
    status: str
    message: str
    cycles: int | None = None
    backend: str = ""
    wall_s: float = 0.0
    op_instructions: list[tuple[int, str, int]] | None = None

    def op_table(self) -> list[tuple[str, int, int]]:
        """Per-op counts grouped by PrimFunc name: ``(name, calls, instructions)``, dearest
        first (needs ``profile_ops=True``)."""
        if self.op_instructions is None:
            raise ValueError("no per-op counts: run with profile_ops=True on spike or qemu")
        agg: dict[str, list[int]] = {}
        for _, name, n in self.op_instructions:
            a = agg.setdefault(name, [0, 0])
            a[0] += 1
            a[1] += n
        return sorted(((k, c, n) for k, (c, n) in agg.items()), key=lambda r: -r[2])


# --------------------------------------------------------------------------------------------
# lowering


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
    with target:
        return tvm.transform.Sequential(passes)(mod)


@dataclass
class _Storage:
    sid: int
    kind: str  # "input" | "output" | "arena" | "const"
    nbytes: int
    first: int = -1  # op index that writes it (arena)
    last: int = -1  # last op index that reads it
    offset: int = 0  # in the arena (arena) or the weight blob (const)
    data: bytes | None = None


@dataclass
class _Tensor:
    storage: _Storage
    shape: tuple[int, ...]
    dtype: str


@dataclass
class _Op:
    func: str  # GlobalVar name in the lowered module
    symbol: str  # global symbol in the kernel object
    args: list[_Tensor]
    num_inputs: int


@dataclass
class _Graph:
    ops: list[_Op]
    storages: list[_Storage]
    input: _Tensor
    output: _Tensor
    copy_output_from: _Storage | None  # output is an alias of the input or a constant


def _static_shape(sinfo: Any, what: str) -> tuple[tuple[int, ...], str]:
    import tvm
    from tvm import relax

    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise NotImplementedError(f"{what}: only tensors are supported, got {sinfo}")
    vals = getattr(sinfo.shape, "values", None)
    if vals is None or not all(isinstance(v, tvm.tirx.IntImm) for v in vals):
        raise NotImplementedError(f"{what}: dynamic shape {sinfo.shape} is not supported")
    return tuple(int(v) for v in vals), str(sinfo.dtype)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    import tvm

    dt = tvm.runtime.DataType(dtype)
    if dt.lanes != 1 or dt.bits % 8 and dt.bits != 1:
        raise NotImplementedError(f"dtype {dtype} is not supported")
    return int(np.prod(shape, dtype=np.int64)) * max(dt.bits // 8, 1)


def _c_ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _build_graph(main: Any) -> _Graph:
    """Walk the lowered ``main``: ops in order, storages with liveness, aliases resolved."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    reshape = tvm.ir.Op.get("relax.reshape")
    if len(main.params) != 1:
        raise NotImplementedError(f"main must take one input tensor, it takes {len(main.params)}")
    storages: list[_Storage] = []

    def new_storage(kind: str, nbytes: int, data: bytes | None = None) -> _Storage:
        s = _Storage(len(storages), kind, nbytes, data=data)
        storages.append(s)
        return s

    shape, dtype = _static_shape(main.params[0].ty, "input")
    if dtype != "float32":
        raise NotImplementedError(f"the input must be float32, got {dtype}")
    inp = _Tensor(new_storage("input", _nbytes(shape, dtype)), shape, dtype)
    env: dict[Any, Any] = {main.params[0]: inp}  # relax.Var -> _Tensor | list

    def const(c: Any) -> _Tensor:
        arr = c.value.numpy()
        s = new_storage("const", arr.nbytes, np.ascontiguousarray(arr).tobytes())
        return _Tensor(s, tuple(arr.shape), str(arr.dtype))

    def value(e: Any) -> Any:
        if isinstance(e, relax.Var):
            if e not in env:
                raise NotImplementedError(f"unbound variable {e.name_hint}")
            return env[e]
        if isinstance(e, tvm.ir.expr.GenericConst):
            return const(e)
        if isinstance(e, relax.Tuple):
            return [value(f) for f in e.fields]
        if isinstance(e, relax.TupleGetItem):
            return value(e.tuple_value)[e.index]
        raise NotImplementedError(f"unsupported expression {type(e).__name__}: {e}")

    ops: list[_Op] = []
    seq = main.body
    for block in seq.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise NotImplementedError(f"unsupported binding {type(b).__name__}")
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(call_tir):
                if len(v.args) > 2:
                    raise NotImplementedError("call_tir with symbolic tir_vars is not supported")
                ins = [value(a) for a in v.args[1].fields]
                if not all(isinstance(t, _Tensor) for t in ins):
                    raise NotImplementedError("call_tir with a nested tuple argument")
                out_si = v.ty_args[0]
                out_list = (list(out_si.fields) if isinstance(out_si, relax.TupleType)
                            else [out_si])
                outs = []
                for o in out_list:
                    oshape, odt = _static_shape(o, f"output of {v.args[0].name_hint}")
                    outs.append(_Tensor(new_storage("arena", _nbytes(oshape, odt)), oshape, odt))
                idx = len(ops)
                for t in ins:
                    t.storage.last = max(t.storage.last, idx)
                for t in outs:
                    t.storage.first = idx
                name = v.args[0].name_hint
                ops.append(_Op(name, "", ins + outs, len(ins)))
                env[b.var] = outs if isinstance(out_si, relax.TupleType) else outs[0]
            elif isinstance(v, relax.Call) and v.op.same_as(reshape):
                src = value(v.args[0])
                nshape, ndt = _static_shape(b.var.ty, "reshape")
                env[b.var] = _Tensor(src.storage, nshape, ndt)  # a view: same bytes
            elif isinstance(v, relax.Call):
                raise NotImplementedError(
                    f"operator {v.op} is left in main after lowering (no TIR legalization)")
            else:
                env[b.var] = value(v)
    out = value(seq.body)
    if isinstance(out, list):
        if len(out) != 1:
            raise NotImplementedError(f"models with {len(out)} outputs are not supported")
        out = out[0]
    if out.dtype != "float32":
        raise NotImplementedError(f"the output must be float32, got {out.dtype}")
    copy_from = None
    if out.storage.kind == "arena":
        out.storage.kind = "output"
    else:  # the output is the input itself or a constant: copy at the end
        copy_from = out.storage
        out = _Tensor(new_storage("output", out.storage.nbytes), out.shape, out.dtype)
    for i, op in enumerate(ops):
        op.symbol = f"mpq_op{i}_{_c_ident(op.func)}"[:96]
    return _Graph(ops, storages, inp, out, copy_from)


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def plan_memory(storages: list[_Storage]) -> int:
    """Assign arena offsets: greedy by size (largest first), lowest offset that does not
    overlap a storage with an intersecting live range ``[first, last]``. Returns arena bytes.

    A storage written by op i and read by op i is live at i on both ends, so an op's output
    never shares bytes with its own inputs (kernels are not in-place safe).
    """
    arena = [s for s in storages if s.kind == "arena"]
    for s in arena:
        if s.last < s.first:  # written, never read (dead tuple element): still needs space
            s.last = s.first
    placed: list[_Storage] = []
    top = 0
    for s in sorted(arena, key=lambda s: (-s.nbytes, s.first, s.sid)):
        busy = sorted((p.offset, p.offset + _align(p.nbytes)) for p in placed
                      if p.first <= s.last and s.first <= p.last)
        off = 0
        for lo, hi in busy:
            if off + s.nbytes <= lo:
                break
            off = max(off, _align(hi))
        s.offset = off
        placed.append(s)
        top = max(top, _align(off + s.nbytes))
    return top


# --------------------------------------------------------------------------------------------
# C generation


def _dl(dtype: str) -> tuple[int, int]:
    import tvm

    dt = tvm.runtime.DataType(dtype)
    name = re.match(r"[a-z]+", dtype).group(0)
    if name not in _DL_CODES:
        raise NotImplementedError(f"dtype {dtype} has no DLPack code here")
    return _DL_CODES[name], dt.bits


def _model_c(g: _Graph, arena_bytes: int) -> tuple[str, str]:
    in_n = int(np.prod(g.input.shape))
    out_n = int(np.prod(g.output.shape))
    h = ["/* generated by tvm_mpq.standalone: a TVM-runtime-free model */", "#pragma once",
         "#include <stdint.h>", "",
         f"#define MPQ_INPUT_SIZE {in_n}u  /* float32 elements, shape {list(g.input.shape)} */",
         f"#define MPQ_INPUT_BYTES {4 * in_n}u",
         f"#define MPQ_OUTPUT_SIZE {out_n}u  /* shape {list(g.output.shape)} */",
         f"#define MPQ_OUTPUT_BYTES {4 * out_n}u",
         f"#define MPQ_ARENA_BYTES {arena_bytes}u",
         f"#define MPQ_NUM_OPS {len(g.ops)}u", "",
         "#ifdef __cplusplus", 'extern "C" {', "#endif",
         "/* One inference. input/output: float32, 64-byte aligned. Not reentrant (one static",
         "   arena). Returns 0, or the first nonzero status of a kernel. */",
         "int mpq_model_run(const float *input, float *output);",
         "#ifdef MPQ_PROFILE_OPS",
         "/* built with -DMPQ_PROFILE_OPS (bare metal): retired instructions of each op of the",
         "   last mpq_model_run, in call order */",
         "extern uint64_t mpq_op_instret[MPQ_NUM_OPS];", "#endif",
         "#ifdef __cplusplus", "}", "#endif", ""]
    c = ["/* generated by tvm_mpq.standalone: calls the kernels of kernels_<profile>.o in order */",
         "#include <stddef.h>", "#include <stdint.h>", "#include <string.h>",
         "#include <tvm/ffi/c_api.h>", '#include "model.h"', "",
         "#ifdef MPQ_PROFILE_OPS  /* minstret around every call: per-op instruction counts */",
         '#include "counters.h"',
         "uint64_t mpq_op_instret[MPQ_NUM_OPS];",
         "#define MPQ_CALL(i, call) do { uint64_t t0_ = rd_minstret(); rc = (call); "
         "mpq_op_instret[i] = rd_minstret() - t0_; if (rc != 0) return rc; } while (0)",
         "#else",
         "#define MPQ_CALL(i, call) do { if ((rc = (call)) != 0) return rc; } while (0)",
         "#endif",
         "extern const uint8_t mpq_weights[];  /* weights.S: .incbin weights.bin */",
         f"static uint8_t mpq_arena[{max(arena_bytes, 1)}] __attribute__((aligned({ALIGN})));",
         ""]
    for sym in dict.fromkeys(op.symbol for op in g.ops):
        c.append(f"extern int32_t __tvm_ffi_{sym}(void *, const TVMFFIAny *, int32_t, "
                 "TVMFFIAny *);")
    c.append("")
    tensors: dict[tuple, str] = {}  # (sid, shape, dtype) -> C name of its DLTensor
    shapes: dict[tuple, str] = {}

    def tensor(t: _Tensor) -> str:
        key = (t.storage.sid, t.shape, t.dtype)
        if key in tensors:
            return tensors[key]
        if t.shape not in shapes:
            shapes[t.shape] = f"mpq_shape{len(shapes)}"
            dims = ", ".join(str(d) for d in t.shape) or "1"
            c.append(f"static int64_t {shapes[t.shape]}[] = {{{dims}}};")
        name = f"mpq_t{len(tensors)}"
        tensors[key] = name
        s = t.storage
        data = {"arena": f"(void *)(mpq_arena + {s.offset})",
                "const": f"(void *)(mpq_weights + {s.offset})"}.get(s.kind, "NULL")
        code, bits = _dl(t.dtype)
        c.append(f"static DLTensor {name} = {{.data = {data}, .device = {{kDLCPU, 0}}, "
                 f".ndim = {len(t.shape)}, .dtype = {{{code}, {bits}, 1}}, "
                 f".shape = {shapes[t.shape]}, .strides = NULL, .byte_offset = 0}};")
        return name

    for i, op in enumerate(g.ops):
        names = [tensor(t) for t in op.args]
        c.append(f"static const TVMFFIAny mpq_args{i}[] = {{" + ", ".join(
            f"{{.type_index = kTVMFFIDLTensorPtr, .v_ptr = &{n}}}" for n in names) + "};")
    out_name = tensor(g.output)
    c += ["", "int mpq_model_run(const float *input, float *output) {",
          "  TVMFFIAny ret;", "  int32_t rc;", "  memset(&ret, 0, sizeof(ret));"]
    for key, name in tensors.items():
        kind = g.storages[key[0]].kind
        if kind == "input":
            c.append(f"  {name}.data = (void *)input;")
        elif kind == "output":
            c.append(f"  {name}.data = (void *)output;")
    for i, op in enumerate(g.ops):
        c.append(f"  /* {i}: {op.func} */")
        c.append(f"  MPQ_CALL({i}, __tvm_ffi_{op.symbol}(NULL, mpq_args{i}, {len(op.args)}, &ret));")
    if g.copy_output_from is not None:
        src = g.copy_output_from
        ptr = "input" if src.kind == "input" else f"mpq_weights + {src.offset}"
        c.append(f"  memcpy(output, {ptr}, {src.nbytes});")
    c += [f"  (void){out_name};", "  return 0;", "}", ""]
    return "\n".join(h), "\n".join(c)


def _weights(storages: list[_Storage]) -> bytes:
    """Lay out the constants (identical contents share bytes) and return the blob."""
    blob = bytearray()
    seen: dict[bytes, int] = {}
    for s in storages:
        if s.kind != "const":
            continue
        assert s.data is not None
        key = hashlib.sha256(s.data).digest() + len(s.data).to_bytes(8, "little")
        if key not in seen:
            blob += b"\0" * (_align(len(blob)) - len(blob))
            seen[key] = len(blob)
            blob += s.data
        s.offset = seen[key]
    return bytes(blob)


_WEIGHTS_S = """/* generated by tvm_mpq.standalone: the model's constants (weights.bin) */
  .section .rodata.mpq_weights, "a"
  .balign 64
  .globl mpq_weights
mpq_weights:
  .incbin "weights.bin"
  .byte 0
"""


# --------------------------------------------------------------------------------------------
# build rules (one source for the Makefile and for run_standalone)


def _ffi_headers() -> Path:
    from .rpc.baremetal import _ffi_include  # one lookup of the tvm_ffi C headers

    return Path(_ffi_include())


def _tool_vars(prof: Profile) -> dict[str, str]:
    """Makefile variables (defaults) and their values for a direct build."""
    try:
        spike = simulators.find_spike()
    except ToolchainError:
        spike = "spike"
    lmarch = prof.march.split("_")[0]  # picolibc multilib by ISA-2.2 base name
    return {
        "CC_BM": "riscv64-unknown-elf-gcc",
        "CC_LINUX": "riscv64-linux-gnu-gcc",
        "SPIKE": spike,
        "QEMU_SYS": f"qemu-system-riscv{prof.xlen}",
        "QEMU_USER": "qemu-riscv64",
        "INPUT": "input.bin",
        "WATCHDOG_TICKS": "100000000",
        "MAX_INSNS": "11000000000",
        "BM_CFLAGS": (f"-march={prof.march} -mabi={prof.mabi} -mcmodel=medany -O2 "
                      "-ffunction-sections -fdata-sections -fno-builtin-printf "
                      "--specs=picolibc.specs -Iharness -Iinclude -I."),
        "BM_LDFLAGS": (f"-march={lmarch} -misa-spec=2.2 -mabi={prof.mabi} -mcmodel=medany "
                       "--specs=picolibc.specs -nostartfiles -T harness/link.ld "
                       "-Wl,--gc-sections -Wl,--no-warn-rwx-segments"),
        "LINUX_CFLAGS": f"-march={prof.march} -mabi={prof.mabi} -O2 -Iinclude -I.",
    }


@dataclass
class _Rule:
    target: str
    deps: list[str]
    cmd: str  # shell command with $(VAR) references


def _rules(prof: Profile, linux: bool) -> dict[str, list[_Rule]]:
    """Build rules per variant: "spike" / "virt" (bare-metal ELFs), "linux" (static exe)."""
    ko = f"kernels_{prof.name}.o"
    out: dict[str, list[_Rule]] = {}
    for v in ("spike", "virt", "spike_ops", "virt_ops"):
        d = f"build/{v}"
        plat = " -DPLATFORM_VIRT" if v.startswith("virt") else ""
        ops = " -DMPQ_PROFILE_OPS" if v.endswith("_ops") else ""
        rs = [
            _Rule(f"{d}/crt0.o", ["harness/crt0.S"], "$(CC_BM) $(BM_CFLAGS) -c $< -o $@"),
            _Rule(f"{d}/htif.o", ["harness/htif.c", "harness/harness.h"],
                  f"$(CC_BM) $(BM_CFLAGS){plat} -c $< -o $@"),
            _Rule(f"{d}/tvm_rt_stubs.o", ["harness/tvm_rt_stubs.c", "harness/harness.h"],
                  "$(CC_BM) $(BM_CFLAGS) -c $< -o $@"),
            _Rule(f"{d}/standalone_main.o", ["harness/standalone_main.c", "model.h"],
                  f"$(CC_BM) $(BM_CFLAGS){ops} -c $< -o $@"),
            _Rule(f"{d}/model.o", ["model.c", "model.h"],
                  f"$(CC_BM) $(BM_CFLAGS){ops} -c $< -o $@"),
            _Rule(f"{d}/weights.o", ["weights.S", "weights.bin"],
                  "$(CC_BM) $(BM_CFLAGS) -c $< -o $@"),
            _Rule(f"{d}/input.o", ["harness/standalone_input.S", "$(INPUT)"],
                  "$(CC_BM) $(BM_CFLAGS) '-DMPQ_INPUT_FILE=\"$(INPUT)\"' "
                  "-DMPQ_WATCHDOG_TICKS=$(WATCHDOG_TICKS) -c $< -o $@"),
        ]
        objs = [r.target for r in rs]
        rs.append(_Rule(f"{d}/model.elf", [*objs, ko],
                        "$(CC_BM) $(BM_LDFLAGS) -o $@ $^ -lm"))
        out[v] = rs
    if linux:
        d = "build/linux"
        kl = f"kernels_{prof.name}_linux.o"
        out["linux"] = [
            _Rule(f"{d}/model", ["model.c", "model.h", "weights.S", "weights.bin",
                                 "harness/standalone_linux.c", kl],
                  "mkdir -p $(@D) && $(CC_LINUX) $(LINUX_CFLAGS) -static -o $@ model.c weights.S "
                  f"harness/standalone_linux.c {kl} -lm"),
        ]
    return out


def _makefile(prof: Profile, linux: bool, tool_vars: dict[str, str]) -> str:
    rules = _rules(prof, linux)
    lines = ["# generated by tvm_mpq.standalone", "#   make run-spike INPUT=x.bin   bare metal on Spike",
             "#   make run-qemu INPUT=x.bin    bare metal on qemu-system (icount: same counts)",
             "#   make run-spike-ops / run-qemu-ops   the same, plus per-op counts (@@P lines)",
             "#   make run-linux INPUT=x.bin   static riscv64 Linux executable under qemu-riscv64",
             "# INPUT: raw little-endian float32; the bare-metal ELF links it in (rebuild per input).",
             ""]
    lines += [f"{k} ?= {v}" for k, v in tool_vars.items()]
    alls = ["build/spike/model.elf", "build/virt/model.elf"] + (["build/linux/model"] if linux
                                                                 else [])
    lines += ["", ".PHONY: all run-spike run-qemu run-spike-ops run-qemu-ops run-linux clean",
              f"all: {' '.join(alls)}", ""]
    for rs in rules.values():
        for r in rs:
            lines += [f"{r.target}: {' '.join(r.deps)}", "\t@mkdir -p $(@D)", f"\t{r.cmd}", ""]
    for sfx in ("", "-ops"):  # -ops: per-op instruction counts (@@P lines)
        d = sfx.replace("-", "_")
        lines += [
            f"run-spike{sfx}: build/spike{d}/model.elf",
            f"\t$(SPIKE) --isa={prof.spike_isa} -m{simulators.GUEST_RAM_MIB} "
            "--instructions=$(MAX_INSNS) $<", "",
            f"run-qemu{sfx}: build/virt{d}/model.elf",
            "\t$(QEMU_SYS) -M virt -bios none -nographic -monitor none -serial stdio "
            f"-icount shift=0,sleep=off -m {simulators.GUEST_RAM_MIB}M -cpu {prof.qemu_cpu} "
            "-kernel $<", ""]
    if linux:
        lines += ["run-linux: build/linux/model", "\t$(QEMU_USER) $< $(INPUT)", ""]
    lines += ["clean:", "\trm -rf build", ""]
    return "\n".join(lines)


def _expand(cmd: str, rule: _Rule, values: dict[str, str]) -> str:
    """Expand a rule command as make would (variables, $@, $<, $^, $(@D))."""
    deps = [_expand_vars(d, values) for d in rule.deps]
    cmd = (cmd.replace("$(@D)", os.path.dirname(rule.target)).replace("$@", rule.target)
           .replace("$<", deps[0] if deps else "").replace("$^", " ".join(deps)))
    return _expand_vars(cmd, values)


def _expand_vars(s: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], s)


def _run_rules(rules: list[_Rule], cwd: str, values: dict[str, str]) -> None:
    """Run the rules whose target is missing or older than a dependency (like make)."""
    for r in rules:
        tgt = os.path.join(cwd, r.target)
        deps = [os.path.join(cwd, _expand_vars(d, values)) for d in r.deps]
        per_input = r.target.endswith(("/input.o", "/model.elf"))  # the input changes per run
        if not per_input and os.path.exists(tgt) and all(os.path.getmtime(d) <= os.path.getmtime(tgt)
                                       for d in deps if os.path.exists(d)):
            continue
        os.makedirs(os.path.dirname(tgt), exist_ok=True)
        cmd = _expand(r.cmd, r, values)
        proc = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise _BuildError(f"{r.target}: {(proc.stderr or proc.stdout).strip()[-2000:]}")


class _BuildError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# export


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
    import tvm

    prof = get_profile(profile if profile is not None else compiled.profile)
    if prof.is_host:
        raise ValueError("export_standalone needs a RISC-V profile (e.g. profile='rv64gc'); "
                         "the model was compiled for 'host'")
    linux = linux and prof.xlen == 64
    t0 = time.monotonic()
    kernels = {s.func_name for s in [*compiled.sites, *compiled.fp32_sites]}
    lowered = lower_for_standalone(compiled.mod, prof.target("baremetal"), kernels, fuse)
    g = _build_graph(lowered["main"])
    arena_bytes = plan_memory(g.storages)
    naive = sum(s.nbytes for s in g.storages if s.kind == "arena")
    blob = _weights(g.storages)

    d = Path(directory)
    (d / "harness").mkdir(parents=True, exist_ok=True)
    (d / "include" / "tvm" / "ffi").mkdir(parents=True, exist_ok=True)
    (d / "include" / "dlpack").mkdir(parents=True, exist_ok=True)
    for f in _HARNESS_FILES:
        shutil.copyfile(HARNESS_DIR / f, d / "harness" / f)
    inc = _ffi_headers()
    shutil.copyfile(inc / "tvm" / "ffi" / "c_api.h", d / "include" / "tvm" / "ffi" / "c_api.h")
    shutil.copyfile(inc / "dlpack" / "dlpack.h", d / "include" / "dlpack" / "dlpack.h")

    # one object with every called PrimFunc, each under its op's unique symbol
    gvs = {gv.name_hint: gv for gv in lowered.functions}
    funcs = {}
    for op in g.ops:
        funcs[op.symbol] = lowered[gvs[op.func]].with_attr("global_symbol", op.symbol)
    kmod = tvm.IRModule(funcs)
    ko = f"kernels_{prof.name}.o"
    tvm.compile(kmod, target=prof.target("baremetal")).mod.write_to_file(str(d / ko))
    if linux:
        tvm.compile(kmod, target=prof.target("linux")).mod.write_to_file(
            str(d / f"kernels_{prof.name}_linux.o"))
    build_s = time.monotonic() - t0

    model_h, model_c = _model_c(g, arena_bytes)
    (d / "model.h").write_text(model_h)
    (d / "model.c").write_text(model_c)
    (d / "weights.bin").write_bytes(blob)
    (d / "weights.S").write_text(_WEIGHTS_S)
    (d / "input.bin").write_bytes(np.zeros(g.input.shape, np.float32).tobytes())
    (d / "Makefile").write_text(_makefile(prof, linux, _tool_vars(prof)))

    def tdesc(t: _Tensor) -> dict[str, Any]:
        return {"buffer": t.storage.sid, "shape": list(t.shape), "dtype": t.dtype}

    manifest = {
        "format": "tvm_mpq.standalone/1",
        "profile": prof.name,
        "compiled_profile": compiled.profile.name,
        "targets": {"baremetal": prof.target_dict("baremetal"),
                    **({"linux": prof.target_dict("linux")} if linux else {})},
        "kernel_objects": {"baremetal": ko,
                           **({"linux": f"kernels_{prof.name}_linux.o"} if linux else {})},
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
                 "kernel": op.func in kernels, "inputs": [tdesc(t) for t in op.args[:op.num_inputs]],
                 "outputs": [tdesc(t) for t in op.args[op.num_inputs:]]}
                for i, op in enumerate(g.ops)],
        "buffers": [{"id": s.sid, "kind": s.kind, "bytes": s.nbytes,
                     **({"offset": s.offset} if s.kind in ("arena", "const") else {}),
                     **({"live": [s.first, s.last]} if s.kind == "arena" else {})}
                    for s in g.storages],
        "arena_bytes": arena_bytes,
        "naive_activation_bytes": naive,
        "weight_bytes": len(blob),
        "num_ops": len(g.ops),
        "num_kernel_calls": sum(op.func in kernels for op in g.ops),
        "export_seconds": round(build_s, 2),
    }
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


# --------------------------------------------------------------------------------------------
# build + run


def _check_tools(prof: Profile, backend: str) -> None:
    if backend == "qemu-user":
        for tool, pkg in (("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu"),
                          ("qemu-riscv64", "qemu-user")):
            if shutil.which(tool) is None:
                raise ToolchainError(f"{tool} not found on PATH: {simulators.SETUP_HINT} "
                                     f"(or: apt-get install {pkg})")
        return
    gcc = simulators.find_gcc()
    simulators.find_picolibc(gcc)
    simulators.multilib_march(gcc, prof.march, prof.mabi)
    if backend == "spike":
        simulators.find_spike()
    else:
        simulators.find_qemu(prof.xlen)


_R_LINE = re.compile(r"^@@R rc=(-?\d+)(?: instret=(\d+) cycles=(\d+))?\s*$")


def _parse_output(text: str, n: int) -> tuple[dict[str, Any], np.ndarray | None, str]:
    """Parse the driver's lines: (counters, output array or None, error text)."""
    info: dict[str, Any] = {}
    words: dict[int, int] = {}
    errs, trap = [], ""
    for line in text.splitlines():
        line = line.strip()
        m = _R_LINE.match(line)
        if m:
            info["rc"] = int(m.group(1))
            if m.group(2) is not None:
                info["instructions"], info["cycles"] = int(m.group(2)), int(m.group(3))
        elif line.startswith("@@O "):
            parts = line.split()
            i0 = int(parts[1])
            for k, h in enumerate(parts[2:]):
                words[i0 + k] = int(h, 16)
        elif line.startswith("@@P "):
            _, idx, cnt = line.split()
            info.setdefault("ops", {})[int(idx)] = int(cnt)
        elif line.startswith("@@E "):
            errs.append(line[4:])
        elif line.startswith("@@TRAP"):
            trap = line[2:]
        elif line.startswith("@@WATCHDOG"):
            info["watchdog"] = True
        elif line == "@@DONE":
            info["done"] = True
    out = None
    if len(words) == n and all(i in words for i in range(n)):
        out = np.array([words[i] for i in range(n)], dtype=np.uint32).view(np.float32)
    msg = "; ".join(errs + ([trap] if trap else []))
    return info, out, msg


def run_standalone(
    compiled_or_artifact: CompiledModel | StandaloneArtifact | str,
    x: np.ndarray | Any,
    backend: str = "spike",
    *,
    profile: str | Profile | None = None,
    directory: str | None = None,
    max_instructions: int = 10**10,
    timeout_s: float = 1800,
    profile_ops: bool = False,
) -> StandaloneResult:
    """Build the standalone model and run one inference on ``x``.

    Args:
        compiled_or_artifact: a :class:`StandaloneArtifact`, its directory, or a
            :class:`~tvm_mpq.compiler.CompiledModel` (exported first, to ``directory`` or a
            temporary directory that is removed afterwards).
        x: the input, of the model's input shape (numpy or torch; converted to float32).
        backend: ``"spike"`` / ``"qemu"`` (bare metal: ``qemu-system-riscv* -M virt -icount
            shift=0,sleep=off``), both with instruction counts; or ``"qemu-user"`` (static
            riscv64 Linux executable under ``qemu-riscv64``; no counts).
        profile: export profile when given a CompiledModel.
        directory: export directory when given a CompiledModel.
        max_instructions: bare-metal watchdog (whole program).
        timeout_s: wall-clock limit of the simulator run.
        profile_ops: also count each op's retired instructions (minstret around every call;
            ``StandaloneResult.op_instructions``). Bare-metal backends only; the per-call
            counter reads add a few instructions to the whole-model count.

    Returns:
        :class:`StandaloneResult`; build and run failures are reported in ``status``.

    Raises:
        ToolchainError: the cross compiler, libc or simulator for ``backend`` is missing.
        ValueError: unknown backend or wrong input shape.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    tmp = None
    if isinstance(compiled_or_artifact, StandaloneArtifact):
        art = compiled_or_artifact
    elif isinstance(compiled_or_artifact, str | os.PathLike):
        art = load_standalone(str(compiled_or_artifact))
    else:
        if directory is None:
            tmp = tempfile.mkdtemp(prefix="tvm_mpq_sa_")
        _check_tools(get_profile(profile or compiled_or_artifact.profile), backend)
        art = export_standalone(compiled_or_artifact, directory or tmp, profile,
                                linux=backend == "qemu-user")
    try:
        return _run(art, x, backend, max_instructions, timeout_s, profile_ops)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(art: StandaloneArtifact, x: Any, backend: str, max_instructions: int,
         timeout_s: float, profile_ops: bool = False) -> StandaloneResult:
    prof = art.profile
    if profile_ops and backend == "qemu-user":
        raise ValueError("profile_ops needs a bare-metal backend (spike or qemu), not qemu-user")
    _check_tools(prof, backend)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype="<f4")
    if tuple(x.shape) != tuple(art.input_shape):
        raise ValueError(f"input shape {x.shape} != model input {art.input_shape}")
    if backend == "qemu-user" and not art.linux:
        return StandaloneResult(None, None, "build_error",
                                "artifact has no Linux kernel object (rv32 profile or linux=False)",
                                backend=backend)
    variant = {"spike": "spike", "qemu": "virt", "qemu-user": "linux"}[backend]
    variant += "_ops" if profile_ops else ""
    d = art.directory
    run_dir = os.path.join(d, "build", variant)
    os.makedirs(run_dir, exist_ok=True)
    inp = os.path.join(run_dir, "input.bin")
    Path(inp).write_bytes(x.tobytes())
    values = _tool_vars(prof)
    values.update(CC_BM=simulators.find_gcc() if backend != "qemu-user" else values["CC_BM"],
                  INPUT=inp, WATCHDOG_TICKS=str(max(1, max_instructions // 100)))
    try:
        _run_rules(_rules(prof, art.linux)[variant], d, values)
    except _BuildError as e:
        return StandaloneResult(None, None, "build_error", str(e), backend=backend)
    n_out = int(np.prod(art.output_shape))
    t0 = time.monotonic()
    if backend == "spike":
        sim = simulators.run_spike(os.path.join(d, f"build/{variant}/model.elf"), prof.spike_isa,
                                   max_instructions + max_instructions // 10 + 10**6, timeout_s)
        text, rc, timed_out = sim.stdout, sim.returncode, sim.timed_out
    elif backend == "qemu":
        sim = simulators.run_qemu(os.path.join(d, f"build/{variant}/model.elf"), prof.xlen,
                                  prof.qemu_cpu, timeout_s)
        text, rc, timed_out = sim.stdout, sim.returncode, sim.timed_out
    else:
        try:
            proc = subprocess.run([shutil.which("qemu-riscv64") or "qemu-riscv64",
                                   os.path.join(d, "build/linux/model"), inp],
                                  capture_output=True, text=True, timeout=timeout_s, check=False)
            text, rc, timed_out = proc.stdout + proc.stderr, proc.returncode, False
        except subprocess.TimeoutExpired as e:
            text, rc, timed_out = str(e.stdout or ""), -9, True
    wall = time.monotonic() - t0
    info, out, msg = _parse_output(text, n_out)
    if info.get("done") and info.get("rc") == 0 and out is not None:
        ops = None
        if profile_ops:
            names = [op["func"] for op in art.manifest["ops"]]
            counts = info.get("ops", {})
            if sorted(counts) != list(range(len(names))):
                return StandaloneResult(None, None, "run_error",
                                        f"per-op counts for {len(counts)} of {len(names)} ops",
                                        backend=backend, wall_s=wall)
            ops = [(i, names[i], counts[i]) for i in range(len(names))]
        return StandaloneResult(out.reshape(art.output_shape), info.get("instructions"), "ok", "",
                                info.get("cycles"), backend, wall, ops)
    if timed_out or info.get("watchdog") or (backend == "spike" and rc == 0 and "done" not in info):
        status = "timeout"
        msg = "wall-clock timeout" if timed_out else "instruction watchdog"
    else:
        status = "run_error"
        if "rc" in info and info["rc"] != 0:
            msg = f"mpq_model_run returned {info['rc']}" + (f": {msg}" if msg else "")
        tail = " | ".join(text.strip().splitlines()[-3:])
        msg = msg or f"exit status {rc}: {tail}"
    return StandaloneResult(None, None, status, msg,
                            backend=backend, wall_s=wall)
