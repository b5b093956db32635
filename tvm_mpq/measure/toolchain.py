"""Locating the bare-metal toolchain and simulators, and running an ELF under a watchdog.

Every tool that is missing raises :class:`ToolchainError` naming the tool and how to get it.
Every simulator run has both an instruction watchdog (Spike ``--instructions``; the harness'
own CLINT timer for QEMU) and a wall-clock timeout; hitting either is reported as a timeout.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tvm_mpq.targets import Profile

SETUP_HINT = "run ./scripts/setup.sh"

#: Debian package providing each external tool (for error messages).
APT_PACKAGES = {
    "riscv64-unknown-elf-gcc": "gcc-riscv64-unknown-elf",
    "picolibc": "picolibc-riscv64-unknown-elf",
    "qemu-system-riscv64": "qemu-system-misc",
    "qemu-system-riscv32": "qemu-system-misc",
    "dtc": "device-tree-compiler",
}

#: Guest RAM the link script assumes (harness/link.ld: 1 GiB at 0x80000000).
GUEST_RAM_MIB = 1024


class ToolchainError(RuntimeError):
    """A tool the bare-metal backend needs is missing or unusable."""


def _missing(tool: str, extra: str = "") -> ToolchainError:
    pkg = APT_PACKAGES.get(tool)
    how = f"{SETUP_HINT} (or: apt-get install {pkg})" if pkg else SETUP_HINT
    return ToolchainError(f"{tool} not found{extra}: {how}")


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise _missing(name, " on PATH")
    return path


@functools.cache
def _spike_cached(path_env: str | None) -> str:
    override = os.environ.get("TVM_MPQ_SPIKE")
    if override:
        if not os.access(override, os.X_OK):
            raise ToolchainError(f"TVM_MPQ_SPIKE={override} is not an executable spike")
        return override
    # The raw binary inside the PyPI `spike` package; the `spike` console script in a venv is
    # a Python launcher that costs start-up time on every run.
    spec = importlib.util.find_spec("riscv")
    if spec is not None and spec.origin is not None:
        exe = Path(spec.origin).parent / "data" / "bin" / "spike"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    found = shutil.which("spike", path=path_env)
    if found:
        return found
    raise ToolchainError(
        f"spike not found (neither the PyPI 'spike' package nor spike on PATH): {SETUP_HINT} "
        "(or: pip install spike)"
    )


def find_spike() -> str:
    """Path of the Spike executable (also checks that ``dtc``, which Spike forks, exists)."""
    find_dtc()
    return _spike_cached(os.environ.get("PATH"))


def find_dtc() -> str:
    """Path of the device-tree compiler (Spike runs it at start-up)."""
    return _which("dtc")


def find_qemu(xlen: int) -> str:
    """Path of ``qemu-system-riscv32`` or ``qemu-system-riscv64``."""
    return _which(f"qemu-system-riscv{32 if xlen == 32 else 64}")


def find_gcc() -> str:
    """Path of the bare-metal cross compiler ``riscv64-unknown-elf-gcc``."""
    return _which("riscv64-unknown-elf-gcc")


@functools.cache
def _picolibc_specs(gcc: str) -> str:
    out = subprocess.run(
        [gcc, "-print-file-name=picolibc.specs"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not out or not os.path.isabs(out) or not os.path.isfile(out):
        raise _missing("picolibc", f" (no picolibc.specs for {gcc})")
    return out


def find_picolibc(gcc: str | None = None) -> str:
    """Path of ``picolibc.specs`` as seen by the cross compiler."""
    return _picolibc_specs(gcc or find_gcc())


@functools.cache
def multilib_march(gcc: str, march: str, mabi: str) -> str:
    """The ``-march`` that makes gcc pick a picolibc multilib matching ``march``/``mabi``.

    Debian's gcc selects multilibs by ISA-spec-2.2 names: ``rv32imc_zicsr`` falls back to the
    default (rv64!) library, while ``rv32imc`` + ``-misa-spec=2.2`` finds ``rv32im/ilp32``.
    The result is used at link time only; objects are compiled with the full ``march``.
    """
    base = march.split("_")[0]
    xlen = base[2:4]
    d = subprocess.run(
        [gcc, f"-march={base}", f"-mabi={mabi}", "-misa-spec=2.2", "--specs=picolibc.specs",
         "-print-multi-directory"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
    if not (d.startswith(f"rv{xlen}") or (d == "." and xlen == "64")):
        raise ToolchainError(
            f"picolibc has no multilib for -march={base} -mabi={mabi} (gcc chose {d!r}); "
            f"check `{gcc} -print-multi-lib`"
        )
    return base


@dataclass
class SimResult:
    """Outcome of one simulator run."""

    stdout: str
    returncode: int
    timed_out: bool  # wall clock exceeded (the instruction watchdog shows up in stdout)
    wall_s: float
    command: list[str]


def _run(cmd: list[str], timeout_s: float) -> SimResult:
    t0 = time.monotonic()
    # start_new_session: on timeout kill the whole group (spike forks dtc).
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        timed_out = True
    text = out.decode("utf-8", errors="replace")
    return SimResult(text, proc.returncode, timed_out, time.monotonic() - t0, cmd)


def run_spike(elf: str, isa: str, max_instructions: int, timeout_s: float) -> SimResult:
    """Run a bare-metal HTIF ELF on Spike.

    ``--instructions`` is a backstop only: Spike then exits 0 silently, which the caller sees
    as a missing ``@@DONE``; the harness watchdog normally fires first with a clear message.
    """
    spike = find_spike()
    cmd = [spike, f"--isa={isa}", f"-m{GUEST_RAM_MIB}",
           f"--instructions={int(max_instructions)}", elf]
    return _run(cmd, timeout_s)


def run_qemu(elf: str, xlen: int, cpu: str, timeout_s: float) -> SimResult:
    """Run a ``-DPLATFORM_VIRT`` ELF on ``qemu-system-riscv{32,64} -M virt`` in icount mode.

    ``-icount shift=0,sleep=off`` makes counters and the CLINT timer functions of the retired
    instruction count only, so results equal Spike's and do not vary run to run.
    """
    qemu = find_qemu(xlen)
    cmd = [qemu, "-M", "virt", "-bios", "none", "-nographic", "-monitor", "none",
           "-serial", "stdio", "-icount", "shift=0,sleep=off", "-m", f"{GUEST_RAM_MIB}M",
           "-cpu", cpu, "-kernel", elf]
    return _run(cmd, timeout_s)


# --------------------------------------------------------------------------------------------
# build flags: the one definition of how bare-metal (and Linux) RISC-V code is compiled and
# linked, used by the measurement harness (baremetal.py) and the standalone Makefile (deploy/)

#: bare-metal platforms of the harness: ``"spike"`` (HTIF console and exit) and ``"virt"``
#: (QEMU ``-M virt``: UART console, test-device exit, CLINT watchdog)
BARE_METAL_PLATFORMS = ("spike", "virt")

#: DLPack type code of each dtype family (``dlpack.h``: kDLInt, kDLUInt, kDLFloat, kDLBool)
DL_TYPE_CODES = {"int": 0, "uint": 1, "float": 2, "bool": 6}


def dl_dtype(dtype: object) -> tuple[int, int]:
    """The DLPack ``(type code, bits)`` of ``dtype``, for the ``DLTensor`` the C code builds.

    Args:
        dtype: a dtype name (``"int8"``, ``"uint1"``, ``"float32"``, ``"bool"``) or a numpy
            dtype (its ``name`` is used; byte order does not matter).

    Raises:
        ValueError: not an int/uint/float/bool dtype (e.g. ``bfloat16``, complex, strings).
    """
    name = dtype if isinstance(dtype, str) else str(getattr(dtype, "name", dtype))
    m = re.fullmatch(r"(int|uint|float|bool)(\d*)", name)
    if m is None or (m.group(1) == "bool") == bool(m.group(2)):
        raise ValueError(f"unsupported dtype {name}: no DLPack type code here")
    return DL_TYPE_CODES[m.group(1)], int(m.group(2) or 8)  # numpy and TVM bool: 8 bits


def ffi_include_dir() -> str:
    """Directory of the tvm-ffi C headers (``tvm/ffi/c_api.h``, ``dlpack/dlpack.h``) that
    callers of TVM-generated kernels include.

    Raises:
        ToolchainError: ``apache-tvm-ffi`` is not installed or ships no headers.
    """
    spec = importlib.util.find_spec("tvm_ffi")
    if spec is None or spec.origin is None:
        raise ToolchainError(f"tvm_ffi (apache-tvm-ffi) is not installed: {SETUP_HINT}")
    inc = Path(spec.origin).parent / "include"
    if not (inc / "tvm" / "ffi" / "c_api.h").is_file():
        raise ToolchainError(f"tvm_ffi C headers missing under {inc}")
    return str(inc)


def platform_defines(platform: str) -> list[str]:
    """The ``-D`` flags that select the harness code of a bare-metal ``platform``
    (one of :data:`BARE_METAL_PLATFORMS`)."""
    if platform not in BARE_METAL_PLATFORMS:
        raise ValueError(f"unknown bare-metal platform {platform!r}; "
                         f"expected one of {BARE_METAL_PLATFORMS}")
    return ["-DPLATFORM_VIRT"] if platform == "virt" else []


#: stack of the simulators' default layout (``STACK_SIZE`` in ``harness/link.ld``)
SIM_STACK_BYTES = 8 << 20

#: base address of the simulators' DRAM (Spike and QEMU ``-M virt``): where both link scripts
#: start (``_start`` there: QEMU ``-bios none`` jumps to it)
DRAM_BASE = 0x80000000


@dataclass(frozen=True)
class BoardMemory:
    """A board's memory for the bare-metal link (``harness/link_board.ld``): ``flash_bytes`` of
    flash at :data:`DRAM_BASE` (code, read-only data, the ``.data`` load image), then
    ``ram_bytes`` of RAM (arena, ``.data``/``.bss``, then a ``stack_bytes`` stack).

    On Spike / QEMU both regions lie in the simulators' DRAM: the sizes are emulated (a
    section that does not fit fails the link with ``region `ram' overflowed by N bytes``), not
    the timing of XIP flash. ``crt0.S`` copies ``.data`` from flash to RAM
    (``-DMPQ_COPY_DATA``: :func:`bare_metal_cflags`).
    """

    flash_bytes: int
    ram_bytes: int
    stack_bytes: int

    def __post_init__(self) -> None:
        for name in ("flash_bytes", "ram_bytes", "stack_bytes"):
            v = getattr(self, name)
            if v <= 0 or v % 16:
                raise ValueError(f"{name} must be a positive multiple of 16, got {v}")
        if self.stack_bytes > self.ram_bytes:
            raise ValueError(f"the stack ({self.stack_bytes} bytes) is larger than the RAM "
                             f"({self.ram_bytes} bytes)")
        if self.flash_bytes + self.ram_bytes > GUEST_RAM_MIB << 20:
            raise ValueError(f"flash + RAM ({self.flash_bytes + self.ram_bytes} bytes) exceed "
                             f"the simulators' {GUEST_RAM_MIB} MiB of DRAM")

    @property
    def ram_origin(self) -> int:
        """Address of the RAM region (right after flash)."""
        return DRAM_BASE + self.flash_bytes


def bare_metal_cflags(profile: Profile, include_dirs: Sequence[str | Path] = (),
                      platform: str | None = None, board: BoardMemory | None = None) -> list[str]:
    """gcc flags compiling bare-metal C and assembly for ``profile`` against picolibc.

    Args:
        profile: the RISC-V profile (``march``/``mabi``; objects use the full ``march``).
        include_dirs: ``-I`` directories, in order (absolute, or relative to the build dir).
        platform: adds :func:`platform_defines`; None leaves them out, for a build that adds
            them only to the files that differ per platform (the standalone Makefile).
        board: a board layout (``link_board.ld``): ``crt0.S`` then copies ``.data`` from its
            load address in flash (``-DMPQ_COPY_DATA``).
    """
    flags = [f"-march={profile.march}", f"-mabi={profile.mabi}", "-mcmodel=medany", "-O2",
             "-ffunction-sections", "-fdata-sections", "-fno-builtin-printf",
             "--specs=picolibc.specs", *(f"-I{d}" for d in include_dirs)]
    flags += ["-DMPQ_COPY_DATA"] if board is not None else []
    return flags + (platform_defines(platform) if platform is not None else [])


def bare_metal_ldflags(profile: Profile, link_script: str | Path, gcc: str | None = None,
                       board: BoardMemory | None = None, relax: bool = True) -> list[str]:
    """gcc flags linking a bare-metal ELF for ``profile`` (harness ``link.ld``, no crt files).

    The link ``-march`` is the ISA-2.2 base name that selects picolibc's multilib (see
    :func:`multilib_march`). With ``gcc`` given, that multilib is checked to exist
    (:class:`ToolchainError` otherwise); without, the flags are computed only (a Makefile).
    With ``board`` (and ``link_script`` = ``harness/link_board.ld``), the region sizes are
    passed as ``--defsym`` symbols ``MPQ_FLASH_BYTES``, ``MPQ_RAM_BYTES``, ``MPQ_STACK_BYTES``.
    ``relax=False`` links with ``--no-relax``: a relaxed call (``jal`` for ``auipc`` +
    ``jalr``) or gp-relative access depends on where the linker placed everything else, so
    a kernel's retired instructions would depend on the other kernels in its ELF.
    """
    lmarch = (multilib_march(gcc, profile.march, profile.mabi) if gcc is not None
              else profile.march.split("_")[0])
    flags = [f"-march={lmarch}", "-misa-spec=2.2", f"-mabi={profile.mabi}", "-mcmodel=medany",
             "--specs=picolibc.specs", "-nostartfiles", "-T", str(link_script),
             "-Wl,--gc-sections", "-Wl,--no-warn-rwx-segments"]
    flags += [] if relax else ["-Wl,--no-relax"]
    if board is not None:
        flags += [f"-Wl,--defsym=MPQ_FLASH_BYTES={board.flash_bytes}",
                  f"-Wl,--defsym=MPQ_RAM_BYTES={board.ram_bytes}",
                  f"-Wl,--defsym=MPQ_STACK_BYTES={board.stack_bytes}"]
    return flags


def linux_cflags(profile: Profile, include_dirs: Sequence[str | Path] = ()) -> list[str]:
    """gcc flags compiling (and, with ``-static``, linking) a riscv64 Linux executable."""
    return [f"-march={profile.march}", f"-mabi={profile.mabi}", "-O2",
            *(f"-I{d}" for d in include_dirs)]
