"""Each layer's neighbours in the graph, as far as the passes the integer glue adds around it
depend on them (:class:`~tvm_mpq.measure.overhead.LayerContext`): what produces its input,
the activations before and after it, global pooling, the model output."""

from __future__ import annotations

from typing import Any

from tvm_mpq.measure.overhead import LayerContext

__all__ = ["layer_contexts"]

#: shape-only fx ops between a producer and its reader (the integer glue keeps codes through)
_PASS = ("view", "_unsafe_view", "clone", "reshape", "flatten", "squeeze", "unsqueeze",
         "alias", "detach", "contiguous", "dropout")


def _op(n: Any) -> str:
    return n.target.__name__.split(".")[0] if n.op == "call_function" else n.op


def _kind(n: Any) -> str:
    """``"act"``, ``"pass"`` (shape only), ``"pool"`` (a global spatial mean) or the op name."""
    from tvm_mpq.quant import integer as I

    if I.is_activation(n):
        return "act"
    op = _op(n)
    if op == "mean" and n.args and hasattr(n.args[0], "meta"):
        shape = n.args[0].meta.get("val")
        dims = {int(d) % 4 for d in n.args[1]} if shape is not None and shape.dim() == 4 else set()
        return "pool" if dims == {2, 3} else op
    return "pass" if op in _PASS else op


def _act_of(n: Any) -> str:
    """How TVM lowers an activation in float: ``relu``, or a ``clip``."""
    return "relu" if n.target.__name__.startswith("relu.") else "clip"


def _walk_back(value: Any) -> tuple[Any, str | None, bool]:
    """From a value (a layer's input) back through activations and shape ops: the
    producer, the activation passed and whether every value on the way has one reader."""
    src, act, single = value, None, True
    while _kind(src) in ("act", "pass"):
        act = _act_of(src) if _kind(src) == "act" else act
        single &= len(src.users) == 1
        src = src.args[0]
    return src, act, single and len(src.users) == 1


def _walk_forward(node: Any) -> tuple[Any, str | None]:
    """From a layer through the activations and shape ops its only reader chain applies."""
    y, act = node, None
    while len(y.users) == 1 and _kind(next(iter(y.users))) in ("act", "pass"):
        y = next(iter(y.users))
        act = _act_of(y) if _kind(y) == "act" else act
    return y, act


def _context(node: Any, sites: dict[str, str]) -> LayerContext:
    from tvm_mpq.quant import integer as I

    src, act_in, single = _walk_back(I.layer_input(node))
    pool_in = None
    if single and _kind(src) == "pool":  # pooled codes of another layer's output
        pool_in = tuple(int(d) for d in src.args[0].meta["val"].shape)
        src, act_in, single = _walk_back(src.args[0])
    source = ("input" if src.op == "placeholder" else "shared" if not single else
              ("pool" if pool_in else "layer") if src.name in sites else "codes")
    y, act = _walk_forward(node)
    pooled = len(y.users) == 1 and _kind(next(iter(y.users))) == "pool"
    if pooled:
        y, _ = _walk_forward(next(iter(y.users)))
    output = any(u.op == "output" for u in y.users)
    return LayerContext(source, act_in if source in ("layer", "pool") else None, act, output,
                        pool_in if source == "pool" else None, pooled)


def layer_contexts(model: Any, example: Any) -> dict[str, LayerContext]:
    """The :class:`~tvm_mpq.measure.overhead.LayerContext` of every quantizable layer of
    ``model`` (BN-folded here), by module name, from its decomposed ``torch.export`` graph
    at ``example``'s shape (the graph :func:`tvm_mpq.compile` converts)."""
    from tvm_mpq.frontend.importer import layer_call_sites
    from tvm_mpq.quant.exported import export_graph
    from tvm_mpq.quant.folding import fold_bn

    folded = fold_bn(model).eval()
    ep = export_graph(folded, example)
    sites = layer_call_sites(ep, folded)
    nodes = {n.name: n for n in ep.graph.nodes}
    return {layer: _context(nodes[name], sites) for name, layer in sites.items()}
