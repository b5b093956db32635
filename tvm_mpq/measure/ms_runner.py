"""MetaSchedule over the bare-metal backend: tune a schedule for retired-instruction count.

Usage::

    builder = bare_metal_builder()
    runner = BareMetalRunner("rv64gc", backend="spike")
    db = ms.tune_tir(mod, ms_target("rv64gc"), work_dir, max_trials_global=16,
                     builder=builder, runner=runner)

MetaSchedule minimises ``run_secs``; the runner reports ``instructions * scale`` (default
1e-9: one "second" per 10^9 instructions). Failed builds, traps, timeouts and (with a
``reference``) wrong results are reported as errors, never as numbers.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import LocalBuilder
from tvm.s_tir.meta_schedule.runner import (
    PyRunner,
    PyRunnerFuture,
    RunnerFuture,
    RunnerInput,
    RunnerResult,
)

from tvm_mpq.measure import toolchain
from tvm_mpq.measure.baremetal import PrebuiltCase, run_prebuilt
from tvm_mpq.measure.runner import Runner
from tvm_mpq.targets import Profile, get_profile

#: reference(inputs) -> {param index: expected array}; inputs hold every param (outputs zeroed)
Reference = Callable[[list[np.ndarray]], dict[int, np.ndarray]]


def ms_target(profile: str | Profile) -> tvm.target.Target:
    """The bare-metal target of ``profile`` with ``num-cores`` = 1 (MetaSchedule needs it)."""
    d = get_profile(profile).target_dict("baremetal")
    d["num-cores"] = 1
    return tvm.target.Target(d)


def build_object(mod: tvm.IRModule, target: tvm.target.Target, _params=None):
    """MetaSchedule ``f_build``: plain ``tvm.compile``.

    The default build imports ``tvm.s_tir.tensor_intrin`` (~27 s per fresh worker), which
    makes builds time out on small machines.
    """
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.compile(mod, target=target).mod


def export_object(rt_mod) -> str:
    """MetaSchedule ``f_export``: write the compiled module as a RISC-V object file."""
    path = os.path.join(tempfile.mkdtemp(prefix="tvm_mpq_ms_"), "kernel.o")
    rt_mod.write_to_file(path)
    return path


def bare_metal_builder(max_workers: int | None = None, timeout_sec: float = 60.0) -> LocalBuilder:
    """A :class:`LocalBuilder` producing object files for :class:`BareMetalRunner`."""
    return LocalBuilder(max_workers=max_workers or max(1, min(2, os.cpu_count() or 1)),
                        timeout_sec=timeout_sec, f_build=build_object, f_export=export_object)


def random_inputs(args_info, seed: int = 0) -> list[np.ndarray]:
    """Deterministic random arrays for MetaSchedule ``args_info`` (TensorInfo dtype/shape).

    Integers stay small enough that int32 accumulations cannot overflow in typical kernels.
    """
    rng = np.random.default_rng(seed)
    out = []
    for info in args_info:
        dtype = np.dtype(str(info.dtype))
        shape = tuple(int(s) for s in info.shape)
        if dtype.kind == "f":
            out.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind == "b":
            out.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            ii = np.iinfo(dtype)
            out.append(rng.integers(max(ii.min, -128), min(ii.max, 127) + 1, shape).astype(dtype))
    return out


def reference_from_primfunc(func, output_indices: list[int] | None = None) -> Reference:
    """A :data:`Reference` that runs ``func`` (unscheduled) on the host CPU.

    ``output_indices`` defaults to the last parameter.
    """
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target="llvm")
    outs = output_indices if output_indices is not None else [len(func.params) - 1]

    def ref(inputs: list[np.ndarray]) -> dict[int, np.ndarray]:
        bufs = [tvm.runtime.tensor(np.array(a)) for a in inputs]
        lib["main"](*bufs)
        return {i: bufs[i].numpy() for i in outs}

    return ref


@derived_object
class _DoneFuture(PyRunnerFuture):
    def __init__(self, res: list[float] | None, err: str | None) -> None:
        super().__init__()
        self.res, self.err = res, err

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return RunnerResult(self.res, self.err)


def _entry_symbol(obj: str) -> str:
    """The global symbol of the single ``__tvm_ffi_*`` entry in ``obj``."""
    nm = toolchain.find_gcc().replace("-gcc", "-nm")
    out = subprocess.run([nm, "--defined-only", "-g", obj], capture_output=True, text=True,
                         check=True).stdout
    syms = [ln.split()[-1] for ln in out.splitlines() if " T __tvm_ffi_" in ln]
    if len(syms) != 1:
        raise RuntimeError(f"expected one __tvm_ffi_ entry in {obj}, found {syms}")
    return syms[0][len("__tvm_ffi_"):]


@derived_object
class BareMetalRunner(PyRunner):
    """MetaSchedule runner measuring retired instructions on Spike or QEMU (icount).

    All candidates of one ``run`` call are linked into one ELF and measured in one simulator
    run. Inputs are deterministic random arrays (``seed``) so counts are reproducible.

    Args:
        profile: target profile (must match the tuning target).
        backend: ``"spike"`` or ``"qemu"``, or a bare-metal
            :class:`~tvm_mpq.measure.runner.Runner`.
        reference: optional :data:`Reference`; candidates whose outputs differ fail.
        scale: ``run_secs = instructions * scale``.
        timeout_s, max_instructions: limits of one batch (see
            :func:`~tvm_mpq.measure.baremetal.run_kernels`).
        workdir: keep build files there (a temporary directory otherwise).
    """

    def __init__(
        self,
        profile: str | Profile,
        backend: str | Runner = "spike",
        reference: Reference | None = None,
        scale: float = 1e-9,
        seed: int = 0,
        timeout_s: float = 600,
        max_instructions: int = 10**10,
        workdir: str | None = None,
    ) -> None:
        super().__init__()
        self.profile = get_profile(profile)
        self.backend = backend
        self.reference = reference
        self.scale = scale
        self.seed = seed
        self.timeout_s = timeout_s
        self.max_instructions = max_instructions
        self.workdir = workdir
        self._expected_cache: dict[str, dict[int, np.ndarray]] = {}
        self.history: list = []  # KernelRun of every candidate, in order (for inspection)

    def _expected(self, key: str, args: list[np.ndarray]) -> dict[int, np.ndarray]:
        if self.reference is None:
            return {}
        if key not in self._expected_cache:
            self._expected_cache[key] = self.reference([a.copy() for a in args])
        return self._expected_cache[key]

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        errors: dict[int, str] = {}
        cases: list[PrebuiltCase] = []
        index: list[int] = []
        for i, inp in enumerate(runner_inputs):
            try:
                args = random_inputs(inp.args_info, self.seed)
                key = repr([(str(a.dtype), a.shape) for a in args])
                expected = self._expected(key, args)
                cases.append(PrebuiltCase(f"cand{i}", str(inp.artifact_path),
                                          _entry_symbol(str(inp.artifact_path)), args,
                                          expected))
                index.append(i)
            except Exception as e:  # noqa: BLE001 - report per candidate
                errors[i] = f"BareMetalRunner: {type(e).__name__}: {e}"
        runs = {}
        if cases:
            for idx, r in zip(index, run_prebuilt(cases, self.profile, self.backend,
                                                  workdir=self.workdir, timeout_s=self.timeout_s,
                                                  max_instructions=self.max_instructions),
                              strict=True):
                runs[idx] = r
                self.history.append(r)
        futures = []
        for i in range(len(runner_inputs)):
            r = runs.get(i)
            if r is not None and r.status == "ok":
                futures.append(_DoneFuture([r.instructions * self.scale], None))
            else:
                msg = errors.get(i) or f"BareMetalRunner: {r.status}: {r.message}"
                futures.append(_DoneFuture(None, msg))
        return futures
