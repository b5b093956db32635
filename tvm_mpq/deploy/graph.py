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


@dataclass
class Storage:
    """One buffer of the model (several tensors may view it: ``R.reshape`` aliases).

    Attributes:
        sid: index in :attr:`ModelGraph.storages` (the manifest's buffer id).
        kind: ``"input" | "output" | "arena" | "const"``.
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
    """

    func: str
    symbol: str
    args: list[TensorRef]
    num_inputs: int


@dataclass
class ModelGraph:
    """The model as a call sequence.

    Attributes:
        ops: the packed calls in order.
        storages: every buffer (input, output, arena and constants).
        input, output: the model's float32 input and output.
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
        if out.dtype != "float32":
            raise NotImplementedError(f"the output must be float32, got {out.dtype}")
        if out.storage.kind == "arena":
            out.storage.kind = "output"
            return out, None
        # the output is the input itself or a constant: copy at the end
        return TensorRef(self.storage("output", out.storage.nbytes), out.shape, out.dtype), out.storage


def build_graph(main: Any) -> ModelGraph:
    """Walk the lowered ``main``: ops in order, buffers with live ranges, aliases resolved.

    Raises:
        NotImplementedError: ``main`` uses something the C code cannot express (several
            inputs or outputs, a non-float32 input/output, dynamic shapes, an op left
            without TIR legalization, symbolic ``tir_vars``).
    """
    if len(main.params) != 1:
        raise NotImplementedError(f"main must take one input tensor, it takes {len(main.params)}")
    gb = _GraphBuilder()
    shape, dtype = _static_shape(main.params[0].ty, "input")
    if dtype != "float32":
        raise NotImplementedError(f"the input must be float32, got {dtype}")
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


def plan_memory(storages: list[Storage]) -> int:
    """Assign arena offsets: greedy by size (largest first), lowest offset that does not
    overlap a storage with an intersecting live range ``[first, last]``. Returns arena bytes.

    A storage written by op i and read by op i is live at i on both ends, so an op's output
    never shares bytes with its own inputs (kernels are not in-place safe).
    """
    arena = [s for s in storages if s.kind == "arena"]
    for s in arena:
        if s.last < s.first:  # written, never read (dead tuple element): still needs space
            s.last = s.first
    placed: list[Storage] = []
    top = 0
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
