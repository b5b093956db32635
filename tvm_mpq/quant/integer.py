"""Integer-only inference: which tensors of a model are integer codes, at which scale, and the
fixed-point parameters of every integer operation (issue 11).

The compiler (:mod:`tvm_mpq.compiler.compiled`) and the torch reference
(:func:`tvm_mpq.fake_quant` with ``integer_only=True``, :mod:`tvm_mpq.quant.intref`) both
walk the decomposed ``torch.export`` graph of the BN-folded model and ask one
:class:`IntegerProgram` what to do at each node, so they run the same integer arithmetic.

Domains. A quantized layer of the plan always reads integer codes (it quantizes a float input
once, at entry). Its output stays integer when some consumer reads integers, else it is
dequantized in the layer's epilogue (a boundary to float: an fp32 layer, the float output).
``add`` (two integer inputs), the spatial ``mean`` (global average pooling), ReLU / ReLU6 /
``hardtanh`` / ``clamp`` and the shape-only ops (``view``, ``clone``, ...) stay integer when
their inputs are. Every other operator is float: an integer input is dequantized once.

Specs. Codes are unsigned asymmetric (``real = (q - zero_point) * scale``). A value whose only
integer consumers are quantized layers with the same input parameters is produced directly
at those parameters (the layer's epilogue requantizes to the next layer's bit-width); any
other integer value (a residual branch, a block output read by an add) gets its own 8-bit
parameters from the float model's observed range
(:func:`~tvm_mpq.quant.exported.observe_tensor_ranges`, stored in
``QuantParams.tensors``). A layer whose input codes have other parameters requantizes them
first (integer to integer).

Arithmetic: every rescale is one single-rounding dyadic multiply (:mod:`tvm_mpq.quant.dyadic`:
``(x * M + K) >> T``, bias and zero point folded into ``K``):

* layer: ``requant(acc + bias_q[k], s_a * s_w[k] / s_out)``, ``bias_q = round(bias /
  (s_a s_w[k]))``, ``acc`` the exact sum of ``(a_q - z_a) * w_q``; a folded ReLU / ReLU6
  becomes the clamp bounds;
* add: ``(q_1 - z_1) s_1 / s_out + (q_2 - z_2) s_2 / s_out`` with both multipliers on one
  shift, rounded once;
* mean over ``N`` pixels: ``requant(sum(q) - N z_in, s_in / (N s_out))``;
* spec change: ``requant(q - z_in, s_in / s_out)``; clamp: on the codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvm_mpq.quant.dyadic import dyadic_params

__all__ = [
    "IntNode", "IntegerProgram", "QSpec", "add_params", "build_program",
    "clamp_codes", "is_activation", "is_cast", "layer_input", "layer_params", "mean_params",
    "requant_params",
]

_PASS_OPS = {"view.default", "_unsafe_view.default", "clone.default", "reshape.default",
             "flatten.using_ints", "squeeze.dim", "squeeze.dims", "unsqueeze.default",
             "alias.default", "detach.default", "permute.default", "contiguous.default",
             "_to_copy.default"}
_CLAMP_OPS = {"relu.default", "hardtanh.default", "clamp.default", "relu6.default"}
_CONV_OPS = ("convolution.default", "conv2d.default")
_LINEAR_OPS = ("addmm.default", "mm.default", "linear.default")


@dataclass(frozen=True)
class QSpec:
    """Parameters of an integer tensor: ``real = (q - zero_point) * scale``, ``q`` in
    ``[0, 2^bits - 1]`` (stored as uint8)."""

    scale: float
    zero_point: int
    bits: int

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @classmethod
    def from_range(cls, lo: float, hi: float, bits: int = 8) -> QSpec:
        from tvm_mpq.quant.calibration import act_qparams

        s, z = act_qparams(lo, hi, bits)
        return cls(float(np.float32(s)), int(z), bits)

    def code(self, real: float) -> int:
        """The code of a real value (float32 true division, round half even, no clamp)."""
        return int(np.rint(np.float32(real) / np.float32(self.scale))) + self.zero_point


@dataclass
class IntNode:
    """One integer-domain node of the graph (or a quantized layer with a float output).

    Attributes:
        name: the fx node name.
        kind: ``"input"``, ``"layer"``, ``"add"``, ``"mean"``, ``"clamp"`` or ``"alias"`` (a
            shape-only op, or an activation folded into its producer's clamp).
        src: the fx names of its tensor inputs.
        base: the node whose codes this one holds (itself unless an alias).
        spec: its output parameters; None for a layer whose output is float.
        lo, hi: the clamp of its output codes.
        layer: the torch module name (kind ``"layer"``).
        dims, keepdim: of a ``mean``.
    """

    name: str
    kind: str
    src: tuple[str, ...] = ()
    base: str = ""
    spec: QSpec | None = None
    lo: int = 0
    hi: int = 0
    layer: str = ""
    dims: tuple[int, ...] = ()
    keepdim: bool = False


@dataclass
class IntegerProgram:
    """The integer-only execution of one exported graph (see the module docstring).

    ``nodes`` holds every integer node and every quantized layer (by fx node name);
    ``layer_nodes`` maps module names to their fx node; ``input_spec`` is the user input's
    spec when the program takes integer input.
    """

    nodes: dict[str, IntNode] = field(default_factory=dict)
    layer_nodes: dict[str, str] = field(default_factory=dict)
    input_name: str = ""
    input_spec: QSpec | None = None
    output_spec: QSpec | None = None

    def is_int(self, name: str) -> bool:
        """Whether fx node ``name`` produces integer codes."""
        n = self.nodes.get(name)
        return n is not None and n.spec is not None

    def spec(self, name: str) -> QSpec:
        n = self.nodes[name]
        assert n.spec is not None, name
        return n.spec


# ---- the analysis ------------------------------------------------------------------------


def _op(node: Any) -> str:
    return node.target.__name__ if node.op == "call_function" else node.op


def _tensor_args(node: Any) -> list[Any]:
    import torch.fx

    return [a for a in node.args if isinstance(a, torch.fx.Node)]


def _shape(node: Any) -> tuple[int, ...] | None:
    v = node.meta.get("val")
    return tuple(int(d) for d in v.shape) if v is not None and hasattr(v, "shape") else None


def layer_input(node: Any) -> Any:
    """The activation input (an fx node) of a conv / linear call site."""
    return node.args[1] if _op(node) == "addmm.default" else node.args[0]


def _kind(node: Any, layers: dict[str, str], user_input: str) -> str | None:
    """The integer-capable kind of an fx node, or None (a float op)."""
    op = _op(node)
    if node.op == "placeholder":
        return "input" if node.name == user_input else None
    if node.op != "call_function":
        return None
    if node.name in layers:
        return "layer"
    if op in _PASS_OPS:
        return "alias"
    if op in _CLAMP_OPS:
        return "clamp"
    if op == "add.Tensor":
        a = node.args
        same = len(a) == 2 and all(hasattr(x, "meta") for x in a) and \
            _shape(a[0]) == _shape(a[1]) == _shape(node)
        return "add" if same and node.kwargs.get("alpha", 1) == 1 else None
    if op == "mean.dim":
        x = node.args[0]
        shape = _shape(x)
        dims = {d % 4 for d in node.args[1]} if shape and len(shape) == 4 else set()
        return "mean" if dims == {2, 3} else None
    return None


def is_activation(node: Any) -> bool:
    """Whether an fx node is a ReLU / ReLU6 / hardtanh / clamp."""
    return _op(node) in _CLAMP_OPS


def is_cast(node: Any) -> bool:
    """Whether an fx node is a dtype conversion (integer input codes read as float)."""
    return _op(node) == "_to_copy.default"


def _clamp_range(node: Any) -> tuple[float, float]:
    op = _op(node)
    if op == "relu.default":
        return 0.0, math.inf
    if op == "relu6.default":
        return 0.0, 6.0
    if op == "hardtanh.default":
        a = list(node.args) + [-1.0, 1.0][len(node.args) - 1:]
        return float(a[1]), float(a[2])
    lo, hi = (list(node.args) + [None, None])[1:3]
    lo, hi = node.kwargs.get("min", lo), node.kwargs.get("max", hi)
    return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))


def clamp_codes(spec: QSpec, lo_real: float = -math.inf, hi_real: float = math.inf) -> tuple[int,
                                                                                             int]:
    """Code bounds of ``clamp(x, lo_real, hi_real)`` in ``spec``, within ``[0, qmax]``."""
    lo = 0 if lo_real == -math.inf else max(0, spec.code(lo_real))
    hi = spec.qmax if hi_real == math.inf else min(spec.qmax, spec.code(hi_real))
    return min(lo, spec.qmax), max(hi, min(lo, spec.qmax))


def build_program(graph: Any, layer_names: dict[str, str], qparams: Any, *,
                  integer_io: bool = False, user_input: str | None = None) -> IntegerProgram:
    """Decide the domain and spec of every node of a decomposed ``torch.export`` graph.

    Args:
        graph: the fx graph (``ExportedProgram.graph``) of the BN-folded model.
        layer_names: fx node name -> torch module name of the plan's quantized layers.
        qparams: their :class:`~tvm_mpq.quant.qparams.QuantParams`; ``qparams.tensors``
            must hold the observed range of every value that needs its own parameters.
        integer_io: the program takes input codes and returns output codes.
        user_input: the fx name of the model input (default: the last placeholder).

    Raises:
        ValueError: a needed tensor range is missing (recalibrate), or ``integer_io`` with an
            input or output that is not integer under this plan.
    """
    nodes = list(graph.nodes)
    if user_input is None:
        user_input = [n.name for n in nodes if n.op == "placeholder"][-1]
    kinds = {n.name: _kind(n, layer_names, user_input) for n in nodes}
    can = _forward_can_int(nodes, kinds, integer_io)
    is_int = _backward_demand(nodes, kinds, can, integer_io)
    prog = IntegerProgram(layer_nodes={v: k for k, v in layer_names.items()},
                          input_name=user_input)
    _make_nodes(prog, nodes, kinds, is_int, layer_names)
    _assign_specs(prog, nodes, qparams)
    out = [n for n in nodes if n.op == "output"][0]
    outs = [a for a in _flat(out.args) if hasattr(a, "name")]
    if integer_io:
        if user_input not in prog.nodes or prog.nodes[user_input].spec is None:
            raise ValueError("integer_io=True needs the model input read by quantized layers "
                             "(its first layer is fp32 in this plan)")
        bad = [a.name for a in outs if not prog.is_int(a.name)]
        if bad:
            raise ValueError(f"integer_io=True needs integer outputs; {bad} are float in this "
                             "plan (the last layer is fp32?)")
        prog.input_spec = prog.spec(user_input)
        prog.output_spec = prog.spec(outs[0].name)
    elif any(prog.is_int(a.name) for a in outs):
        raise ValueError("a model output is also read by integer operators; compile it with "
                         "integer_io=True (or use the float glue)")
    return prog


def _flat(args: Any) -> list[Any]:
    if isinstance(args, (list, tuple)):
        return [x for a in args for x in _flat(a)]
    return [args]


def _forward_can_int(nodes: list[Any], kinds: dict[str, str | None], integer_io: bool) -> dict:
    can: dict[str, bool] = {}
    for n in nodes:
        k = kinds[n.name]
        if k is None:
            can[n.name] = False
        elif k == "input":
            can[n.name] = integer_io
        elif k == "layer":
            can[n.name] = True
        else:
            srcs = _tensor_args(n)[: 2 if k == "add" else 1]
            can[n.name] = bool(srcs) and all(can.get(a.name, False) for a in srcs)
    return can


def _backward_demand(nodes: list[Any], kinds: dict[str, str | None], can: dict[str, bool],
                     integer_io: bool) -> dict[str, bool]:
    is_int: dict[str, bool] = {}
    for n in reversed(nodes):
        if not can[n.name]:
            is_int[n.name] = False
            continue
        demand = False
        for u in n.users:
            k = kinds.get(u.name)
            if u.op == "output":
                demand |= integer_io
            elif k == "layer":
                demand |= layer_input(u) is n
            elif k is not None and k != "input":
                demand |= is_int.get(u.name, False)
        is_int[n.name] = demand or (kinds[n.name] == "input" and integer_io)
    return is_int


def _make_nodes(prog: IntegerProgram, nodes: list[Any], kinds: dict, is_int: dict,
                layer_names: dict[str, str]) -> None:
    """Create the program's nodes; fold an activation into a sole producer's clamp."""
    for n in nodes:
        k = kinds[n.name]
        if k == "layer":
            prog.nodes[n.name] = IntNode(n.name, "layer", (layer_input(n).name,), n.name,
                                         layer=layer_names[n.name])
            if is_int[n.name]:
                prog.nodes[n.name].spec = QSpec(0.0, 0, 8)  # placeholder until specs
            continue
        if not is_int[n.name]:
            continue
        srcs = tuple(a.name for a in _tensor_args(n)[: 2 if k == "add" else 1])
        node = IntNode(n.name, k, srcs, n.name, spec=QSpec(0.0, 0, 8))
        if k == "alias":
            node.base = prog.nodes[srcs[0]].base
        elif k == "clamp":
            src = prog.nodes[srcs[0]]
            producer = [x for x in nodes if x.name == src.name][0]
            if src.kind in ("layer", "add", "mean") and len(producer.users) == 1:
                node.kind, node.base = "alias", src.name  # folded into the producer's clamp
        elif k == "mean":
            node.dims = tuple(int(d) for d in n.args[1])
            node.keepdim = bool(n.args[2]) if len(n.args) > 2 else False
        prog.nodes[n.name] = node
    _fold_ranges = {}
    for n in nodes:
        node = prog.nodes.get(n.name)
        if node is not None and node.kind == "alias" and kinds[n.name] == "clamp":
            lo, hi = _clamp_range(n)
            plo, phi = _fold_ranges.get(node.base, (-math.inf, math.inf))
            _fold_ranges[node.base] = (max(lo, plo), min(hi, phi))
    prog._clamps = _fold_ranges  # type: ignore[attr-defined]
    prog._clamp_nodes = {n.name: _clamp_range(n) for n in nodes  # type: ignore[attr-defined]
                         if n.name in prog.nodes and prog.nodes[n.name].kind == "clamp"}
    prog._users = {n.name: [u.name for u in n.users] for n in nodes}  # type: ignore[attr-defined]


def _assign_specs(prog: IntegerProgram, nodes: list[Any], qparams: Any) -> None:
    """Choose every integer value's parameters and clamp (see the module docstring)."""
    users = prog._users  # type: ignore[attr-defined]
    ranges = getattr(qparams, "tensors", {}) or {}

    def readers(name: str) -> list[str]:
        out = []
        for u in users.get(name, []):
            un = prog.nodes.get(u)
            if un is not None and un.kind == "alias":
                out += readers(u)
            elif u in prog.nodes or u == "output":
                out.append(u)
        return out

    def last_alias(name: str) -> str:
        for u in users.get(name, []):
            un = prog.nodes.get(u)
            if un is not None and un.kind == "alias" and un.base == prog.nodes[name].base:
                return last_alias(u)
        return name

    for n in nodes:
        node = prog.nodes.get(n.name)
        if node is None or node.spec is None:
            continue
        if node.kind == "alias":
            node.spec = prog.nodes[node.base].spec
            node.lo, node.hi = prog.nodes[node.base].lo, prog.nodes[node.base].hi
            continue
        if node.kind == "clamp":
            src = prog.nodes[node.src[0]]
            node.spec = src.spec
            assert node.spec is not None
            node.lo, node.hi = clamp_codes(node.spec, *prog._clamp_nodes[n.name])  # type: ignore
            continue
        rd = readers(n.name)
        specs = {_layer_spec(qparams[prog.nodes[r].layer]) for r in rd
                 if r in prog.nodes and prog.nodes[r].kind == "layer"}
        if rd and len(specs) == 1 and all(r in prog.nodes and prog.nodes[r].kind == "layer"
                                          for r in rd):
            node.spec = specs.pop()
        else:
            key = last_alias(n.name)
            if key not in ranges:
                raise ValueError(f"no observed range for tensor {key!r} (integer-only inference "
                                 "needs QuantParams.tensors; recalibrate with this version)")
            node.spec = QSpec.from_range(*ranges[key], bits=8)
        node.lo, node.hi = clamp_codes(node.spec, *prog._clamps.get(n.name,  # type: ignore
                                                                     (-math.inf, math.inf)))


def _layer_spec(lq: Any) -> QSpec:
    return QSpec(float(np.float32(lq.a_scale)), int(lq.a_zero_point), int(lq.a_bits))


# ---- the fixed-point parameters (single-rounding dyadic, tvm_mpq.quant.dyadic) ----------


def _f64(v: float) -> np.float64:
    return np.float64(np.float32(v))


def layer_params(lq: Any, out: QSpec) -> dict[str, np.ndarray]:
    """A quantized layer's epilogue on the kernel's raw accumulator ``acc`` (the sum of
    ``a_q * w_q`` with padding ``z_a``): ``requant(acc - corr[k] + bias_q[k], s_a s_w[k] /
    s_out)`` as dyadic ``m``, ``k``, ``t`` (:func:`~tvm_mpq.quant.dyadic.dyadic_params`), with
    ``bias_q = round(bias / (s_a s_w[k]))`` and ``corr = z_a * sum(w_q[k])`` (also returned:
    ``acc - corr`` is the centred sum)."""
    s_in = _f64(lq.a_scale) * lq.w_scale.astype(np.float64)
    bias = np.zeros(len(s_in), np.int64)
    if lq.bias is not None:
        ok = s_in > 0
        bias[ok] = np.rint(lq.bias.astype(np.float64)[ok] / s_in[ok]).astype(np.int64)
    w = lq.w_q.astype(np.int64).reshape(len(s_in), -1)
    corr = int(lq.a_zero_point) * w.sum(axis=1)
    total = bias - corr
    if np.any(np.abs(total) >= 2**31):
        raise ValueError(f"layer {lq.name!r}: quantized bias outside the int32 range")
    m, k, t = dyadic_params(s_in / _f64(out.scale), total, out.zero_point)
    return {"m": m, "k": k, "t": t, "corr": corr}


def requant_params(src: QSpec, dst: QSpec) -> tuple[int, int, int]:
    """``(m, k, t)`` of a spec change of codes: ``requant(q - z_src, s_src / s_dst) + z_dst``."""
    m, k, t = dyadic_params(_f64(src.scale) / _f64(dst.scale), -src.zero_point, dst.zero_point)
    return int(m), int(k), int(t)


def add_params(a: QSpec, b: QSpec, out: QSpec) -> tuple[int, int, int, int]:
    """``(ma, mb, k, t)`` of an integer add of codes: ``(qa * ma + qb * mb + k) >> t`` is
    ``round_half_up((qa - za) s_a / s_out + (qb - zb) s_b / s_out) + z_out``: one rounding,
    both multipliers on the larger one's shift."""
    ra, rb = _f64(a.scale) / _f64(out.scale), _f64(b.scale) / _f64(out.scale)
    _, _, t = dyadic_params(max(ra, rb))
    t = int(t)
    ma, mb = int(np.rint(ra * 2.0**t)), int(np.rint(rb * 2.0**t))
    k = -(a.zero_point * ma + b.zero_point * mb) + (1 << (t - 1)) + (out.zero_point << t)
    return ma, mb, k, t


def mean_params(src: QSpec, out: QSpec, count: int) -> tuple[int, int, int]:
    """``(m, k, t)`` of an integer mean over ``count`` codes:
    ``requant(sum(q) - count * z_src, s_src / (count s_out)) + z_out``."""
    m, k, t = dyadic_params(_f64(src.scale) / (count * _f64(out.scale)),
                            -count * src.zero_point, out.zero_point)
    return int(m), int(k), int(t)
