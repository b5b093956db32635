"""Compile a quantization plan into one mixed-precision TVM model.

Each quantized conv2d / linear call site runs its planned integer kernel (a PrimFunc of
:mod:`tvm_mpq.schedules`, scheduled or default, called with ``call_tir``; pre-packed
weights are constants; padding is filled with the input zero point). What runs between the
kernels is the ``glue`` (:mod:`tvm_mpq.compiler.emit`):

* ``"integer"`` (default): integer-only inference. Each kernel's epilogue requantizes its
  int32 accumulator with fixed-point multipliers straight to the codes the next layer reads;
  adds, pooling and activations between quantized layers run on codes. Float appears only
  at the entry (quantize the input), the exit (dequantize the output; none with
  ``integer_io=True``) and around fp32 layers. Bit-exact with
  ``fake_quant(..., integer_only=True)``.
* ``"float"``: quantize -> kernel -> dequantize to float around every layer, float ReLU /
  add / pooling between them: ``fake_quant(..., integer_accumulate=True)`` exactly. Kept
  for comparison.

Layers that are fp32 in the plan run the ``fp32`` variant kernel of
:mod:`tvm_mpq.schedules` (the kernel the cost model measured for them) followed by a
bias pass, so a plan's measured cost is the cost of what is compiled. (TVM's own
legalized conv2d, fused with its bias add, measured up to 1.5 instructions more per
MAC on RISC-V: the fused accumulator lives in an intermediate buffer.)
``fp32_layers="relax"`` keeps TVM's default lowering for them instead. Every other
float operator uses TVM's default lowering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_mpq.compiler.emit import GLUES, Emitter, QuantizedSite, ScheduleProvider
from tvm_mpq.frontend import ImportedModel, import_model
from tvm_mpq.quant import integer as I
from tvm_mpq.quant.calibration import calibrate
from tvm_mpq.quant.exported import integer_input_model
from tvm_mpq.quant.folding import fold_bn
from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.quant.qparams import QuantParams
from tvm_mpq.targets import Profile, get_profile

__all__ = ["CompiledModel", "QuantizedSite", "ScheduleProvider", "compile"]

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
        glue: ``"integer"`` or ``"float"`` (see the module docstring).
        program: the integer program (integer glue), else None.
        integer_io: the model takes input codes and returns output codes.
    """

    plan: QuantPlan
    qparams: QuantParams
    profile: Profile
    mod: tvm.IRModule
    layers: Any
    sites: list[QuantizedSite]
    input_shape: tuple[int, ...]
    fp32_sites: list[QuantizedSite] = field(default_factory=list)
    glue: str = "integer"
    program: I.IntegerProgram | None = None
    integer_io: bool = False
    _host_vm: Any = field(default=None, repr=False)
    _host_builder: Callable[[], Any] | None = field(default=None, repr=False)

    def _vm(self):
        if self._host_vm is None:
            assert self._host_builder is not None
            ex = self._host_builder()
            self._host_vm = relax.VirtualMachine(ex, tvm.cpu())
        return self._host_vm

    @property
    def input_quant(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` of the input codes (``integer_io=True``), else None."""
        s = self.program.input_spec if self.program is not None else None
        return None if s is None else (s.scale, s.zero_point)

    @property
    def output_quant(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` of the output codes (``integer_io=True``), else None."""
        s = self.program.output_spec if self.program is not None else None
        return None if s is None else (s.scale, s.zero_point)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Run on the host; ``x`` of the example input's shape (or any batch if the model
        was compiled for that batch). Returns the output as numpy float32 (uint8 codes, and
        ``x`` taken as uint8 codes, with ``integer_io=True``)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.uint8 if self.integer_io else np.float32)
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
        return predict_in_batches(self, images, self.input_shape[0])

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


def predict_in_batches(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                       batch: int) -> np.ndarray:
    """``run`` (a model compiled for ``batch`` inputs) over many inputs: chunks of ``batch``,
    the last one zero-padded and its padding's outputs dropped."""
    outs = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(run(chunk)[:n])
    return np.concatenate(outs)


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
    glue: str = "integer",
    integer_io: bool = False,
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
        glue: ``"integer"`` (integer-only between input and output) or ``"float"`` (the
            float quantize / dequantize around every layer, for comparison).
        integer_io: (integer glue) take the already-quantized input and return the integer
            output codes (uint8); ``input_quant`` / ``output_quant`` give their
            ``(scale, zero_point)``. Default: float in, float out.

    Returns:
        A :class:`CompiledModel`.
    """
    if fp32_layers not in ("kernel", "relax"):
        raise ValueError(f"fp32_layers={fp32_layers!r}: expected 'kernel' or 'relax'")
    if glue not in GLUES:
        raise ValueError(f"glue={glue!r}: expected one of {GLUES}")
    if integer_io and glue != "integer":
        raise ValueError("integer_io=True needs glue='integer'")
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
    emitter = Emitter(plan, qparams, profile, schedule_for, modules, glue, integer_io, folded)
    if integer_io:  # the graph reads uint8 codes (fx node names unchanged)
        folded = integer_input_model(folded)
        example_inputs = (torch.zeros(example_inputs[0].shape, dtype=torch.uint8),
                          *example_inputs[1:])
    imported: ImportedModel = import_model(folded, example_inputs, node_hook=emitter.node_hook,
                                           on_export=emitter.on_export)
    missing = set(plan.quantized_layers()) - {s.name for s in emitter.sites}
    if missing:
        raise ValueError(f"plan layers not found as conv2d/linear call sites: {sorted(missing)}")
    mod = imported.mod

    def build_host():
        if profile.is_host or profile.word_bits == 64:
            return tvm.compile(mod, target=get_profile("host").target())
        # rv32 kernels use 32-bit words: regenerate for the host with the same semantics
        host = compile(model, example_inputs, plan, "host", qparams=qparams,
                       schedule_for=None, fp32_layers=fp32_layers, glue=glue,
                       integer_io=integer_io)
        return tvm.compile(host.mod, target=get_profile("host").target())

    return CompiledModel(plan, qparams, profile, mod, imported.table, emitter.sites,
                         tuple(int(d) for d in example_inputs[0].shape), emitter.fp32_sites,
                         glue, emitter.program, integer_io, _host_builder=build_host)

