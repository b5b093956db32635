"""The import hook of :func:`tvm_mpq.compile`: what the Relax graph gets at each operator.

Planned conv2d / linear call sites become ``call_tir`` of the planned integer kernel (a
PrimFunc of :mod:`tvm_mpq.schedules`, pre-packed weights as constants, padding filled with
the input zero point). Around it:

* ``glue="integer"`` (default, issue 11): the kernel's int32 accumulator is requantized in
  the layer's epilogue (:func:`~tvm_mpq.compiler.dyadic_ops.requantize_dyadic_te`) to the
  codes its consumers read (:class:`~tvm_mpq.quant.integer.IntegerProgram`); residual adds,
  global average pooling and activations between quantized layers run on codes
  (:mod:`tvm_mpq.compiler.int_ops`). A float value is quantized once where it enters integer
  code, and codes are dequantized once where a float operator (an fp32 layer, the float
  output) reads them. Equals ``fake_quant(..., integer_only=True)`` bit for bit. Where
  :func:`~tvm_mpq.schedules.epilogue.fuses` says so, the epilogue runs inside the kernel
  (one PrimFunc storing the codes; the epilogue's constants follow the weight).
* ``glue="float"`` (for comparison): quantize the float input, run the kernel, dequantize
  ``float32(acc - z * sum_w[k]) * float32(s_a * s_w[k]) + bias[k]``; everything between
  layers stays float. Equals ``fake_quant(..., integer_accumulate=True)``.

fp32 layers run the ``fp32`` variant kernel (what the cost model measured) plus a bias pass,
or TVM's own lowering (``fp32_layers="relax"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_mpq.compiler.dyadic_ops import (
    dyadic_consts,
    dyadic_form,
    requantize_dyadic_te,
    with_requantize,
)
from tvm_mpq.compiler.int_ops import (
    add_codes_te,
    clamp_codes_te,
    dequantize_codes_te,
    mean_codes_te,
    quantize_codes_te,
    respec_codes_te,
)
from tvm_mpq.compiler.ops import bias_te, dequantize_te, quantize_te
from tvm_mpq.frontend import LayerInfo
from tvm_mpq.quant import integer as I
from tvm_mpq.quant.plan import QuantPlan, resolve_variant
from tvm_mpq.quant.qparams import QuantParams
from tvm_mpq.schedules import DenseWorkload, KernelDef, make_kernel
from tvm_mpq.schedules.epilogue import fused_schedule, fuses
from tvm_mpq.schedules.workload import workload_from_layer
from tvm_mpq.targets import Profile

__all__ = ["GLUES", "Emitter", "QuantizedSite", "ScheduleProvider"]

#: schedule_for(kernel) -> scheduled IRModule (e.g. a validated MetaSchedule record) or None
ScheduleProvider = Callable[[KernelDef], "tvm.IRModule | None"]
#: how values between quantized layers are computed (see the module docstring)
GLUES = ("integer", "float")


@dataclass
class QuantizedSite:
    """What the compiler emitted for one quantized layer."""

    name: str
    kernel: KernelDef
    func_name: str
    scheduled: bool


def _input_var(node: Any, importer: Any) -> Any:
    return importer.env[I.layer_input(node)]


class Emitter:
    """The node hook: replaces planned call sites with quantized kernels and, with integer
    glue, the operators between them with integer ones."""

    def __init__(self, plan: QuantPlan, qparams: QuantParams, profile: Profile,
                 schedule_for: ScheduleProvider | None,
                 modules: dict[str, torch.nn.Module] | None, glue: str = "integer",
                 integer_io: bool = False, model: torch.nn.Module | None = None):
        self.plan, self.qparams, self.profile = plan, qparams, profile
        self.schedule_for = schedule_for
        self.modules = modules  # None: fp32 layers keep TVM's default lowering
        self.model = model  # the BN-folded model (integer glue: finds the call sites)
        self.glue, self.integer_io = glue, integer_io
        self.xlen = profile.word_bits  # picks the dyadic rescale's code (dyadic_ops)
        self.program: I.IntegerProgram | None = None
        self.sites: list[QuantizedSite] = []
        self.fp32_sites: list[QuantizedSite] = []
        self._funcs: dict[str, Any] = {}  # structural key -> GlobalVar (dedup identical kernels)
        self._deq: dict[str, Any] = {}  # fx name -> its dequantized Relax var

    # ---- hooks ---------------------------------------------------------------------------
    def on_export(self, ep: Any) -> None:
        """Build the integer program of the exported graph (integer glue only)."""
        if self.glue != "integer":
            return
        from tvm_mpq.frontend.importer import layer_call_sites

        quantized = set(self.plan.quantized_layers())
        assert self.model is not None, "integer glue needs the folded model"
        sites = {k: v for k, v in layer_call_sites(ep, self.model).items()
                 if v in quantized}
        self.program = I.build_program(ep.graph, sites, self.qparams, integer_io=self.integer_io)

    def node_hook(self, node: Any, importer: Any, info: LayerInfo | None,
                  default: Callable[[], Any]) -> Any:
        if self.program is None:  # float glue
            return self.float_glue_layer(info, node, importer) if info is not None else None
        pn = self.program.nodes.get(node.name)
        if pn is None and not node.users:  # e.g. _assert_tensor_metadata: nothing to convert
            return default()
        if pn is None:  # a float operator: dequantize its integer inputs once
            with self._dequantized_inputs(node, importer):
                out = self._fp32(info, node, importer) if info is not None and \
                    info.quantizable else None
                return out if out is not None else default()
        if pn.kind == "layer":
            assert info is not None
            return self._int_layer(info, node, importer, pn)
        bb = importer.block_builder
        srcs = [importer.env[a] for a in node.args if hasattr(a, "meta")]
        if pn.kind == "alias":
            if I.is_activation(node) or I.is_cast(node):
                return srcs[0]  # folded into the producer's clamp / codes stay codes
            return default()  # a shape op, on codes
        if pn.kind == "clamp":
            return bb.emit_te(lambda q: clamp_codes_te(q, pn.lo, pn.hi), srcs[0],
                              primfunc_name_hint="clamp")
        specs = [self.program.spec(a.name) for a in node.args if hasattr(a, "meta")]
        assert pn.spec is not None
        if pn.kind == "add":
            return bb.emit_te(lambda a, b: add_codes_te(a, b, specs[0], specs[1], pn.spec,
                                                        pn.lo, pn.hi, self.xlen),
                              srcs[0], srcs[1], primfunc_name_hint="add_codes")
        if pn.kind == "mean":
            return bb.emit_te(lambda q: mean_codes_te(q, specs[0], pn.spec, pn.lo, pn.hi,
                                                      pn.keepdim, self.xlen),
                              srcs[0], primfunc_name_hint="mean_codes")
        raise AssertionError(pn.kind)

    @contextmanager
    def _dequantized_inputs(self, node: Any, importer: Any) -> Iterator[None]:
        assert self.program is not None
        saved = {}
        for a in node.all_input_nodes:
            if self.program.is_int(a.name):
                if a.name not in self._deq:
                    spec = self.program.spec(a.name)
                    self._deq[a.name] = importer.block_builder.emit_te(
                        lambda q, spec=spec: dequantize_codes_te(q, spec), importer.env[a],
                        primfunc_name_hint="dequantize_codes")
                saved[a] = importer.env[a]
                importer.env[a] = self._deq[a.name]
        try:
            yield
        finally:
            importer.env.update(saved)

    # ---- layers --------------------------------------------------------------------------
    def _kernel_for(self, info: LayerInfo) -> tuple[KernelDef, Any]:
        cfg, qp = self.plan[info.name], self.qparams[info.name]
        cg = info.weight_shape[1] if info.kind == "conv2d" else None
        variant = cfg.variant or resolve_variant(cfg.w_bits, cfg.a_bits, self.profile.name, cg)
        if variant == "fp32":
            raise ValueError(f"layer {info.name!r}: variant 'fp32' needs fp32 bits in the plan, "
                             f"got w{cfg.w_bits}a{cfg.a_bits}")
        kd = make_kernel(workload_from_layer(info), variant, cfg.w_bits, cfg.a_bits,
                         pad_value=int(qp.a_zero_point), word_bits=self.profile.word_bits)
        return kd, qp

    def _int_layer(self, info: LayerInfo, node: Any, importer: Any, pn: I.IntNode) -> Any:
        assert self.program is not None
        bb = importer.block_builder
        kd, qp = self._kernel_for(info)
        spec_in = I.QSpec(float(np.float32(qp.a_scale)), int(qp.a_zero_point), int(qp.a_bits))
        src = I.layer_input(node)
        x = importer.env[src]
        if self.program.is_int(src.name):
            s = self.program.spec(src.name)
            xq = x if s == spec_in else bb.emit_te(
                lambda q: respec_codes_te(q, s, spec_in, self.xlen), x, primfunc_name_hint="respec")
        else:
            xq = bb.emit_te(lambda t: quantize_codes_te(t, spec_in), x,
                            primfunc_name_hint="quantize")
        w_q = qp.w_q.astype(np.int64)
        tuned = self._tuned(kd)
        if pn.spec is None:  # the output is read as float: dequantize in the epilogue
            acc, site = self._call_kernel(bb, kd, info.name, xq, w_q, tuned)
            self.sites.append(site)
            return self._dequantize(bb, acc, qp)
        p = I.layer_params(qp, pn.spec)
        form = dyadic_form(p["t"], self.xlen)
        values = dyadic_consts(p["m"], p["k"], p["t"], form)
        consts = [relax.const(c, str(c.dtype)) for c in values]  # int64 K: kept 64-bit
        lo, hi = pn.lo, pn.hi
        if tuned is None and fuses(kd, self.profile):  # a tuned schedule is for the kernel alone
            fused = with_requantize(kd, values, lo, hi, form)  # inside the kernel
            y, site = self._call_kernel(bb, fused, info.name, xq, w_q, None, consts)
            self.sites.append(site)
            return y
        acc, site = self._call_kernel(bb, kd, info.name, xq, w_q, tuned)
        self.sites.append(site)
        return bb.emit_te(lambda a, *c: requantize_dyadic_te(a, list(c), lo, hi, "uint8", 1, form),
                          acc, *consts, primfunc_name_hint="requantize")

    def float_glue_layer(self, info: LayerInfo, node: Any, importer: Any) -> Any:
        """A call site with the float glue: quantize, kernel, dequantize (None: unplanned)."""
        if not info.quantizable:
            return None
        if info.name not in self.plan or self.plan[info.name].is_fp32:
            return self._fp32(info, node, importer)
        kd, qp = self._kernel_for(info)
        bb = importer.block_builder
        xq = bb.emit_te(lambda t: quantize_te(t, qp), _input_var(node, importer),
                        primfunc_name_hint="quantize")
        acc, site = self._call_kernel(bb, kd, info.name, xq, qp.w_q.astype(np.int64),
                                      self._tuned(kd))
        self.sites.append(site)
        return self._dequantize(bb, acc, qp)

    @staticmethod
    def _dequantize(bb: Any, acc: Any, qp: Any) -> Any:
        w_q = qp.w_q.astype(np.int64)
        # zero-point correction: sum over the window of (a_q - z) * w = acc - z * sum(w)
        corr = (int(qp.a_zero_point) * w_q.reshape(len(w_q), -1).sum(axis=1)).astype(np.int32)
        scale = (np.float32(qp.a_scale) * qp.w_scale.astype(np.float32)).astype(np.float32)
        consts = [relax.const(corr), relax.const(scale)]
        if qp.bias is not None:
            consts.append(relax.const(qp.bias.astype(np.float32)))
        return bb.emit_te(dequantize_te, acc, *consts, primfunc_name_hint="dequantize")

    def _fp32(self, info: LayerInfo, node: Any, importer: Any) -> Any:
        """An fp32 layer as the ``fp32`` variant kernel + a bias pass (None: TVM's lowering)."""
        mod = self.modules.get(info.name) if self.modules is not None else None
        if not isinstance(mod, torch.nn.Conv2d | torch.nn.Linear):
            return None
        bb = importer.block_builder
        kd = make_kernel(workload_from_layer(info), "fp32", 8, 8, word_bits=self.profile.word_bits)
        w = mod.weight.detach().cpu().numpy().astype(np.float32)
        y, site = self._call_kernel(bb, kd, info.name, _input_var(node, importer), w,
                                    self._tuned(kd))
        if mod.bias is not None:
            bias = relax.const(mod.bias.detach().cpu().numpy().astype(np.float32))
            y = bb.emit_te(bias_te, y, bias, primfunc_name_hint="bias_add")
        self.fp32_sites.append(site)
        return y

    def _tuned(self, kd: KernelDef) -> tvm.IRModule | None:
        """The provided (tuned) schedule of ``kd``, or None."""
        return self.schedule_for(kd) if self.schedule_for is not None else None

    def _call_kernel(self, bb: Any, kd: KernelDef, name: str, x: Any, weight: np.ndarray,
                     scheduled: tvm.IRModule | None,
                     extra: list[Any] = ()) -> tuple[Any, QuantizedSite]:
        """``call_tir`` of kernel ``kd`` (with ``scheduled``, its :meth:`_tuned` schedule, else
        the default one) on ``x`` with the pre-packed ``weight`` as a constant (then
        ``extra``: its epilogue's constants); a dense layer runs as its 1x1 conv (reshapes)."""
        wl = kd.workload
        gv = self._kernel_gv(bb, kd, scheduled, name)
        if isinstance(wl, DenseWorkload):
            x = bb.emit(relax.op.reshape(x, (wl.m, wl.d, 1, 1)))
        w_arg = relax.const(np.ascontiguousarray(kd.prepare_weight(weight)))
        res = kd.result
        out_shape = [int(d) for d in res.shape]
        y = bb.emit(relax.call_tir(gv, [x, w_arg, *extra],
                                   relax.TensorType(out_shape, str(res.dtype))))
        if isinstance(wl, DenseWorkload):
            y = bb.emit(relax.op.reshape(y, wl.output_shape))
        return y, QuantizedSite(name, kd, gv.name_hint, scheduled is not None)

    def _kernel_gv(self, bb: Any, kd: KernelDef, scheduled: tvm.IRModule | None, name: str):
        key = f"{kd.describe()} pad{kd.pad_value} wb{kd.word_bits} {scheduled is not None}"
        if key in self._funcs:  # the same kernel (and epilogue) as an earlier layer
            return self._funcs[key]
        if kd.epilogue is not None:
            func = fused_schedule(kd, self.profile.name)["main"]
        elif scheduled is None:  # our default schedule for the profile, else the plain lowering
            from tvm_mpq.schedules.default_schedules import default_schedule

            default = default_schedule(kd, self.profile.name)
            func = default["main"] if default is not None else kd.prim_func("main")
        else:
            func = scheduled["main"]
        bits = "" if kd.variant == "fp32" else f"_w{kd.w_bits}a{kd.a_bits}"
        fname = f"qk_{kd.variant}{bits}_" + name.replace(".", "_")
        func = func.without_attr("global_symbol") if "global_symbol" in (func.attrs or {}) else func
        gv = bb.add_func(func, fname)
        self._funcs[key] = gv
        return gv

