"""Static riscv64 Linux executables under ``qemu-riscv64``: :class:`QemuUserRunner` (backend
``"qemu-user"``, platform ``"linux"``).

It runs the standalone artifact's Linux build (:func:`tvm_mpq.deploy.run_standalone`) and
checks its outputs; user-mode QEMU has no retired-instruction counter, so it measures no
kernels.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence

from tvm_mpq.measure import toolchain
from tvm_mpq.measure.runner import RecordSink, Runner, RunSettings
from tvm_mpq.targets import Profile, get_profile

#: the tools a static Linux build needs, with the Debian package providing each
_TOOLS = (("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu"), ("qemu-riscv64", "qemu-user"))


class QemuUserRunner(Runner):
    """Runs static riscv64 Linux executables under ``qemu-riscv64`` (no counts)."""

    backend = "qemu-user"
    unit = "seconds"
    platform = "linux"

    def check_profile(self, profile: str | Profile) -> Profile:
        prof = get_profile(profile)
        if prof.is_host or prof.xlen != 64:
            raise ValueError(f"backend 'qemu-user' runs riscv64 Linux executables; profile "
                             f"{prof.name!r} is not rv64")
        return prof

    def check_tools(self, profile: Profile) -> None:
        for tool, pkg in _TOOLS:
            if shutil.which(tool) is None:
                raise toolchain.ToolchainError(f"{tool} not found on PATH: {toolchain.SETUP_HINT} "
                                               f"(or: apt-get install {pkg})")

    def measure(self, requests: Sequence, profile: Profile, settings: RunSettings,
                done: RecordSink) -> None:
        raise NotImplementedError("backend 'qemu-user' runs standalone executables only; "
                                  "measure kernels with 'spike' or 'qemu'")

    def run_elf(self, elf: str, profile: Profile, max_instructions: int, timeout_s: float,
                args: Sequence[str] = ()) -> toolchain.SimResult:
        """Run the executable ``elf`` with ``args``; stdout then stderr, and its exit status.
        ``max_instructions`` is not enforced (user-mode QEMU counts nothing)."""
        cmd = [shutil.which("qemu-riscv64") or "qemu-riscv64", elf, *args]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
            text, rc, timed_out = proc.stdout + proc.stderr, proc.returncode, False
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            text, rc, timed_out = out or "", -9, True
        return toolchain.SimResult(text, rc, timed_out, time.monotonic() - t0, cmd)
