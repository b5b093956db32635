"""A ``torch.export`` program (``torch.export.save`` / ``.pt2``) as a module the quantizer can
plan: :func:`module_from_exported`.

``ExportedProgram.module()`` gives a flat fx graph of ATen calls whose weights are plain
attributes: there is no ``nn.Conv2d`` / ``nn.Linear`` for a plan to name, calibrate or
replace. This module lifts each ``aten.conv2d`` / ``aten.linear`` / ``aten.batch_norm`` call
whose weights are attributes back into the ``nn`` module it came from, under the module name
the export recorded (``nn_module_stack``), so a plan of the lifted model uses the original
model's layer names (``features.3.conv``). The lifted module computes exactly what the
program computes (same ATen ops, same tensors).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.fx.operator_schemas import normalize_function

__all__ = ["load_exported", "module_from_exported"]

_ATEN = torch.ops.aten


def _conv(kw: dict[str, Any], w: torch.Tensor, b: torch.Tensor | None) -> nn.Module | None:
    if w.ndim != 4:
        return None
    groups = int(kw.get("groups", 1))
    m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]),
                  stride=tuple(kw.get("stride", (1, 1))), padding=tuple(kw.get("padding", (0, 0))),
                  dilation=tuple(kw.get("dilation", (1, 1))), groups=groups, bias=b is not None)
    return m


def _linear(kw: dict[str, Any], w: torch.Tensor, b: torch.Tensor | None) -> nn.Module | None:
    return nn.Linear(w.shape[1], w.shape[0], bias=b is not None) if w.ndim == 2 else None


#: ATen op -> (module of it, the names of its tensor arguments, in nn parameter order)
_LIFT: dict[Any, tuple[Callable[..., nn.Module | None], str]] = {
    _ATEN.conv2d.default: (_conv, "Conv2d"),
    _ATEN.linear.default: (_linear, "Linear"),
}


def _attr(gm: nn.Module, node: Any) -> torch.Tensor | None:
    """The tensor of a ``get_attr`` node (None for anything computed)."""
    if node is None or getattr(node, "op", None) != "get_attr":
        return None
    return operator.attrgetter(node.target)(gm)


def _module_name(node: Any, kind: str, used: set[str], n: int) -> str:
    """The module name the export recorded for ``node`` when it is a ``kind`` module not
    lifted yet, else a fresh ``lifted_<kind>_<n>``."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        name, typ = list(stack.values())[-1]
        typ = typ if isinstance(typ, str) else getattr(typ, "__qualname__", str(typ))
        if name and typ.rsplit(".", 1)[-1] == kind and name not in used:
            return name
    return f"lifted_{kind.lower()}_{n}"


def _bn_module(gm: nn.Module, kw: dict[str, Any]) -> nn.Module | None:
    mean, var = _attr(gm, kw.get("running_mean")), _attr(gm, kw.get("running_var"))
    w, b = _attr(gm, kw.get("weight")), _attr(gm, kw.get("bias"))
    if mean is None or var is None or kw.get("training") or (w is None) != (b is None):
        return None
    bn = nn.BatchNorm2d(mean.shape[0], eps=float(kw.get("eps", 1e-5)),
                        momentum=kw.get("momentum", 0.1), affine=w is not None).eval()
    bn.running_mean, bn.running_var = mean, var
    if w is not None:
        bn.weight, bn.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
    return bn


def _lifted(gm: nn.Module, node: Any) -> tuple[nn.Module, str, Any] | None:
    """``(module, kind, its input node)`` for a liftable call, else None."""
    if node.op != "call_function":
        return None
    norm = normalize_function(node.target, node.args, node.kwargs,
                              normalize_to_only_use_kwargs=True)
    if norm is None:
        return None
    kw = norm.kwargs
    if node.target is _ATEN.batch_norm.default:
        bn = _bn_module(gm, kw)
        return (bn, "BatchNorm2d", kw["input"]) if bn is not None else None
    if node.target not in _LIFT:
        return None
    make, kind = _LIFT[node.target]
    w, b = _attr(gm, kw.get("weight")), _attr(gm, kw.get("bias"))
    if w is None or (kw.get("bias") is not None and b is None):
        return None  # weights computed in the graph: the call stays a float ATen op
    m = make(kw, w, b)
    if m is None:
        return None
    m.weight = nn.Parameter(w.detach(), requires_grad=False)
    if b is not None:
        m.bias = nn.Parameter(b.detach(), requires_grad=False)
    return m, kind, kw["input"]


def _check_dynamic_batch(ep: Any) -> None:
    """Calibration and evaluation run batches: a program exported for one batch size bakes
    it into its reshapes, so its first input dimension must be dynamic."""
    from torch.export.graph_signature import InputKind

    users = {s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT}
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in users:
            continue
        val = node.meta.get("val")
        if val is None or not hasattr(val, "shape") or not val.shape:
            continue
        if not isinstance(val.shape[0], torch.SymInt):
            raise ValueError(
                f"the exported program's input {node.name!r} has a static batch size "
                f"{int(val.shape[0])}: calibration and evaluation run batches of inputs; export "
                "with a dynamic batch dimension, e.g. torch.export.export(model, (x,), "
                "dynamic_shapes=({0: torch.export.Dim('batch')},)) with x of batch >= 2")


def module_from_exported(ep: Any) -> nn.Module:
    """An ``nn.Module`` that computes ``ep`` (a ``torch.export.ExportedProgram``) with its
    conv / linear / batch-norm calls as ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d``
    submodules named as in the exported model (see the module docstring). Calls whose
    weights are computed inside the graph stay ATen ops (their layers stay fp32).

    Raises:
        ValueError: the program's batch dimension is static (see the message for the fix).
    """
    _check_dynamic_batch(ep)
    gm = ep.module()
    graph = gm.graph
    used: set[str] = set()
    by_weight: dict[tuple[str, ...], str] = {}  # a module called twice is lifted once
    for i, node in enumerate(list(graph.nodes)):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)  # input checks of the export; the tuner checks its inputs
            continue
        lifted = _lifted(gm, node)
        if lifted is None:
            continue
        mod, kind, inp = lifted
        key = tuple(str(a) for a in node.args[1:] if getattr(a, "op", None) == "get_attr")
        name = by_weight.get(key) or _module_name(node, kind, used, i)
        if name not in used:
            gm.add_submodule(name, mod)
            used.add(name)
            by_weight[key] = name
        with graph.inserting_before(node):
            new = graph.call_module(name, (inp,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    # a plain GraphModule: ep.module()'s class refuses eval() / train()
    out = torch.fx.GraphModule(gm, graph, class_name="ExportedModule")
    return out.eval()


def load_exported(path: str) -> nn.Module:
    """:func:`module_from_exported` of a ``torch.export.save`` file (ValueError naming the
    file when it is not one)."""
    try:
        ep = torch.export.load(path)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad archive
        raise ValueError(f"{path}: not a torch.export file (torch.export.load: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return module_from_exported(ep)
