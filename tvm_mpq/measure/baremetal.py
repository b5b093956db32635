"""Deterministic cost measurement: TVM kernels run bare-metal on Spike or QEMU (icount).

All cases of a call are compiled into one object, linked with the C harness in
``tvm_mpq/measure/harness`` into one ELF, and run in one simulator process. The harness reads
``minstret``/``mcycle`` around each packed call and checks the outputs on the target, so the
host only parses one line per kernel. Counts are instruction counts: identical on Spike and
QEMU, and identical run after run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tvm_mpq.measure import toolchain
from tvm_mpq.measure.harness_output import KernelRun, failed_run, parse_run
from tvm_mpq.targets import Profile

if TYPE_CHECKING:
    import tvm

    from tvm_mpq.measure.runner import Runner

__all__ = ["HARNESS_DIR", "KernelCase", "KernelRun", "PrebuiltCase", "run_kernels", "run_prebuilt"]

HARNESS_DIR = Path(__file__).resolve().parent / "harness"
_HARNESS_SOURCES = ("crt0.S", "htif.c", "tvm_rt_stubs.c", "driver.c")
_HARNESS_HEADERS = ("harness.h", "counters.h", "link.ld")
MAX_ARGS = 64  # driver.c: MPQ_MAX_ARGS
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class KernelCase:
    """One kernel to measure.

    Attributes:
        name: unique, C-identifier-safe; becomes the PrimFunc's ``global_symbol``.
        func: scheduled (or plain) ``tvm.tirx.PrimFunc``; its params order is the args order.
        args: one numpy array per PrimFunc param (inputs and output buffers).
        expected: param index -> expected array after the call. These params are prefilled
            with garbage on the target before the call, so unwritten elements are caught.
        rtol, atol: tolerance for float outputs (integer outputs must match exactly).
    """

    name: str
    func: tvm.tirx.PrimFunc
    args: list[np.ndarray]
    expected: dict[int, np.ndarray]
    rtol: float = 1e-5
    atol: float = 1e-6


@dataclass
class PrebuiltCase:
    """A kernel already compiled to a RISC-V object file (e.g. a MetaSchedule artifact).

    ``symbol`` is the PrimFunc's global symbol inside ``obj`` (the entry is
    ``__tvm_ffi_<symbol>``); it is renamed to ``name`` when linking, so several objects that
    all export ``main`` can share one ELF.
    """

    name: str
    obj: str
    symbol: str
    args: list[np.ndarray]
    expected: dict[int, np.ndarray] = field(default_factory=dict)
    rtol: float = 1e-5
    atol: float = 1e-6


# --------------------------------------------------------------------------------------------
# public API


def run_kernels(
    cases: list[KernelCase],
    profile: str | Profile,
    backend: str | Runner = "spike",
    workdir: str | None = None,
    timeout_s: float = 600,
    max_instructions: int = 10**10,
) -> list[KernelRun]:
    """Build ``cases`` for ``profile`` and measure them in one simulator run.

    Args:
        cases: kernels with inputs and expected outputs; names must be unique identifiers.
        profile: target profile name or :class:`~tvm_mpq.targets.Profile`.
        backend: a bare-metal :class:`~tvm_mpq.measure.runner.Runner`, or ``"spike"`` or
            ``"qemu"`` (``qemu-system-riscv{32,64} -M virt`` with icount).
        workdir: where build files are kept; a temporary directory (removed) if None.
        timeout_s: wall-clock limit of the whole call (builds and simulator runs).
        max_instructions: instruction watchdog of each simulator run.

    Returns:
        One :class:`KernelRun` per case, in order. A case that fails to build is reported as
        ``build_error`` without affecting the others; a trap or timeout in one kernel is
        reported on that kernel and the kernels after it are measured in a fresh run.

    Raises:
        ToolchainError: a compiler, libc or simulator is missing.
        ValueError: bad names, profile or backend.
    """
    import tvm

    runner, prof = _bare_metal_runner(profile, backend)
    names = [c.name for c in cases]
    _check_names(names)
    deadline = time.monotonic() + timeout_s
    with _workdir(workdir) as wd:
        results: dict[str, KernelRun] = {}
        ready: list[_Entry] = []
        objs = _compile_cases(cases, prof.target("baremetal"), wd, results, tvm)
        for c in cases:
            if c.name in objs:
                ready.append(_Entry(c.name, objs[c.name], c.name, c.args, c.expected,
                                    c.rtol, c.atol))
        results.update(_measure(ready, prof, runner, wd, deadline, max_instructions))
        return [results[n] for n in names]


def run_prebuilt(
    cases: list[PrebuiltCase],
    profile: str | Profile,
    backend: str | Runner = "spike",
    workdir: str | None = None,
    timeout_s: float = 600,
    max_instructions: int = 10**10,
) -> list[KernelRun]:
    """Like :func:`run_kernels` for kernels already compiled to object files."""
    runner, prof = _bare_metal_runner(profile, backend)
    names = [c.name for c in cases]
    _check_names(names)
    deadline = time.monotonic() + timeout_s
    with _workdir(workdir) as wd:
        objcopy = toolchain.find_gcc().replace("-gcc", "-objcopy")
        results: dict[str, KernelRun] = {}
        ready: list[_Entry] = []
        for c in cases:
            dst = os.path.join(wd, f"pre_{c.name}.o")
            proc = subprocess.run(
                [objcopy, f"--redefine-sym=__tvm_ffi_{c.symbol}=__tvm_ffi_{c.name}", c.obj, dst],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                results[c.name] = failed_run(c.name, "build_error", proc.stderr.strip())
                continue
            ready.append(_Entry(c.name, dst, c.name, c.args, c.expected, c.rtol, c.atol))
        results.update(_measure(ready, prof, runner, wd, deadline, max_instructions))
        return [results[n] for n in names]


# --------------------------------------------------------------------------------------------
# internals


@dataclass
class _Entry:
    name: str
    obj: str
    symbol: str
    args: list[np.ndarray]
    expected: dict[int, np.ndarray]
    rtol: float
    atol: float


def _bare_metal_runner(profile: str | Profile, backend: str | Runner) -> tuple[Runner, Profile]:
    """The runner and profile, checked, with every tool they need (raised before any work)."""
    from tvm_mpq.measure.runner import create_runner

    runner = create_runner(backend)
    if not runner.bare_metal:
        raise ValueError(f"backend {runner.backend!r} runs no bare-metal kernels; use 'spike' or "
                         "'qemu'")
    prof = runner.check_profile(profile)
    runner.check_tools(prof)
    return runner, prof


def _check_names(names: list[str]) -> None:
    bad = [n for n in names if not _IDENT.match(n)]
    if bad:
        raise ValueError(f"kernel names must be C identifiers: {bad}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate kernel names: {dup}")


class _workdir:
    """Context manager: the given directory (kept) or a temporary one (removed)."""

    def __init__(self, path: str | None):
        self.path, self.tmp = path, None

    def __enter__(self) -> str:
        if self.path is None:
            self.tmp = tempfile.mkdtemp(prefix="tvm_mpq_bm_")
            return self.tmp
        os.makedirs(self.path, exist_ok=True)
        return os.path.abspath(self.path)

    def __exit__(self, *exc) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _compile_cases(cases, target, wd: str, results: dict, tvm) -> dict[str, str]:
    """Compile all cases into one object; on failure, one object per case."""
    funcs = {}
    for c in cases:
        try:
            if len(c.func.params) != len(c.args):
                raise ValueError(f"PrimFunc has {len(c.func.params)} params, got {len(c.args)} args")
            if len(c.args) > MAX_ARGS:
                raise ValueError(f"more than {MAX_ARGS} arguments")
            _arg_layouts(c.args, c.expected)  # dtype/shape problems are this case's build error
            funcs[c.name] = c.func.with_attr("global_symbol", c.name)
        except Exception as e:  # noqa: BLE001 - any bad case is that case's build error
            results[c.name] = failed_run(c.name, "build_error", f"{type(e).__name__}: {e}")
    if not funcs:
        return {}
    path = os.path.join(wd, "kernels.o")
    try:
        tvm.compile(tvm.IRModule(funcs), target=target).mod.write_to_file(path)
        return dict.fromkeys(funcs, path)
    except Exception:  # noqa: BLE001 - fall back to per-case builds to isolate the culprit
        pass
    objs = {}
    for name, f in funcs.items():
        p = os.path.join(wd, f"k_{name}.o")
        try:
            tvm.compile(tvm.IRModule({name: f}), target=target).mod.write_to_file(p)
            objs[name] = p
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()
            results[name] = failed_run(name, "build_error",
                                  f"{type(e).__name__}: {msg[-1] if msg else ''}")
    return objs


def _arg_layouts(args: list[np.ndarray], expected: dict[int, np.ndarray]) -> None:
    for i, a in enumerate(args):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"arg {i} is {type(a).__name__}, not a numpy array")
        toolchain.dl_dtype(a.dtype)
    for i, e in expected.items():
        if not 0 <= i < len(args):
            raise ValueError(f"expected index {i} out of range")
        e = np.asarray(e)
        if e.shape != args[i].shape or e.dtype != args[i].dtype:
            raise ValueError(
                f"expected[{i}] is {e.dtype}{e.shape}, arg is {args[i].dtype}{args[i].shape}"
            )


def _le_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.tobytes()


# ---- harness objects (cached: they depend only on flags and harness sources) ----


def _cflags(prof: Profile, platform: str) -> list[str]:
    return toolchain.bare_metal_cflags(prof, [HARNESS_DIR, toolchain.ffi_include_dir()], platform)


def _harness_objects(gcc: str, prof: Profile, platform: str, wd: str) -> list[str]:
    flags = _cflags(prof, platform)
    h = hashlib.sha256(" ".join([gcc, *flags]).encode())
    for f in _HARNESS_SOURCES + _HARNESS_HEADERS:
        h.update((HARNESS_DIR / f).read_bytes())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache = os.path.join(base, "tvm_mpq", "harness", f"{prof.name}-{platform}-{h.hexdigest()[:16]}")
    objs = [os.path.join(cache, Path(s).stem + ".o") for s in _HARNESS_SOURCES]
    if all(os.path.isfile(o) for o in objs):
        return objs
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(cache))
    except OSError:  # read-only home: build inside the workdir instead
        cache = tmp = tempfile.mkdtemp(dir=wd)
    for s in _HARNESS_SOURCES:
        try:
            _cc([gcc, *flags, "-c", str(HARNESS_DIR / s), "-o",
                 os.path.join(tmp, Path(s).stem + ".o")])
        except _LinkError as e:
            raise RuntimeError(f"harness {s} does not compile for {prof.name}: {e}") from None
    if tmp != cache:
        try:
            os.rename(tmp, cache)  # atomic publish; a concurrent winner is just as good
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(cache, Path(s).stem + ".o") for s in _HARNESS_SOURCES]


def _cc(cmd: list[str], cwd: str | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise _LinkError(_compact_ld((proc.stderr or proc.stdout).strip()))


def _compact_ld(text: str, keep: int = 4) -> str:
    """The distinct diagnostics of a gcc/ld error, without the long tool paths."""
    lines = []
    for ln in text.splitlines():
        ln = re.sub(r"^\S*/bin/ld: ", "ld: ", ln.strip())
        ln = re.sub(r"\(\.text\S*\+0x[0-9a-f]+\)", "", ln)
        if ln and ln not in lines and not ln.startswith("collect2"):
            lines.append(ln)
    more = f" (+{len(lines) - keep} more)" if len(lines) > keep else ""
    return " | ".join(lines[:keep]) + more


class _LinkError(Exception):
    pass


# ---- generated case table and data ----


def _write_tables(entries: list[_Entry], d: str, watchdog_ticks: int) -> tuple[str, str]:
    """Write binary data files, ``data.S`` (.incbin) and ``cases.c``; return their paths."""
    asm = ["/* generated by tvm_mpq.measure.baremetal */"]
    c = ['/* generated by tvm_mpq.measure.baremetal */', '#include "harness.h"', ""]
    table = []
    for ci, e in enumerate(entries):
        c.append(f"extern int32_t __tvm_ffi_{e.symbol}(void *, const TVMFFIAny *, int32_t, "
                 "TVMFFIAny *);")
        rows = []
        for ai, a in enumerate(e.args):
            sym = f"mpq_c{ci}_a{ai}"
            code, bits = toolchain.dl_dtype(a.dtype)
            if ai in e.expected:  # output buffer: prefilled on target, no need to load it
                asm += [f"  .section .noinit.{sym}, \"aw\", @nobits", "  .balign 64",
                        f"  .globl {sym}", f"{sym}:", f"  .skip {max(a.nbytes, 1)}"]
                esym = f"mpq_c{ci}_e{ai}"
                _incbin(asm, d, esym, ".rodata", _le_bytes(
                    np.asarray(e.expected[ai], dtype=a.dtype)))
                c.append(f"extern const uint8_t {esym}[];")
                exp = esym
            else:
                _incbin(asm, d, sym, ".data", _le_bytes(a))
                exp = "NULL"
            c.append(f"extern uint8_t {sym}[];")
            shape = ", ".join(str(int(s)) for s in a.shape) or "0"
            c.append(f"static const int64_t {sym}_shape[] = {{{shape}}};")
            rows.append(f"  {{{sym}, {exp}, {sym}_shape, {a.nbytes}ull, {a.ndim}, {code}, {bits}}},")
        c.append(f"static const mpq_arg_t mpq_c{ci}_args[] = {{")
        c += rows or ["  {0},"]
        c.append("};")
        table.append(f'  {{"{e.name}", __tvm_ffi_{e.symbol}, mpq_c{ci}_args, {len(e.args)}, '
                     f"{float(e.rtol)!r}f, {float(e.atol)!r}f}},")
    c += ["", "const mpq_case_t mpq_cases[] = {", *table, "};",
          f"const int32_t mpq_num_cases = {len(entries)};",
          f"const uint64_t mpq_watchdog_ticks = {int(watchdog_ticks)}ull;", ""]
    s_path, c_path = os.path.join(d, "data.S"), os.path.join(d, "cases.c")
    Path(s_path).write_text("\n".join(asm) + "\n")
    Path(c_path).write_text("\n".join(c))
    return s_path, c_path


def _incbin(asm: list[str], d: str, sym: str, section: str, data: bytes) -> None:
    fname = f"{sym}.bin"
    Path(d, fname).write_bytes(data)
    flags = '"a"' if section == ".rodata" else '"aw"'
    asm += [f"  .section {section}.{sym}, {flags}", "  .balign 64", f"  .globl {sym}",
            f"{sym}:", f'  .incbin "{fname}"']
    if not data:
        asm.append("  .byte 0")


def _link(entries: list[_Entry], prof: Profile, platform: str, d: str, max_instructions: int,
          harness: list[str]) -> str:
    gcc = toolchain.find_gcc()
    os.makedirs(d, exist_ok=True)
    s_path, c_path = _write_tables(entries, d, max(1, max_instructions // 100))
    flags = _cflags(prof, platform)
    _cc([gcc, *flags, "-c", s_path, "-o", os.path.join(d, "data.o")], cwd=d)
    _cc([gcc, *flags, "-c", c_path, "-o", os.path.join(d, "cases.o")], cwd=d)
    kobjs = list(dict.fromkeys(e.obj for e in entries))
    elf = os.path.join(d, "run.elf")
    # unrelaxed: a kernel's count must not depend on the other kernels linked beside it
    ldflags = toolchain.bare_metal_ldflags(prof, HARNESS_DIR / "link.ld", gcc, relax=False)
    _cc([gcc, *ldflags, "-o", elf, *harness, os.path.join(d, "cases.o"),
         os.path.join(d, "data.o"), *kobjs, "-lm"])
    return elf


# ---- running and parsing ----

def _measure(entries: list[_Entry], prof: Profile, runner: Runner, wd: str, deadline: float,
             max_instructions: int) -> dict[str, KernelRun]:
    """Link and run ``entries``; after a crash, re-run the ones not yet measured."""
    results: dict[str, KernelRun] = {}
    if not entries:
        return results
    platform = runner.platform  # "spike" or "virt": the harness build variant
    harness = _harness_objects(toolchain.find_gcc(), prof, platform, wd)
    todo = list(entries)
    attempt = 0
    while todo:
        d = os.path.join(wd, f"run{attempt}")
        attempt += 1
        try:
            elf = _link(todo, prof, platform, d, max_instructions, harness)
        except _LinkError as e:
            if len(todo) == 1:
                results[todo[0].name] = failed_run(todo[0].name, "build_error", f"link failed: {e}")
                return results
            # find the culprits by linking each alone, then go on with the rest
            good = []
            for i, en in enumerate(todo):
                try:
                    _link([en], prof, platform, os.path.join(d, f"single{i}"),
                          max_instructions, harness)
                    good.append(en)
                except _LinkError as e1:
                    results[en.name] = failed_run(en.name, "build_error", f"link failed: {e1}")
            if len(good) == len(todo):  # only fails together: give up on all of them
                for en in todo:
                    results[en.name] = failed_run(en.name, "build_error", f"link failed: {e}")
                return results
            todo = good
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            for en in todo:
                results[en.name] = failed_run(en.name, "timeout", "wall-clock timeout before run")
            return results
        # backstop only (Spike): the harness watchdog (max_instructions) fires first
        sim = runner.run_elf(elf, prof, max_instructions + max_instructions // 10 + 10**6, left)
        done, crashed_at, _status, reason = parse_run(sim, [en.name for en in todo], results)
        if done or crashed_at is None:
            return results
        # kernel `crashed_at` trapped / timed out; kernels after it never ran
        rest = todo[crashed_at + 1:]
        if not rest:
            return results
        if sim.timed_out or time.monotonic() >= deadline:
            for en in rest:
                results[en.name] = failed_run(en.name, "run_error",
                                              f"not run: {todo[crashed_at].name} hit {reason}")
            return results
        todo = rest
    return results
