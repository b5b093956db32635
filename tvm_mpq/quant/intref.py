"""The torch reference of integer-only inference: ``fake_quant(..., integer_only=True)``.

:class:`IntegerReference` runs the decomposed ``torch.export`` graph of the BN-folded model
node by node and executes every node of the :class:`~tvm_mpq.quant.integer.IntegerProgram`
with exact integer arithmetic (int64 tensors, float64 convolutions of integers below 2^53,
:func:`~tvm_mpq.quant.dyadic.requantize_dyadic_torch`), the other nodes in float32 as torch does.
The compiled model (:func:`tvm_mpq.compile`, integer glue) computes the same integers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from tvm_mpq.quant import exported as E
from tvm_mpq.quant import integer as I
from tvm_mpq.quant.dyadic import requantize_dyadic_torch

__all__ = ["Codes", "IntegerReference"]


class Codes:
    """Integer codes (an int64 tensor) with their :class:`~tvm_mpq.quant.integer.QSpec`."""

    def __init__(self, q: torch.Tensor, spec: I.QSpec):
        self.q, self.spec = q, spec

    def dequantize(self) -> torch.Tensor:
        return (self.q - self.spec.zero_point).float() * torch.tensor(self.spec.scale,
                                                                      dtype=torch.float32)


def quantize(x: torch.Tensor, spec: I.QSpec) -> torch.Tensor:
    """Float32 to codes as the compiled quantize pass: true division, round half even."""
    q = torch.round(x.float() / torch.tensor(spec.scale, dtype=torch.float32))
    return torch.clamp(q + spec.zero_point, 0, spec.qmax).to(torch.int64)


def respec(c: Codes, dst: I.QSpec) -> Codes:
    """Integer spec change (identity when the specs are equal)."""
    if c.spec == dst:
        return c
    return Codes(requantize_dyadic_torch(c.q, *I.requant_params(c.spec, dst), 0, dst.qmax), dst)


#: float32 sums of integers are exact while every partial sum stays below 2^24
_EXACT = 2**24


def exact_sum(x: torch.Tensor, w_q: np.ndarray, module: nn.Module) -> torch.Tensor:
    """The exact integer conv2d / linear ``sum(x * w_q)`` (int64) of integer tensors, fast.

    float32 matrix products (im2col + GEMM: no Winograd or FFT, whose transforms round) are
    exact while ``sum |x| |w|`` over one output stays below 2^24; when it might not, ``x``
    is split into ``16 * hi + lo`` (``lo`` in ``[0, 16)``) and the two exact products are
    combined in int64.
    """
    bound = int(x.abs().max()) * int(np.abs(w_q.astype(np.int64)).reshape(len(w_q), -1)
                                     .sum(axis=1).max()) if x.numel() else 0
    w = torch.from_numpy(w_q.astype(np.float32))
    if bound >= _EXACT and int(x.abs().max()) > 1:  # each split divides |x| by 16
        hi = torch.div(x, 16, rounding_mode="floor")
        return exact_sum(hi, w_q, module) * 16 + exact_sum(x - 16 * hi, w_q, module)
    if bound >= _EXACT or (isinstance(module, nn.Conv2d) and (
            isinstance(module.padding, str) or module.dilation != (1, 1))):
        return _double_sum(x, w_q, module)  # beyond float32 (huge layers) or unusual convs
    xf = x.float()
    if not isinstance(module, nn.Conv2d):
        return torch.round(xf.reshape(-1, xf.shape[-1]) @ w.t()).to(torch.int64)
    return torch.round(_conv_f32(xf, w, module)).to(torch.int64)


def _conv_f32(x: torch.Tensor, w: torch.Tensor, m: nn.Conv2d) -> torch.Tensor:
    """conv2d as exact float32 products: pointwise as a matrix product, depthwise as shifted
    multiply-adds, anything else through im2col."""
    n, _, h, wd = x.shape
    k, cg, kh, kw = w.shape
    g, (sh, sw), (ph, pw) = m.groups, m.stride, m.padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    if kh == kw == 1 and ph == pw == 0:
        xs = x[:, :, ::sh, ::sw].reshape(n, g, cg, oh * ow)
        return torch.einsum("gkc,ngcl->ngkl", w.view(g, k // g, cg), xs).reshape(n, k, oh, ow)
    if cg == 1 and k == g:  # depthwise: kh * kw shifted slices
        xp = F.pad(x, (pw, pw, ph, ph))
        out = torch.zeros(n, k, oh, ow)
        for i in range(kh):
            for j in range(kw):
                out += xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] * \
                    w[:, 0, i, j].view(1, -1, 1, 1)
        return out
    cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw)).view(n, g, cg * kh * kw, -1)
    out = torch.einsum("ngpl,gkp->ngkl", cols, w.view(g, k // g, cg * kh * kw))
    return out.reshape(n, k, oh, ow)


def _double_sum(x: torch.Tensor, w_q: np.ndarray, m: nn.Module) -> torch.Tensor:
    w = torch.from_numpy(w_q.astype(np.float64))
    if isinstance(m, nn.Conv2d):
        acc = F.conv2d(x.double(), w, None, m.stride, m.padding, m.dilation, m.groups)
    else:
        acc = F.linear(x.double().reshape(-1, x.shape[-1]), w)
    return torch.round(acc).to(torch.int64)


class _Interp(torch.fx.Interpreter):
    def __init__(self, ep: Any, prog: I.IntegerProgram, qparams: Any,
                 modules: dict[str, nn.Module], integer_io: bool):
        super().__init__(ep.graph_module)
        self.prog, self.qparams, self.modules = prog, qparams, modules
        self.integer_io = integer_io

    def run_node(self, n: torch.fx.Node) -> Any:
        node = self.prog.nodes.get(n.name)
        if n.op == "placeholder" and node is not None and node.spec is not None:
            x = super().run_node(n)
            return Codes(x.to(torch.int64), node.spec) if self.integer_io else \
                Codes(quantize(x, node.spec), node.spec)
        if n.op == "output":
            return super().run_node(n)
        if node is None:
            if n.op == "call_function" and not n.users:  # e.g. _assert_tensor_metadata
                return None
            return self._float(n)
        if node.kind == "layer":
            return self._layer(n, node)
        args = [self.env[a] for a in n.args if isinstance(a, torch.fx.Node)]
        if node.kind == "alias":  # a folded activation (the producer clamped) or a shape op
            c = args[0]
            if I.is_activation(n) or I.is_cast(n):
                return c
            return Codes(self.call_function(n.target, (c.q, *n.args[1:]), n.kwargs), c.spec)
        if node.kind == "clamp":
            return Codes(args[0].q.clamp(node.lo, node.hi), node.spec)
        if node.kind == "add":
            return self._add(args[0], args[1], node)
        if node.kind == "mean":
            return self._mean(args[0], node)
        raise AssertionError(node.kind)

    def _float(self, n: torch.fx.Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        conv = torch.fx.node.map_aggregate

        def f(v):
            return v.dequantize() if isinstance(v, Codes) else v

        return getattr(self, n.op)(n.target, conv(args, f), conv(kwargs, f))

    def _layer(self, n: torch.fx.Node, node: I.IntNode) -> Any:
        lq = self.qparams[node.layer]
        spec = I.QSpec(float(np.float32(lq.a_scale)), int(lq.a_zero_point), int(lq.a_bits))
        src = self.env[I.layer_input(n)]
        c = respec(src, spec) if isinstance(src, Codes) else Codes(quantize(src, spec), spec)
        acc = exact_sum(c.q - spec.zero_point, lq.w_q, self.modules[node.layer])
        if node.spec is None:  # float output: the dequantize epilogue
            shape = [1] * acc.dim()
            shape[1] = -1
            scale = (torch.tensor(lq.a_scale, dtype=torch.float32) *
                     torch.from_numpy(lq.w_scale.astype(np.float32))).float()
            y = acc.float() * scale.view(shape)
            return y if lq.bias is None else y + torch.from_numpy(lq.bias).view(shape)
        p = I.layer_params(lq, node.spec)
        raw = acc + torch.from_numpy(p["corr"]).view(1, -1, *[1] * (acc.dim() - 2))
        q = requantize_dyadic_torch(raw, p["m"], p["k"], p["t"], node.lo, node.hi, ch_axis=1)
        return Codes(q, node.spec)

    def _add(self, a: Codes, b: Codes, node: I.IntNode) -> Codes:
        assert node.spec is not None
        ma, mb, k, t = I.add_params(a.spec, b.spec, node.spec)
        q = torch.clamp((a.q * ma + b.q * mb + k) >> t, node.lo, node.hi)
        return Codes(q, node.spec)

    def _mean(self, a: Codes, node: I.IntNode) -> Codes:
        assert node.spec is not None
        count = int(a.q.shape[2] * a.q.shape[3])
        acc = a.q.sum(dim=(2, 3), keepdim=node.keepdim)
        q = requantize_dyadic_torch(acc, *I.mean_params(a.spec, node.spec, count), node.lo,
                                    node.hi)
        return Codes(q, node.spec)


class IntegerReference(nn.Module):
    """Integer-only reference of a plan (see the module docstring).

    Call it on float inputs (any batch size; the graph is exported once per input shape) to
    get float outputs, or with ``integer_io=True`` on input codes (``input_quant``) to get
    output codes (``output_quant``).
    """

    def __init__(self, folded: nn.Module, layer_plan: dict[str, Any], qparams: Any,
                 integer_io: bool = False, input_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.folded = (E.integer_input_model(folded) if integer_io else folded).eval()
        self.quantized = set(layer_plan)
        self.qparams, self.integer_io = qparams, integer_io
        self._cache: dict[tuple[int, ...], tuple[Any, I.IntegerProgram]] = {}
        if input_shape is not None:
            self._program(input_shape)

    def _program(self, shape: tuple[int, ...]) -> tuple[Any, I.IntegerProgram]:
        if shape not in self._cache:
            from tvm_mpq.frontend.importer import layer_call_sites

            x = torch.zeros(shape, dtype=torch.uint8 if self.integer_io else torch.float32)
            ep = E.export_graph(self.folded, x)
            sites = {k: v for k, v in layer_call_sites(ep, self.folded).items()
                     if v in self.quantized}
            prog = I.build_program(ep.graph, sites, self.qparams, integer_io=self.integer_io)
            self._cache[shape] = (ep, prog)
        return self._cache[shape]

    @property
    def program(self) -> I.IntegerProgram:
        """The program of the first input shape seen."""
        return next(iter(self._cache.values()))[1]

    @property
    def input_quant(self) -> tuple[float, int] | None:
        s = self.program.input_spec
        return None if s is None else (s.scale, s.zero_point)

    @property
    def output_quant(self) -> tuple[float, int] | None:
        s = self.program.output_spec
        return None if s is None else (s.scale, s.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ep, prog = self._program(tuple(x.shape))
        it = _Interp(ep, prog, self.qparams, dict(self.folded.named_modules()), self.integer_io)
        with torch.no_grad():
            out = it.run(*E.exported_inputs(ep, x.to(torch.uint8) if self.integer_io else x.float()))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.q if isinstance(out, Codes) else out
