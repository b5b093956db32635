"""Kernel workspaces: what each op's code asks ``TVMBackendAllocWorkspace`` for.

TVM's ``LowerTVMBuiltin`` turns every buffer a PrimFunc allocates that is larger than its
stack limit (1 KiB; smaller ones become stack ``alloca``: the measured stack covers them) into
``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` calls with constant sizes.
:func:`compile_with_workspaces` compiles the kernel module and reads those calls from the very
TIR the object is generated from (a pass instrument keeps the module ``LowerTVMBuiltin``
returns), then replays them on a model of the harness allocator (``tvm_rt_stubs.c``: a bump
allocator, 64-byte aligned, frees in LIFO order) to get each op's exact footprint.

Anything the replay cannot follow exactly (a size that is not a constant, an allocation whose
pointer escapes, a loop or branch that leaves a workspace allocated, a helper function with a
workspace) raises :class:`NotImplementedError` naming the function: the plan never guesses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvm_mpq.deploy.graph import ALIGN, align

if TYPE_CHECKING:
    import tvm

_ALLOC = "tirx.TVMBackendAllocWorkspace"
_FREE = "tirx.TVMBackendFreeWorkspace"
_BUFFER_DATA = "tirx.buffer_data"
#: prefix TVM's packed API gives each function's symbol
_FFI_PREFIX = "__tvm_ffi_"
#: expression fields the scan follows (the union over TIR expression nodes)
_EXPR_FIELDS = ("a", "b", "value", "condition", "true_value", "false_value", "args", "indices",
                "base", "stride", "body", "source", "vectors")


def compile_with_workspaces(kmod: tvm.IRModule, target: tvm.target.Target
                            ) -> tuple[Any, dict[str, int]]:
    """``tvm.compile(kmod, target)``, plus each function's workspace footprint in bytes
    (keyed by the function's symbol without TVM's ``__tvm_ffi_`` prefix; 0 when it has none).

    Raises:
        NotImplementedError: a workspace request that cannot be accounted exactly.
    """
    import tvm

    seen: list[tvm.IRModule] = []

    @tvm.instrument.pass_instrument
    class _KeepLowered:
        def run_after_pass(self, mod: tvm.IRModule, info: Any) -> None:
            if info.name == "tirx.LowerTVMBuiltin":
                seen.append(mod)

    cur = tvm.transform.PassContext.current()
    with tvm.transform.PassContext(opt_level=cur.opt_level, required_pass=cur.required_pass,
                                   disabled_pass=cur.disabled_pass, config=cur.config,
                                   instruments=[*cur.instruments, _KeepLowered()]):
        built = tvm.compile(kmod, target=target)
    if not seen:
        raise NotImplementedError("the kernel build ran no LowerTVMBuiltin pass: its workspace "
                                  "requests cannot be read")
    sizes: dict[str, int] = {}
    for mod in seen:
        for gv, func in mod.functions.items():
            if isinstance(func, tvm.tirx.PrimFunc):
                name = str(func.attrs.get("global_symbol", gv.name_hint))
                name = name.removeprefix(_FFI_PREFIX)
                sizes[name] = max(sizes.get(name, 0), function_workspace(func, name))
    return built, sizes


def function_workspace(func: tvm.tirx.PrimFunc, name: str = "") -> int:
    """Bytes of workspace ``func`` holds at its peak (the harness allocator's high-water mark
    over one call, from a 64-byte aligned base), read from its lowered TIR.

    Raises:
        NotImplementedError: the requests cannot be replayed exactly (see the module doc).
    """
    sim = _Replay(name or "PrimFunc")
    sim.stmt(func.body)
    if sim.state is not None and sim.state != (0, ()):
        sim.fail("it ends with a workspace still allocated")
    return sim.peak


def _pointer(e: Any) -> Any:
    """What a workspace pointer expression names: ``buf.data`` (``tirx.buffer_data(buf)``) is
    the buffer itself, anything else is itself."""
    import tvm

    if isinstance(e, tvm.ir.expr.Call) and getattr(e.op, "name", "") == _BUFFER_DATA:
        return e.args[0]
    return e


class _Replay:
    """The harness allocator run over one function's statements in program order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.top = 0
        self.peak = 0
        self.live: list[tuple[Any, int]] = []  # (pointer variable, offset)
        self.returned = False

    @property
    def state(self) -> tuple[int, tuple[int, ...]] | None:
        return None if self.returned else (self.top, tuple(o for _, o in self.live))

    def fail(self, why: str) -> None:
        raise NotImplementedError(f"workspace of {self.name}: {why}; its memory cannot be "
                                  "planned exactly")

    def alloc(self, call: Any, var: Any) -> None:
        import tvm

        nbytes = call.args[2]
        if not isinstance(nbytes, tvm.tirx.IntImm):
            self.fail(f"the size {nbytes} is not a constant")
        off = align(self.top, ALIGN)
        self.top = off + int(nbytes.value)
        self.peak = max(self.peak, self.top)
        self.live.append((_pointer(var), off))

    def free(self, call: Any) -> None:
        ptr = call.args[2]
        for i, (var, off) in enumerate(self.live):
            if var.same_as(_pointer(ptr)):
                del self.live[i]
                self.top = min(self.top, off)  # tvm_rt_stubs.c: if (off < ws_top) ws_top = off
                return
        self.fail(f"it frees {ptr}, which is not a workspace it allocated")

    def expr(self, e: Any) -> None:
        """Frees anywhere in an expression; an allocation here would escape the replay."""
        import tvm

        if e is None or isinstance(e, str | int | float):
            return
        if isinstance(e, tvm.ir.Array):
            for x in e:
                self.expr(x)
            return
        if isinstance(e, tvm.ir.expr.Call):
            for a in e.args:
                self.expr(a)
            op = getattr(e.op, "name", "")
            if op == _FREE:
                self.free(e)
            elif op == _ALLOC:
                self.fail("a TVMBackendAllocWorkspace call is not bound to a buffer or variable")
            return
        for f in _EXPR_FIELDS:
            sub = getattr(e, f, None)
            if isinstance(sub, tvm.ir.Expr | tvm.ir.Array):
                self.expr(sub)

    def bind(self, var: Any, value: Any) -> None:
        import tvm

        if isinstance(value, tvm.ir.expr.Call) and getattr(value.op, "name", "") == _ALLOC:
            for a in value.args:
                self.expr(a)
            self.alloc(value, var)
        else:
            self.expr(value)

    def stmt(self, s: Any) -> None:
        """One statement; loops and branches must leave the allocator as they found it."""
        from tvm import tirx

        if s is None or self.returned:
            return
        if isinstance(s, tirx.SeqStmt):
            for c in s.seq:
                self.stmt(c)
        elif isinstance(s, tirx.For | tirx.While):
            self.expr(getattr(s, "min", None))
            self.expr(getattr(s, "extent", None))
            self.expr(getattr(s, "condition", None))
            self.scoped(s.body, "a loop body")
        elif isinstance(s, tirx.IfThenElse):
            self.expr(s.condition)
            self.branches(s.then_case, s.else_case)
        elif isinstance(s, tirx.AttrStmt):
            self.expr(s.value)
            self.stmt(s.body)
        elif isinstance(s, tirx.DeclBuffer):
            self.bind(s.buffer.data, s.data)
        elif isinstance(s, tirx.Bind):
            self.bind(s.var, s.value)
        elif isinstance(s, tirx.AssertStmt):
            self.expr(s.condition)
        elif isinstance(s, tirx.BufferStore):
            self.expr(s.indices)
            self.expr(s.value)
        elif isinstance(s, tirx.Evaluate):
            self.expr(s.value)
        elif isinstance(s, tirx.Return):
            self.expr(s.value)
            ok = isinstance(s.value, tirx.IntImm) and s.value.value == 0
            if ok and (self.top, self.live) != (0, []):  # error returns may leave them
                self.fail("it returns with a workspace still allocated")
            self.returned = True
        elif isinstance(s, tirx.AllocBuffer | tirx.Break | tirx.Continue):
            pass  # a stack buffer (<= 1 KiB: measured with the stack) / control only
        elif "Workspace" in str(s):
            self.fail(f"a {type(s).__name__} statement holds a workspace call")

    def snapshot(self) -> tuple[int, list[tuple[Any, int]], bool]:
        return self.top, list(self.live), self.returned

    def restore(self, snap: tuple[int, list[tuple[Any, int]], bool]) -> None:
        self.top, self.live, self.returned = snap[0], list(snap[1]), snap[2]

    def scoped(self, body: Any, what: str) -> None:
        """A loop body: run once; it must free what it allocates (every iteration is alike)."""
        before = self.state
        self.stmt(body)
        if not self.returned and self.state != before:
            self.fail(f"{what} leaves a workspace allocated")

    def branches(self, then_case: Any, else_case: Any) -> None:
        """Both branches from the same state; a branch that returns ends there, the others must
        agree on what stays allocated."""
        start = self.snapshot()
        self.stmt(then_case)
        after_then = self.snapshot()
        self.restore(start)
        self.stmt(else_case)
        if after_then[2]:  # the then branch returned: go on with the else branch
            return
        if self.returned:  # the else branch returned: go on with the then branch
            self.restore(after_then)
        elif self.state != (after_then[0], tuple(o for _, o in after_then[1])):
            self.fail("the two branches of an if leave different workspaces allocated")
