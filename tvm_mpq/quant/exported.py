"""Running the decomposed ``torch.export`` graph of a model in torch, node by node: the same
graph (and fx node names) the Relax importer converts. Integer-only inference observes every
value's float range on it (:func:`observe_tensor_ranges`) and its torch reference interprets
it (:mod:`tvm_mpq.quant.intref`)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["export_graph", "exported_inputs", "integer_input_model", "observe_tensor_ranges"]




def exported_inputs(ep: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """The flat inputs of ``ep.graph_module`` (parameters, buffers, constants, then ``x``)."""
    from torch.export.graph_signature import InputKind

    out = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            out.append(x)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            out.append(ep.state_dict[spec.target] if spec.target in ep.state_dict
                       else ep.constants[spec.target])
        else:
            out.append(ep.constants[spec.target])
    return out


def export_graph(model: torch.nn.Module, x: torch.Tensor) -> Any:
    """The decomposed ``torch.export`` program of ``model`` at ``x``'s shape (as the importer
    exports it, so fx node names agree)."""
    with torch.no_grad():
        return torch.export.export(model.eval(), (x,)).run_decompositions()


def integer_input_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a BN-folded copy, changed in place) made to take its input as uint8 codes:
    ``forward(x)`` runs the original forward on ``x.float()``, so the exported graph reads a
    uint8 input through one ``_to_copy`` node (which integer-only inference skips: the codes
    go straight to the first layer). Module names and fx node names stay the same."""
    base = type(model)

    def forward(self, x):
        return base.forward(self, x.to(torch.float32))

    model.__class__ = type(f"IntegerInput{base.__name__}", (base,), {"forward": forward})
    return model


def observe_tensor_ranges(folded: torch.nn.Module, batches: Any,
                          max_batches: int | None = None) -> dict[str, tuple[float, float]]:
    """Min / max of every node's output (and the model input) of the float model over
    ``batches``, keyed by fx node name: the ranges integer values without a consumer layer's
    parameters are quantized with (plan-independent, like TFLite's calibration)."""
    import torch.fx

    ranges: dict[str, list[float]] = {}
    eps: dict[tuple[int, ...], Any] = {}

    class _Watch(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if isinstance(v, torch.Tensor) and v.is_floating_point() and \
                    n.op in ("call_function", "placeholder") and v.numel():
                r = ranges.setdefault(n.name, [math.inf, -math.inf])
                r[0], r[1] = min(r[0], float(v.min())), max(r[1], float(v.max()))
            return v

    with torch.no_grad():
        for i, x in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            shape = tuple(x.shape)
            if shape not in eps:
                eps[shape] = export_graph(folded, x)
            ep = eps[shape]
            _Watch(ep.graph_module).run(*exported_inputs(ep, x.float()))
    params = {s.arg.name for s in next(iter(eps.values())).graph_signature.input_specs
              if s.kind.name != "USER_INPUT"} if eps else set()
    return {k: (v[0], v[1]) for k, v in ranges.items() if k not in params}
