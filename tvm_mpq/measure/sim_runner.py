"""Bare-metal measurement on a RISC-V simulator: :class:`SimRunner` (backends ``"spike"`` and
``"qemu"``).

Many kernels are built into one ELF with the C harness (:mod:`tvm_mpq.measure.baremetal`)
and run in one simulator process; the cost is the retired-instruction count of each kernel
call, identical on Spike and QEMU ``-icount`` and run after run. MetaSchedule tunes for the
same count (:mod:`tvm_mpq.measure.ms_runner`).
"""

from __future__ import annotations

from typing import Any

from tvm_mpq.measure import baremetal, toolchain
from tvm_mpq.measure.local_runner import LocalRunner, PreparedKernel, RunResult, TuneHooks, validation_cases
from tvm_mpq.measure.runner import SIM_BACKENDS, last_line
from tvm_mpq.measure.toolchain import ToolchainError
from tvm_mpq.targets import Profile, get_profile


class SimRunner(LocalRunner):
    """Bare-metal runs on Spike, or QEMU with ``-icount``: many kernels per ELF, one
    simulator process, retired-instruction counts.

    Args:
        backend: ``"spike"`` or ``"qemu"`` (``qemu-system-riscv{32,64} -M virt``).
    """

    unit = "instructions"
    bare_metal = True

    def __init__(self, backend: str = "spike"):
        if backend not in SIM_BACKENDS:
            raise ValueError(f"SimRunner simulates on 'spike' or 'qemu', not {backend!r}")
        self.backend = backend
        self.platform = "spike" if backend == "spike" else "virt"

    def check_profile(self, profile: str | Profile) -> Profile:
        prof = get_profile(profile)
        if prof.is_host:
            raise ValueError(f"backend {self.backend!r} simulates a RISC-V profile; 'host' needs "
                             "backend 'host'")
        return prof

    def check_tools(self, profile: Profile) -> None:
        gcc = toolchain.find_gcc()
        toolchain.find_picolibc(gcc)
        toolchain.multilib_march(gcc, profile.march, profile.mabi)
        if self.backend == "spike":
            toolchain.find_spike()
        else:
            toolchain.find_qemu(profile.xlen)

    # ---- bare-metal binaries ----

    def run_elf(self, elf: str, profile: Profile, max_instructions: int,
                timeout_s: float) -> toolchain.SimResult:
        """Run a bare-metal ELF built for :attr:`platform`; its console output and exit.
        ``max_instructions`` bounds a Spike run (QEMU relies on the ELF's own watchdog)."""
        if self.backend == "spike":
            return toolchain.run_spike(elf, profile.spike_isa, max_instructions, timeout_s)
        return toolchain.run_qemu(elf, profile.xlen, profile.qemu_cpu, timeout_s)

    def run_cases(self, cases: list[baremetal.KernelCase], profile: Profile,
                  timeout_s: float = 600) -> list[baremetal.KernelRun]:
        return baremetal.run_kernels(cases, profile, self, timeout_s=timeout_s)

    # ---- campaign hooks ----

    def run(self, kernels: list[PreparedKernel], profile: Profile,
            timeout_s: float) -> list[RunResult]:
        from tvm_mpq.schedules.build import kernel_module

        # "default" = our default schedule for the profile (kernel_module falls back to the
        # plain lowering when it has none); tuned kernels carry their own func
        cases = [baremetal.KernelCase(
            f"k{i}", p.func if p.func is not None
            else kernel_module(p.kd, None, f"k{i}", profile.name)[f"k{i}"],
            p.args, {len(p.args) - 1: p.expected}) for i, p in enumerate(kernels)]
        try:
            runs = self.run_cases(cases, profile, timeout_s)
        except ToolchainError:
            raise
        except Exception as e:  # noqa: BLE001 - the chunk failed as a whole: record, don't abort
            msg = f"simulator run failed: {type(e).__name__}: {last_line(e)}"
            return [RunResult("run_error", msg) for _ in kernels]
        return [RunResult("ok", numbers={"instructions": int(r.instructions),
                                         "cycles": int(r.cycles)})
                if r.status == "ok" else RunResult(r.status, r.message) for r in runs]

    def tune_hooks(self, kd: Any, variant: str, profile: Profile):
        from tvm_mpq.measure.ms_runner import (
            BareMetalRunner,
            bare_metal_builder,
            ms_target,
            reference_from_primfunc,
        )

        # float candidates run on normal-distributed inputs: summation order changes the
        # rounding, so only the exact integer validation below judges fp32 schedules
        ref = None if variant == "fp32" else reference_from_primfunc(kd.prim_func("main"))
        return TuneHooks(ms_target(profile), bare_metal_builder(),
                         BareMetalRunner(profile, self, reference=ref),
                         self._validator(profile))

    def _validator(self, profile: Profile):
        """MetaSchedule record validator: run the scheduled kernel on the simulator against
        the reference on the validation inputs (random and extreme-corner)."""

        def validate(kd, mod, _target) -> str | None:
            func = mod["main"] if "main" in mod else next(iter(mod.functions.values()))
            cases = [baremetal.KernelCase(f"val{i}", func, args, {len(args) - 1: exp})
                     for i, (args, exp) in enumerate(validation_cases(kd))]
            bad = [f"{r.status}: {r.message}" for r in self.run_cases(cases, profile)
                   if r.status != "ok"]
            return "; ".join(bad) or None

        return validate
