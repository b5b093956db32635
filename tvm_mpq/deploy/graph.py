"""The lowered model as data: ops in call order, the buffers they use, and the memory plan.

:func:`build_graph` walks the flat Relax ``main`` that :func:`~tvm_mpq.deploy.lower.
lower_for_standalone` produces; :func:`plan_memory` places the intermediate buffers in one
arena from their live ranges. Code generation and the manifest read the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

#: byte alignment of every tensor: TVM's kernels assume (and the harness uses) 64 bytes
ALIGN = 64

#: dtypes of the model's input and output the C entry point can take: float32 (float in /
#: out) and the codes of an ``integer_io`` model
IO_DTYPES = ("float32", "uint8")


@dataclass
class Storage:
    """One buffer of the model (several tensors may view it: ``R.reshape`` aliases).

    Attributes:
        sid: index in :attr:`ModelGraph.storages` (the manifest's buffer id).
        kind: ``"input" | "output" | "arena" | "const" | "workspace"`` (the scratch memory one
            op's kernel requests through ``TVMBackendAllocWorkspace``: live at that op only).
        nbytes: its size.
        first: index of the op that writes it (arena buffers).
        last: index of the last op that reads it.
        offset: byte offset in the arena (arena) or in the weight blob (const).
        data: the bytes of a constant.
    """

    sid: int
    kind: str
    nbytes: int
    first: int = -1
    last: int = -1
    offset: int = 0
    data: bytes | None = None


@dataclass
class TensorRef:
    """A typed, shaped view of a :class:`Storage` (an argument of an op)."""

    storage: Storage
    shape: tuple[int, ...]
    dtype: str


@dataclass
class OpCall:
    """One packed call: ``args`` are its inputs followed by its outputs.

    Attributes:
        func: the PrimFunc's GlobalVar name in the lowered module.
        symbol: its unique global symbol in the kernel object (set by :func:`build_graph`).
        args: input then output tensors.
        num_inputs: how many of ``args`` are inputs.
        workspace: bytes of workspace its kernel holds at its peak (:func:`add_workspaces`).
    """

    func: str
    symbol: str
    args: list[TensorRef]
    num_inputs: int
    workspace: int = 0


@dataclass
class ModelGraph:
    """The model as a call sequence.

    Attributes:
        ops: the packed calls in order.
        storages: every buffer (input, output, arena and constants).
        input, output: the model's input and output (dtypes of :data:`IO_DTYPES`: float32,
            or uint8 codes for a model compiled with ``integer_io=True``).
        copy_output_from: set when the output is the input itself or a constant: the buffer
            copied into the output at the end.
    """

    ops: list[OpCall]
    storages: list[Storage]
    input: TensorRef
    output: TensorRef
    copy_output_from: Storage | None


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


class _GraphBuilder:
    """State of one walk over ``main``: buffers, ops, and what each Relax variable holds."""

    def __init__(self) -> None:
        import tvm

        self.call_tir = tvm.ir.Op.get("relax.call_tir")
        self.reshape = tvm.ir.Op.get("relax.reshape")
        self.storages: list[Storage] = []
        self.ops: list[OpCall] = []
        self.env: dict[Any, Any] = {}  # relax.Var -> TensorRef | list

    def storage(self, kind: str, nbytes: int, data: bytes | None = None) -> Storage:
        s = Storage(len(self.storages), kind, nbytes, data=data)
        self.storages.append(s)
        return s

    def tensor(self, kind: str, sinfo: Any, what: str) -> TensorRef:
        shape, dtype = _static_shape(sinfo, what)
        return TensorRef(self.storage(kind, _nbytes(shape, dtype)), shape, dtype)

    def value(self, e: Any) -> Any:
        import tvm
        from tvm import relax

        if isinstance(e, relax.Var):
            if e not in self.env:
                raise NotImplementedError(f"unbound variable {e.name_hint}")
            return self.env[e]
        if isinstance(e, tvm.ir.expr.GenericConst):
            arr = e.value.numpy()
            s = self.storage("const", arr.nbytes, np.ascontiguousarray(arr).tobytes())
            return TensorRef(s, tuple(arr.shape), str(arr.dtype))
        if isinstance(e, relax.Tuple):
            return [self.value(f) for f in e.fields]
        if isinstance(e, relax.TupleGetItem):
            return self.value(e.tuple_value)[e.index]
        raise NotImplementedError(f"unsupported expression {type(e).__name__}: {e}")

    def bind(self, b: Any) -> None:
        """One binding of ``main``: a kernel call, a reshape view, or a plain value."""
        from tvm import relax

        if not isinstance(b, relax.VarBinding):
            raise NotImplementedError(f"unsupported binding {type(b).__name__}")
        v = b.value
        if isinstance(v, relax.Call) and v.op.same_as(self.call_tir):
            self.env[b.var] = self.call(v)
        elif isinstance(v, relax.Call) and v.op.same_as(self.reshape):
            src = self.value(v.args[0])
            nshape, ndt = _static_shape(b.var.ty, "reshape")
            self.env[b.var] = TensorRef(src.storage, nshape, ndt)  # a view: same bytes
        elif isinstance(v, relax.Call):
            raise NotImplementedError(
                f"operator {v.op} is left in main after lowering (no TIR legalization)")
        else:
            self.env[b.var] = self.value(v)

    def call(self, v: Any) -> TensorRef | list[TensorRef]:
        """A ``call_tir``: new arena outputs; the live ranges of its buffers extended."""
        from tvm import relax

        if len(v.args) > 2:
            raise NotImplementedError("call_tir with symbolic tir_vars is not supported")
        ins = [self.value(a) for a in v.args[1].fields]
        if not all(isinstance(t, TensorRef) for t in ins):
            raise NotImplementedError("call_tir with a nested tuple argument")
        name = v.args[0].name_hint
        out_si = v.ty_args[0]
        is_tuple = isinstance(out_si, relax.TupleType)
        outs = [self.tensor("arena", o, f"output of {name}")
                for o in (list(out_si.fields) if is_tuple else [out_si])]
        idx = len(self.ops)
        for t in ins:
            t.storage.last = max(t.storage.last, idx)
        for t in outs:
            t.storage.first = idx
        self.ops.append(OpCall(name, "", ins + outs, len(ins)))
        return outs if is_tuple else outs[0]

    def output(self, out: Any) -> tuple[TensorRef, Storage | None]:
        """The model output and, if it is not written by an op, the buffer to copy it from."""
        if isinstance(out, list):
            if len(out) != 1:
                raise NotImplementedError(f"models with {len(out)} outputs are not supported")
            out = out[0]
        if out.dtype not in IO_DTYPES:
            raise NotImplementedError(f"the output must be one of {IO_DTYPES}, got {out.dtype}")
        if out.storage.kind == "arena":
            out.storage.kind = "output"
            return out, None
        # the output is the input itself or a constant: copy at the end
        return TensorRef(self.storage("output", out.storage.nbytes), out.shape, out.dtype), out.storage


def build_graph(main: Any) -> ModelGraph:
    """Walk the lowered ``main``: ops in order, buffers with live ranges, aliases resolved.

    Raises:
        NotImplementedError: ``main`` uses something the C code cannot express (several
            inputs or outputs, an input/output dtype not in :data:`IO_DTYPES`, dynamic shapes,
            an op left without TIR legalization, symbolic ``tir_vars``).
    """
    if len(main.params) != 1:
        raise NotImplementedError(f"main must take one input tensor, it takes {len(main.params)}")
    gb = _GraphBuilder()
    shape, dtype = _static_shape(main.params[0].ty, "input")
    if dtype not in IO_DTYPES:
        raise NotImplementedError(f"the input must be one of {IO_DTYPES}, got {dtype}")
    inp = TensorRef(gb.storage("input", _nbytes(shape, dtype)), shape, dtype)
    gb.env[main.params[0]] = inp
    for block in main.body.blocks:
        for b in block.bindings:
            gb.bind(b)
    out, copy_from = gb.output(gb.value(main.body.body))
    for i, op in enumerate(gb.ops):
        op.symbol = f"mpq_op{i}_{_c_ident(op.func)}"[:96]
    return ModelGraph(gb.ops, gb.storages, inp, out, copy_from)


def align(n: int, a: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``a``."""
    return (n + a - 1) // a * a


def add_workspaces(g: ModelGraph, sizes: dict[str, int]) -> int:
    """Record each op's workspace (``sizes``: bytes per op symbol, from
    :func:`~tvm_mpq.deploy.workspace.compile_with_workspaces`) as a ``"workspace"`` storage live
    at that op only. Returns the largest one: the workspace region's size."""
    for i, op in enumerate(g.ops):
        op.workspace = int(sizes.get(op.symbol, 0))
        if op.workspace:
            g.storages.append(Storage(len(g.storages), "workspace", op.workspace, i, i))
    return max((op.workspace for op in g.ops), default=0)


def plan_memory(storages: list[Storage]) -> int:
    """Assign arena offsets: greedy by size (largest first), lowest offset that does not
    overlap a storage with an intersecting live range ``[first, last]``. Returns arena bytes.

    A storage written by op i and read by op i is live at i on both ends, so an op's output
    never shares bytes with its own inputs (kernels are not in-place safe).

    Workspaces (kind ``"workspace"``, live at their op only) all start at one offset, the
    base of the region ``[__ws_start, __ws_end)`` the harness allocator serves every op's
    requests from; the tensors live at an op with a workspace are placed around it, the
    others may reuse its bytes. The base is the candidate (0, a tensor's size, or the end of
    a tensor placed with base 0) that gives the smallest arena.
    """
    arena = [s for s in storages if s.kind == "arena"]
    for s in arena:
        if s.last < s.first:  # written, never read (dead tuple element): still needs space
            s.last = s.first
    ws = [s for s in storages if s.kind == "workspace"]
    if not ws:
        return _place(arena, ws, 0)
    _place(arena, ws, 0)
    cands = sorted({0} | {align(s.nbytes) for s in arena}
                   | {s.offset + align(s.nbytes) for s in arena})
    best = min(cands, key=lambda base: (_place(arena, ws, base), base))
    return _place(arena, ws, best)


def _place(arena: list[Storage], ws: list[Storage], base: int) -> int:
    """Workspaces at ``base``, then the tensors greedily; returns the arena's size."""
    top = 0
    for w in ws:
        w.offset = base
        top = max(top, align(base + w.nbytes))
    placed = list(ws)
    for s in sorted(arena, key=lambda s: (-s.nbytes, s.first, s.sid)):
        busy = sorted((p.offset, p.offset + align(p.nbytes)) for p in placed
                      if p.first <= s.last and s.first <= p.last)
        off = 0
        for lo, hi in busy:
            if off + s.nbytes <= lo:
                break
            off = max(off, align(hi))
        s.offset = off
        placed.append(s)
        top = max(top, align(off + s.nbytes))
    return top


def workspace_region(storages: list[Storage]) -> tuple[int, int]:
    """``(offset, bytes)`` of the planned workspace region in the arena (``(0, 0)`` without
    workspaces)."""
    ws = [s for s in storages if s.kind == "workspace"]
    return (ws[0].offset, max(s.nbytes for s in ws)) if ws else (0, 0)


def arena_lower_bound(storages: list[Storage]) -> int:
    """The largest set of simultaneously live arena tensors and workspaces, in bytes: no plan
    of the arena can be smaller (everything live at one op needs its own bytes)."""
    live = [s for s in storages if s.kind in ("arena", "workspace")]
    ops = {i for s in live for i in (s.first, max(s.first, s.last))}
    return max((sum(s.nbytes for s in live if s.first <= i <= max(s.first, s.last))
                for i in ops), default=0)
