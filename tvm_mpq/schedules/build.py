"""Compiling kernels and running them on the host."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm

from tvm_mpq.schedules.kernel import KernelDef
from tvm_mpq.targets import get_profile


def resolve_target(target: Any) -> tvm.target.Target:
    """A TVM target from a profile name or alias (``"llvm"``/``"host"``: this machine), a JSON
    dict or a Target."""
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):  # the host profile's target ignores the os
        return get_profile(target).target("linux")
    if isinstance(target, dict):
        return tvm.target.Target(target)
    raise ValueError(f"cannot make a TVM target from {target!r}")


def is_host_target(target: tvm.target.Target) -> bool:
    mtriple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
    return target.kind.name == "llvm" and (not mtriple or mtriple.startswith("x86_64"))


def kernel_module(kd: KernelDef, schedule: tvm.IRModule | None = None,
                  name: str = "kernel", target: Any = None) -> tvm.IRModule:
    """The IRModule to compile: a tuned/scheduled module, else our default schedule for
    ``target`` (:func:`default_schedules.default_schedule`), else the plain lowering."""
    if schedule is None:
        from tvm_mpq.schedules.default_schedules import default_schedule

        schedule = default_schedule(kd, target)
    if schedule is not None:
        func = schedule["main"] if "main" in schedule else next(iter(schedule.functions.values()))
        return tvm.IRModule({name: func.with_attr("global_symbol", name)})
    return tvm.IRModule({name: kd.prim_func(name)})


def build_kernel(kd: KernelDef, target: Any = "llvm", schedule: tvm.IRModule | None = None,
                 name: str = "kernel"):
    """Compile a kernel; returns the TVM executable (``lib[name](*args)`` to call)."""
    tgt = resolve_target(target)
    return tvm.compile(kernel_module(kd, schedule, name, tgt), target=tgt)


def run_built(lib, kd: KernelDef, x: np.ndarray, w: np.ndarray, name: str = "kernel") -> np.ndarray:
    """Call a host-compiled kernel on user integers; returns the raw output array."""
    args = [tvm.runtime.tensor(a) for a in kd.make_args(x, w)]
    lib[name](*args)
    return args[-1].numpy()
