"""Deploy stage: the standalone, TVM-runtime-free form of a compiled model (bare metal, MCUs).

The microTVM replacement. :func:`export_standalone` lowers a
:class:`~tvm_mpq.compiler.compiled.CompiledModel` until its Relax ``main`` is a flat,
static-shape sequence of ``call_tir`` on TIR PrimFuncs (:mod:`~tvm_mpq.deploy.lower`), builds
all those PrimFuncs into ONE object per target (bare-metal ``riscv*-unknown-elf`` and, for rv64,
``riscv64-unknown-linux-gnu``), and writes C that calls them in order
(:mod:`~tvm_mpq.deploy.codegen`)::

    int mpq_model_run(const float *input, float *output);       /* model.h */
    int mpq_model_run(const uint8_t *input, uint8_t *output);   /* integer_io=True: codes */

Intermediate tensors and the kernels' workspaces (read from the lowered TIR:
:mod:`~tvm_mpq.deploy.workspace`) live in one static arena whose offsets come from a
liveness-based plan (:mod:`~tvm_mpq.deploy.graph`; ``R.reshape`` results alias their source:
no copy); constants (pre-packed weights, scales, biases) are one binary blob linked with
``.incbin``. The kernels need only the workspace / error stubs of
:mod:`tvm_mpq.measure.harness`; the artifact's ``Makefile`` and the direct build share their
rules (:mod:`~tvm_mpq.deploy.buildrules`). :mod:`~tvm_mpq.deploy.memory` gives the RAM and
flash figures (``StandaloneArtifact.memory``) and checks a board's sizes (``ram_kib``,
``flash_kib``: :class:`DoesNotFitError`).

:func:`run_standalone` (:mod:`~tvm_mpq.deploy.run`) builds and runs the artifact on Spike or
QEMU system mode (bare metal: the whole model's retired-instruction count, minstret around
``mpq_model_run``) or as a static Linux executable under ``qemu-riscv64``.

The float32 parts (quantize, dequantize, relu, add, mean, fp32 layers) are TVM's default
lowering compiled for RISC-V, so outputs equal the host :class:`CompiledModel` call up to
float differences of the ISA's code generation; integer results are exact. An
``integer_io`` model without fp32 layers has no float part: its output codes equal the
integer reference bit for bit, and on rv32imc it links no soft-float routine.
"""

from tvm_mpq.deploy.artifact import StandaloneArtifact, StandaloneResult
from tvm_mpq.deploy.export import export_standalone, load_standalone
from tvm_mpq.deploy.graph import arena_lower_bound, plan_memory
from tvm_mpq.deploy.lower import lower_for_standalone
from tvm_mpq.deploy.memory import DoesNotFitError
from tvm_mpq.deploy.run import run_standalone

__all__ = [
    "DoesNotFitError", "StandaloneArtifact", "StandaloneResult", "arena_lower_bound",
    "export_standalone", "load_standalone", "lower_for_standalone", "plan_memory",
    "run_standalone",
]
