"""Which operator's conversion is wrong: :func:`first_diverging_op`.

When the imported model does not compute what torch computes
(:func:`tvm_mpq.frontend.verify.verify_import`), the decomposed ``torch.export`` graph (the one
the importer converts) is run in torch with every intermediate value kept; then each operator,
in execution order, is imported (by :func:`~tvm_mpq.frontend.importer.import_model`, as the
model was) and compiled alone for the host, with the values torch gave
its inputs, and compared with torch's value of its output. The first one whose conversion
disagrees is named, with the torch module that calls it. Only run on the error path: one small
compile per operator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["first_diverging_op"]


class _Slot:
    """Placeholder for the i-th tensor input of a one-operator module."""

    def __init__(self, i: int):
        self.i = i


class _OneOp(torch.nn.Module):
    def __init__(self, target: Any, args: Any, kwargs: Any):
        super().__init__()
        self.target, self.args_, self.kwargs_ = target, args, kwargs

    def forward(self, *tensors: torch.Tensor) -> Any:
        def fill(a: Any) -> Any:
            if isinstance(a, _Slot):
                return tensors[a.i]
            if isinstance(a, (list, tuple)):
                return type(a)(fill(x) for x in a)
            return a

        return self.target(*fill(self.args_), **{k: fill(v) for k, v in self.kwargs_.items()})


def _values(gm: Any, inputs: tuple[Any, ...]) -> dict[str, Any]:
    env: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            env[n.name] = out = super().run_node(n)
            return out

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    return env


def _converted_matches(node: Any, env: dict[str, Any], rtol: float) -> bool | None:
    """Does the operator of ``node``, imported and compiled alone, give torch's value?
    (None: it cannot be checked alone: no tensor output, or it does not convert alone.)"""
    import tvm
    from tvm import relax

    from tvm_mpq.frontend.importer import import_model

    want = env.get(node.name)
    if not isinstance(want, torch.Tensor) or not want.is_floating_point() or want.numel() == 0:
        return None
    tensors: list[torch.Tensor] = []

    def slot(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            v = env[a.name]
            if isinstance(v, torch.Tensor):
                tensors.append(v)
                return _Slot(len(tensors) - 1)
            return v
        if isinstance(a, (list, tuple)):
            return type(a)(slot(x) for x in a)
        return a

    op = _OneOp(node.target, slot(node.args), {k: slot(v) for k, v in node.kwargs.items()})
    try:
        ex = tvm.compile(import_model(op, tuple(tensors)).mod, target="llvm")
        vm = relax.VirtualMachine(ex, tvm.cpu())
        got = vm["main"](*[tvm.runtime.tensor(t.contiguous().numpy()) for t in tensors])
        while isinstance(got, (list, tuple)) or type(got).__name__ == "Array":
            got = got[0]
        got = got.numpy()
    except Exception:  # noqa: BLE001 - an op that does not convert alone is not the culprit found
        return None
    w = want.float().numpy()
    if got.shape != w.shape:
        return False
    scale = max(float(np.abs(w).max()), 1e-12)
    diff = np.nan_to_num(np.abs(got.astype(np.float64) - w), nan=np.inf)
    return bool(diff.max() / scale <= rtol)


def first_diverging_op(model: torch.nn.Module, example_inputs: tuple[Any, ...],
                       rtol: float = 1e-3, max_ops: int = 400) -> str | None:
    """``"aten.op (node name, in module 'name')"`` of the first operator whose conversion
    to Relax disagrees with torch on the values the model computes for ``example_inputs``
    (see the module docstring), or None when none of the first ``max_ops`` operators can be
    shown wrong alone."""
    from tvm_mpq.frontend.importer import module_of

    with torch.no_grad():
        ep = torch.export.export(model.eval(), tuple(example_inputs)).run_decompositions()
    gm = ep.module()
    env = _values(gm, tuple(example_inputs))
    checked = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or checked >= max_ops:
            continue
        ok = _converted_matches(node, env, rtol)
        checked += ok is not None
        if ok is False:
            where = module_of(node)[0]
            return f"{node.target} (node {node.name!r}, in module {where or '<top level>'!r})"
    return None
