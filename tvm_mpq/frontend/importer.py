"""PyTorch -> Relax import, with a table of every conv2d / linear call site.

``torch.export`` -> core-ATen decomposition -> ``from_exported_program``. The
conv / linear converters are wrapped (``custom_convert_map``) so that each
call site is recorded with its torch module name (``node.meta
["nn_module_stack"]``), its shapes and attributes, in execution order.

After decomposition a ``Conv2d`` is ``aten.convolution``; a ``Linear`` is
``aten.addmm`` (with bias) or ``aten.mm`` (without), on a 2-D input (3-D
inputs are flattened around it by ``view`` ops). Only matmuls whose innermost
module is an ``nn.Linear`` are layers; other matmuls stay plain float ops.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from tvm_mpq.frontend.layers import LayerInfo, LayerTable

__all__ = [
    "ConvertHook",
    "ImportedModel",
    "NonQuantizableLayerWarning",
    "UnsupportedOperatorError",
    "import_model",
    "layer_call_sites",
    "quantizable_modules",
]


class UnsupportedOperatorError(RuntimeError):
    """An operator that the Relax importer cannot convert.

    Attributes:
        op: ATen overload name, e.g. ``"erfinv.default"``.
        module: torch module name of the (first) call site, ``""`` for the top level.
        ops: every unsupported ``(op, module)`` pair found.
    """

    def __init__(self, ops: Sequence[tuple[str, str]], detail: str = ""):
        self.ops = list(ops)
        self.op, self.module = self.ops[0]
        where = "; ".join(f"'{o}' in module '{m or '<top level>'}'" for o, m in self.ops)
        msg = f"unsupported operator(s) for the TVM Relax importer: {where}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class NonQuantizableLayerWarning(UserWarning):
    """A conv/linear call site the integer kernels cannot run; it stays fp32."""


@dataclass
class ImportedModel:
    """Result of :func:`import_model`.

    Attributes:
        mod: the Relax IRModule (``main``), weights bound as constants unless
            ``keep_params_as_input``.
        table: the conv2d / linear call sites.
        exported_program: the decomposed ``torch.export`` program that was imported.
        call_site_vars: per table row, the Relax var holding that call site's
            output (after the bias add).
    """

    mod: Any
    table: LayerTable
    exported_program: Any
    call_site_vars: list[Any] = field(default_factory=list)


# ---------------------------------------------------------------- helpers
def _is_quantizable_conv(m: nn.Module) -> tuple[bool, str]:
    if not isinstance(m, nn.Conv2d):
        return False, f"{type(m).__name__} is not an nn.Conv2d"
    if tuple(m.dilation) != (1, 1):
        return False, f"dilation {tuple(m.dilation)} != 1"
    return True, ""


def quantizable_modules(model: nn.Module) -> list[str]:
    """Names of the Conv2d / Linear modules our integer kernels support.

    Order is ``named_modules`` (definition) order; use the :class:`LayerTable`
    of :func:`import_model` for the exact forward order.
    """
    names = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and _is_quantizable_conv(m)[0]):
            names.append(n)
    return names


def module_of(node: Any) -> tuple[str, str]:
    """(module name, module type string) of the innermost module of an fx node."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    name, typ = list(stack.values())[-1]
    return name, typ if isinstance(typ, str) else getattr(typ, "__qualname__", str(typ))


def _shape(arg: Any) -> tuple[int, ...]:
    val = arg.meta.get("val") if hasattr(arg, "meta") else None
    if val is None or not hasattr(val, "shape"):
        raise ValueError(f"no static shape for {arg}")
    return tuple(int(d) for d in val.shape)


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(i) for i in v)
    return v * n if len(v) == 1 else v


def _conv_info(node: Any, index: int, modules: dict[str, nn.Module]) -> LayerInfo:
    a = list(node.args) + [None] * (9 - len(node.args))
    x, w, b, stride, padding, dilation, transposed, _out_pad, groups = a[:9]
    name, typ = module_of(node)
    xs, ws, ys = _shape(x), _shape(w), _shape(node)
    nd = len(xs) - 2
    stride, padding = _tuple(stride or 1, nd), _tuple(padding or 0, nd)
    dilation, groups = _tuple(dilation or 1, nd), int(groups or 1)
    # every output element needs in_channels/groups * prod(kernel) MACs
    macs = math.prod(ys) * math.prod(ws[1:]) if not transposed else \
        math.prod(xs) * math.prod(ws[1:])
    quant, reason = True, ""
    if transposed:
        quant, reason = False, "transposed convolution"
    elif nd != 2:
        quant, reason = False, f"conv{nd}d (only conv2d is supported)"
    elif dilation != (1, 1):
        quant, reason = False, f"dilation {dilation} != 1"
    elif not isinstance(modules.get(name), nn.Conv2d):
        quant, reason = False, f"functional conv in {typ or 'top level'} (not an nn.Conv2d module)"
    label = name or node.name
    return LayerInfo(index, label, "conv2d" if nd == 2 and not transposed else
                     ("conv_transpose" if transposed else f"conv{nd}d"),
                     xs, ws, ys, stride, padding, dilation, groups, b is not None, macs,
                     4 * (math.prod(ws) + (ws[0] if b is not None and not transposed else 0)),
                     quant, reason)


def _linear_info(node: Any, index: int, modules: dict[str, nn.Module]) -> LayerInfo | None:
    op = node.target.__name__
    name, _ = module_of(node)
    m = modules.get(name)
    if not isinstance(m, nn.Linear):
        return None  # a plain matmul, not a layer
    if op == "addmm.default":
        x, wt = node.args[1], node.args[2]
    elif op == "mm.default":
        x, wt = node.args[0], node.args[1]
    else:  # linear.default (only if not decomposed)
        x, wt = node.args[0], node.args[1]
    xs, ys = _shape(x), _shape(node)
    ws = (m.out_features, m.in_features)
    if op != "linear.default" and _shape(wt) != (m.in_features, m.out_features):
        return None  # mm inside a Linear that is not its weight product
    if len(xs) != 2:
        xs = (math.prod(xs[:-1]), xs[-1])
        ys = (math.prod(ys[:-1]), ys[-1])
    has_bias = m.bias is not None
    return LayerInfo(index, name, "linear", xs, ws, ys, has_bias=has_bias,
                     macs=xs[0] * ws[0] * ws[1],
                     param_bytes=4 * (ws[0] * ws[1] + (ws[0] if has_bias else 0)))


def layer_call_sites(ep: Any, model: nn.Module) -> dict[str, str]:
    """fx node name -> torch module name of every quantizable conv2d / linear call site of a
    decomposed exported program of ``model`` (the rows :func:`import_model` tables)."""
    modules = dict(model.named_modules())
    out = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        op = node.target.__name__
        info = _conv_info(node, 0, modules) if op in _CONV_OPS else \
            _linear_info(node, 0, modules) if op in _LINEAR_OPS else None
        if info is not None and info.quantizable:
            out[node.name] = info.name
    return out


def positive_select_indices(ep: Any) -> int:
    """Rewrite ``aten.select.int`` calls with a negative index (``x[:, -1]``) to the positive
    index, in place; returns how many. TVM 0.27's converter reads a negative index as out of
    bounds and returns garbage (found through an LSTM's ``out[:, -1]``: 3.7e26 off torch)."""
    n = 0
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.select.int:
            x, dim, index = node.args[:3]
            if isinstance(index, int) and index < 0:
                node.args = (x, dim, index + _shape(x)[dim])
                n += 1
    return n


_CONV_OPS = ("convolution.default", "conv2d.default")
_LINEAR_OPS = ("addmm.default", "mm.default", "linear.default")

ConvertHook = Callable[[LayerInfo, Any, Any], Any]
#: ``node_hook(fx_node, importer, layer_info_or_None, default)``: a Relax var, or None for
#: ``default()`` (the importer's own conversion of the node, which it may also call itself)
NodeHook = Callable[[Any, Any, "LayerInfo | None", Callable[[], Any]], Any]


def import_model(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    *,
    keep_params_as_input: bool = False,
    convert_hook: ConvertHook | None = None,
    node_hook: NodeHook | None = None,
    on_export: Callable[[Any], None] | None = None,
    warn: bool = True,
) -> ImportedModel:
    """Export ``model`` with ``torch.export`` and import it into Relax.

    Args:
        model: the torch model (put in eval mode; not modified otherwise).
        example_inputs: a tensor or a tuple of forward arguments (static shapes).
        keep_params_as_input: passed to ``from_exported_program``.
        convert_hook: optional ``hook(layer_info, fx_node, importer)`` called at
            each conv2d / linear call site; return a Relax var to replace the
            default conversion (e.g. a quantized TE kernel), or None to keep it.
        node_hook: optional hook called at every operator node instead (see
            :data:`NodeHook`); takes precedence over ``convert_hook``.
        on_export: called with the decomposed exported program before the conversion.
        warn: emit a :class:`NonQuantizableLayerWarning` per non-quantizable site.

    Returns:
        :class:`ImportedModel` with the IRModule and the :class:`LayerTable`.

    Raises:
        UnsupportedOperatorError: an operator the importer cannot convert,
            naming the ATen op and the torch module that calls it.
    """
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    model = model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, tuple(example_inputs))
    ep = ep.run_decompositions()  # core ATen, as from_exported_program would do
    positive_select_indices(ep)

    # The importer only asserts "Unsupported function types [...]": find them
    # ourselves to name the torch module too.
    supported = ExportedProgramImporter().create_convert_map()
    missing = [(n.target.__name__, module_of(n)[0]) for n in ep.graph.nodes
               if n.op == "call_function" and n.target.__name__ not in supported]
    if missing:
        raise UnsupportedOperatorError(list(dict.fromkeys(missing)))

    if on_export is not None:
        on_export(ep)
    modules = dict(model.named_modules())
    rows: list[LayerInfo] = []
    out_vars: list[Any] = []
    current: list[Any] = [None]  # fx node being converted, to name it if a converter fails

    def defaults(importer: Any) -> dict[str, Callable[[Any], Any]]:
        # The importer's own converters (bound to it); our map replaces them in
        # importer.convert_map, so keep a private copy per importer.
        d = getattr(importer, "_tvm_mpq_defaults", None)
        if d is None:
            d = importer.create_convert_map()
            importer._tvm_mpq_defaults = d
        return d

    def wrap(op: str) -> Callable[[Any, Any], Any]:
        def convert(node: Any, importer: Any) -> Any:
            current[0] = node
            info = None
            if op in _CONV_OPS:
                info = _conv_info(node, len(rows), modules)
            elif op in _LINEAR_OPS:
                info = _linear_info(node, len(rows), modules)
            out = None
            if node_hook is not None:
                out = node_hook(node, importer, info, lambda: defaults(importer)[op](node))
            elif info is not None and convert_hook is not None:
                out = convert_hook(info, node, importer)
            if out is None:
                out = defaults(importer)[op](node)
            if info is not None:
                rows.append(info)
                out_vars.append(out)
            return out

        return convert

    # Wrap every op (not only conv/linear) so that a converter failure names its node.
    cmap = {op: wrap(op) for op in supported}
    try:
        mod = from_exported_program(ep, keep_params_as_input=keep_params_as_input,
                                    custom_convert_map=cmap, run_ep_decomposition=False)
    except Exception as e:  # a converter rejected an argument combination
        node = current[0]
        if node is None:
            raise
        raise UnsupportedOperatorError([(node.target.__name__, module_of(node)[0])],
                                       f"{type(e).__name__}: {e}") from e

    table = LayerTable(rows)
    if warn:
        for r in table:
            if not r.quantizable:
                warnings.warn(f"layer {r.name!r} ({r.kind}) cannot be quantized: {r.reason}; "
                              "it stays fp32", NonQuantizableLayerWarning, stacklevel=2)
    return ImportedModel(mod, table, ep, out_vars)
