"""Compile a quantization plan into one mixed-precision TVM model.

Each quantized conv2d / linear call site becomes three steps in the Relax graph:

1. quantize (TE, fusable with neighbours):  a_q = clamp(nearbyint(x / s_a) + z, 0, 2^a - 1)
2. the planned integer kernel (a PrimFunc from :mod:`tvm_mpq.schedules`, scheduled
   or default, called with ``call_tir``; pre-packed weights are constants; padding
   is filled with the zero point z)
3. dequantize (TE): y = float32(acc - z * sum_w[k]) * float32(s_a * s_w[k]) + bias[k]

which is exactly :func:`tvm_mpq.fake_quant` with ``integer_accumulate=True`` (the
integer sums are exact; the float steps are the same float32 operations), and
equals the plain fake-quant reference up to float32 summation order.

Layers that are fp32 in the plan run the ``fp32`` variant kernel of
:mod:`tvm_mpq.schedules` (the kernel the cost model measured for them) followed by a
bias pass, so a plan's measured cost is the cost of what is compiled. (TVM's own
legalized conv2d, fused with its bias add, measured up to 1.5 instructions more per
MAC on RISC-V: the fused accumulator lives in an intermediate buffer.)
``fp32_layers="relax"`` keeps TVM's default lowering for them instead. Every other
operator uses TVM's default lowering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_mpq.compiler.ops import bias_te, dequantize_te, quantize_te
from tvm_mpq.frontend import ImportedModel, LayerInfo, import_model
from tvm_mpq.quant.calibration import calibrate
from tvm_mpq.quant.folding import fold_bn
from tvm_mpq.quant.plan import QuantPlan, resolve_variant
from tvm_mpq.quant.qparams import QuantParams
from tvm_mpq.schedules import DenseWorkload, KernelDef, make_kernel
from tvm_mpq.schedules.workload import workload_from_layer
from tvm_mpq.targets import Profile, get_profile

#: schedule_for(kernel) -> scheduled IRModule (e.g. a validated MetaSchedule record) or None
ScheduleProvider = Callable[[KernelDef], "tvm.IRModule | None"]


@dataclass
class QuantizedSite:
    """What the compiler emitted for one quantized layer."""

    name: str
    kernel: KernelDef
    func_name: str
    scheduled: bool


@dataclass
class CompiledModel:
    """A plan compiled with TVM: callable on the host, exportable for RISC-V.

    Attributes:
        plan, qparams: the plan and the calibration it was compiled with.
        profile: the target profile the kernels were generated for.
        mod: the Relax IRModule (quantized kernels included) before the build.
        layers: the import's layer table.
        sites: the quantized call sites and their kernels, in order.
        fp32_sites: the fp32 call sites compiled with the ``fp32`` variant kernel, in order.
    """

    plan: QuantPlan
    qparams: QuantParams
    profile: Profile
    mod: tvm.IRModule
    layers: Any
    sites: list[QuantizedSite]
    input_shape: tuple[int, ...]
    fp32_sites: list[QuantizedSite] = field(default_factory=list)
    _host_vm: Any = field(default=None, repr=False)
    _host_builder: Callable[[], Any] | None = field(default=None, repr=False)

    def _vm(self):
        if self._host_vm is None:
            assert self._host_builder is not None
            ex = self._host_builder()
            self._host_vm = relax.VirtualMachine(ex, tvm.cpu())
        return self._host_vm

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Run on the host; ``x`` of the example input's shape (or any batch if the model
        was compiled for that batch). Returns the output as numpy float32."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != tuple(self.input_shape):
            raise ValueError(f"input shape {x.shape} != compiled shape {self.input_shape}")
        out = self._vm()["main"](tvm.runtime.tensor(x))
        if not hasattr(out, "numpy"):
            out = out[0]
        return out.numpy()

    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """Outputs for many inputs, run in chunks of the compiled batch size."""
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        b = self.input_shape[0]
        outs = []
        for i in range(0, len(images), b):
            chunk = images[i:i + b]
            n = len(chunk)
            if n < b:  # pad the last chunk to the compiled batch
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self(chunk)[:n])
        return np.concatenate(outs)

    def export_library(self, path: str, cross_compiler: str = "riscv64-linux-gnu-g++") -> str:
        """Build for the profile's riscv Linux target and write a Relax VM shared library.

        Load it on the board with the TVM runtime (``tvm.runtime.load_module`` +
        ``relax.VirtualMachine``), e.g. through the RPC server of :mod:`tvm_mpq.rpc`.
        """
        if self.profile.is_host:
            ex = tvm.compile(self.mod, target=self.profile.target())
            ex.export_library(path)
            return path
        from tvm.support import cc

        ex = tvm.compile(self.mod, target=self.profile.target("linux"))
        ex.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
        return path

    def export_standalone(self, directory: str, **kwargs: Any) -> Any:
        """Write the TVM-runtime-free C + kernel-object artifact (see :mod:`tvm_mpq.deploy`)."""
        from tvm_mpq.deploy import export_standalone

        return export_standalone(self, directory, **kwargs)


def _input_var(node: Any, info: LayerInfo, importer: Any) -> Any:
    op = node.target.__name__
    src = node.args[1] if op == "addmm.default" else node.args[0]
    return importer.env[src]


class _Emitter:
    """The convert hook: replaces planned call sites with quantized kernels."""

    def __init__(self, plan: QuantPlan, qparams: QuantParams, profile: Profile,
                 schedule_for: ScheduleProvider | None,
                 modules: dict[str, torch.nn.Module] | None = None):
        self.plan, self.qparams, self.profile = plan, qparams, profile
        self.schedule_for = schedule_for
        self.modules = modules  # None: fp32 layers keep TVM's default lowering
        self.sites: list[QuantizedSite] = []
        self.fp32_sites: list[QuantizedSite] = []
        self._funcs: dict[str, Any] = {}  # structural key -> GlobalVar (dedup identical kernels)

    def __call__(self, info: LayerInfo, node: Any, importer: Any) -> Any:
        if not info.quantizable:
            return None
        if info.name not in self.plan or self.plan[info.name].is_fp32:
            return self._fp32(info, node, importer)
        cfg, qp = self.plan[info.name], self.qparams[info.name]
        cg = info.weight_shape[1] if info.kind == "conv2d" else None
        variant = cfg.variant or resolve_variant(cfg.w_bits, cfg.a_bits, self.profile.name, cg)
        if variant == "fp32":
            raise ValueError(f"layer {info.name!r}: variant 'fp32' needs fp32 bits in the plan, "
                             f"got w{cfg.w_bits}a{cfg.a_bits}")
        bb = importer.block_builder
        x = _input_var(node, info, importer)
        kd = make_kernel(workload_from_layer(info), variant, cfg.w_bits, cfg.a_bits,
                         pad_value=int(qp.a_zero_point), word_bits=self.profile.word_bits)
        w_q = qp.w_q.astype(np.int64)
        xq = bb.emit_te(lambda t: quantize_te(t, qp), x, primfunc_name_hint="quantize")
        acc, site = self._call_kernel(bb, kd, info.name, xq, w_q)
        # zero-point correction: sum over the window of (a_q - z) * w = acc - z * sum(w)
        corr = (int(qp.a_zero_point) * w_q.reshape(len(w_q), -1).sum(axis=1)).astype(np.int32)
        scale = (np.float32(qp.a_scale) * qp.w_scale.astype(np.float32)).astype(np.float32)
        consts = [relax.const(corr), relax.const(scale)]
        if qp.bias is not None:
            consts.append(relax.const(qp.bias.astype(np.float32)))
        y = bb.emit_te(dequantize_te, acc, *consts, primfunc_name_hint="dequantize")
        self.sites.append(site)
        return y

    def _fp32(self, info: LayerInfo, node: Any, importer: Any) -> Any:
        """An fp32 layer as the ``fp32`` variant kernel + a bias pass (None: TVM's lowering)."""
        mod = self.modules.get(info.name) if self.modules is not None else None
        if not isinstance(mod, torch.nn.Conv2d | torch.nn.Linear):
            return None
        bb = importer.block_builder
        kd = make_kernel(workload_from_layer(info), "fp32", 8, 8, word_bits=self.profile.word_bits)
        w = mod.weight.detach().cpu().numpy().astype(np.float32)
        y, site = self._call_kernel(bb, kd, info.name, _input_var(node, info, importer), w)
        if mod.bias is not None:
            bias = relax.const(mod.bias.detach().cpu().numpy().astype(np.float32))
            y = bb.emit_te(bias_te, y, bias, primfunc_name_hint="bias_add")
        self.fp32_sites.append(site)
        return y

    def _call_kernel(self, bb: Any, kd: KernelDef, name: str, x: Any,
                     weight: np.ndarray) -> tuple[Any, QuantizedSite]:
        """``call_tir`` of kernel ``kd`` (scheduled if a schedule is provided) on ``x`` with the
        pre-packed ``weight`` as a constant; a dense layer runs as its 1x1 conv (reshapes)."""
        wl = kd.workload
        scheduled = self.schedule_for(kd) if self.schedule_for else None
        gv = self._kernel_gv(bb, kd, scheduled, name)
        if isinstance(wl, DenseWorkload):
            x = bb.emit(relax.op.reshape(x, (wl.m, wl.d, 1, 1)))
        w_arg = relax.const(np.ascontiguousarray(kd.prepare_weight(weight)))
        out_shape = [int(d) for d in kd.output.shape]
        y = bb.emit(relax.call_tir(gv, [x, w_arg], relax.TensorType(out_shape, kd.out_dtype)))
        if isinstance(wl, DenseWorkload):
            y = bb.emit(relax.op.reshape(y, wl.output_shape))
        return y, QuantizedSite(name, kd, gv.name_hint, scheduled is not None)

    def _kernel_gv(self, bb: Any, kd: KernelDef, scheduled: tvm.IRModule | None, name: str):
        if scheduled is None:  # our default schedule for the profile, else the plain lowering
            from tvm_mpq.schedules.default_schedules import default_schedule

            default = default_schedule(kd, self.profile.name)
            func = default["main"] if default is not None else kd.prim_func("main")
        else:
            func = scheduled["main"]
        key = f"{kd.describe()} pad{kd.pad_value} wb{kd.word_bits} {scheduled is not None}"
        if key in self._funcs:
            return self._funcs[key]
        bits = "" if kd.variant == "fp32" else f"_w{kd.w_bits}a{kd.a_bits}"
        fname = f"qk_{kd.variant}{bits}_" + name.replace(".", "_")
        func = func.without_attr("global_symbol") if "global_symbol" in (func.attrs or {}) else func
        gv = bb.add_func(func, fname)
        self._funcs[key] = gv
        return gv


def compile(  # noqa: A001 - the public name the API promises (tvm_mpq.compile)
    model: torch.nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    plan: QuantPlan,
    target: str | Profile = "host",
    calib_data: Any = None,
    *,
    qparams: QuantParams | None = None,
    schedule_for: ScheduleProvider | None = None,
    fp32_layers: str = "kernel",
    **calib_kwargs: Any,
) -> CompiledModel:
    """Compile ``model`` under ``plan`` into one mixed-precision TVM model.

    Args:
        model: float torch model (BN is folded on a copy).
        example_inputs: example input tensor (or tuple) fixing the static shapes.
        plan: per-layer bits and variants.
        target: a profile name ("host", "rv64gc", "rv64gc_zbb", "rv64gcv", "rv32imc"), an
            alias (``targets.TARGET_ALIASES``: "riscv", "riscv64", "llvm", ...) or a
            :class:`~tvm_mpq.targets.Profile`. Kernels are generated for this profile (word size,
            default variants); the model is also built for the host to be callable here.
        calib_data: calibration inputs (needed unless ``qparams`` is given).
        qparams: precomputed quantization parameters (shared with :func:`fake_quant`).
        schedule_for: returns a validated schedule for a kernel, or None for the default.
        fp32_layers: how the plan's fp32 conv2d / linear layers are compiled: ``"kernel"``
            (the ``fp32`` variant kernel the cost model measures, plus a bias pass) or
            ``"relax"`` (TVM's default lowering of conv2d / matmul with the bias fused).

    Returns:
        A :class:`CompiledModel`.
    """
    if fp32_layers not in ("kernel", "relax"):
        raise ValueError(f"fp32_layers={fp32_layers!r}: expected 'kernel' or 'relax'")
    profile = get_profile(target)  # profile names and aliases ("riscv", "llvm", ...)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    folded = fold_bn(model).eval()
    if qparams is None and plan.quantized_layers():
        if calib_data is None:
            raise ValueError("compile needs calib_data (or qparams) to quantize the plan's layers")
        qparams = calibrate(folded, plan, calib_data, **calib_kwargs)
    qparams = qparams if qparams is not None else QuantParams()
    for n in plan.quantized_layers():
        if n not in qparams:
            raise ValueError(f"qparams has no entry for planned layer {n!r}")

    modules = dict(folded.named_modules()) if fp32_layers == "kernel" else None
    emitter = _Emitter(plan, qparams, profile, schedule_for, modules)
    imported: ImportedModel = import_model(folded, example_inputs, convert_hook=emitter)
    missing = set(plan.quantized_layers()) - {s.name for s in emitter.sites}
    if missing:
        raise ValueError(f"plan layers not found as conv2d/linear call sites: {sorted(missing)}")
    mod = imported.mod

    def build_host():
        if profile.is_host or profile.word_bits == 64:
            return tvm.compile(mod, target=get_profile("host").target())
        # rv32 kernels use 32-bit words: regenerate for the host with the same semantics
        host = compile(model, example_inputs, plan, "host", qparams=qparams,
                       schedule_for=None, fp32_layers=fp32_layers)
        return tvm.compile(host.mod, target=get_profile("host").target())

    return CompiledModel(plan, qparams, profile, mod, imported.table, emitter.sites,
                         tuple(int(d) for d in example_inputs[0].shape), emitter.fp32_sites,
                         _host_builder=build_host)

