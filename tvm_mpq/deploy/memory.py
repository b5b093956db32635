"""Memory figures of an artifact: the bare-metal ELF's sections, the board fit, the stack.

:func:`link_figures` links the Spike build of an artifact and reads its section headers
(:func:`elf_sections`, no external tool); :func:`memory_figures` combines them with the arena
plan; :func:`record_stack` adds a run's measured stack; :func:`memory_table` prints them. The
terms are defined in docs/standalone.md ("Memory figures").
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvm_mpq.deploy.buildrules import BuildError, build_rules, run_rules, tool_vars
from tvm_mpq.measure import toolchain
from tvm_mpq.measure.toolchain import BoardMemory, ToolchainError
from tvm_mpq.targets import Profile

#: the ELF the figures are read from (the Spike build; the QEMU one differs by its console)
FIGURES_ELF = "build/spike/model.elf"

#: stack reserved by the board layout when ``stack_kib`` is not given
DEFAULT_STACK_KIB = 16

_SHF_WRITE, _SHF_ALLOC, _SHF_EXEC, _SHF_TLS = 0x1, 0x2, 0x4, 0x400
_SHT_SYMTAB, _SHT_NOBITS = 2, 8


class DoesNotFitError(ValueError):
    """The model does not fit the board's RAM or flash (the message names each section that
    does not fit and the overflow in bytes)."""


@dataclass(frozen=True)
class Section:
    """One section header of an ELF file."""

    name: str
    type: int
    flags: int
    addr: int
    size: int


def _elf_headers(b: bytes, path: str | Path) -> tuple[bool, list[tuple[int, ...]], Any]:
    """``(is64, section headers (name, type, flags, addr, offset, size, link), name of a
    .shstrtab offset)`` of a little-endian ELF32/ELF64 image."""
    if b[:4] != b"\x7fELF" or b[5] != 1:
        raise ValueError(f"{path}: not a little-endian ELF file")
    is64 = b[4] == 2
    if is64:
        shoff, = struct.unpack_from("<Q", b, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3A)
        fmt = "<IIQQQQI"
    else:
        shoff, = struct.unpack_from("<I", b, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x2E)
        fmt = "<IIIIIII"
    heads = [struct.unpack_from(fmt, b, shoff + i * shentsize) for i in range(shnum)]
    stroff = heads[shstrndx][4]
    return is64, heads, lambda off: _cstr(b, stroff + off)


def _cstr(b: bytes, off: int) -> str:
    return b[off:b.index(b"\0", off)].decode()


def elf_sections(path: str | Path) -> list[Section]:
    """The section headers of a little-endian ELF32/ELF64 file."""
    _, heads, name = _elf_headers(Path(path).read_bytes(), path)
    return [Section(name(h[0]), h[1], h[2], h[3], h[5]) for h in heads]


def undefined_symbols(path: str | Path) -> set[str]:
    """The symbols an ELF object (or executable) references without defining them: what the
    linker must find elsewhere (e.g. ``roundevenf``, or libgcc's soft-float ``__addsf3``)."""
    b = Path(path).read_bytes()
    is64, heads, _ = _elf_headers(b, path)
    fmt, size = ("<IBBHQQ", 24) if is64 else ("<IIIBBH", 16)
    out = set()
    for h in heads:
        if h[1] != _SHT_SYMTAB:
            continue
        stroff = heads[h[6]][4]
        for off in range(h[4] + size, h[4] + h[5], size):  # entry 0 is the null symbol
            e = struct.unpack_from(fmt, b, off)
            name_off, shndx = e[0], e[3] if is64 else e[5]
            if shndx == 0 and name_off:
                out.add(_cstr(b, stroff + name_off))
    return out


def elf_figures(path: str | Path) -> dict[str, int]:
    """Bytes per kind of allocated section: ``code_bytes`` (executable), ``rodata_bytes``
    (read-only data), ``data_bytes`` (initialised writable data: in flash and in RAM),
    ``bss_bytes`` (zeroed or uninitialised RAM, without the arena and the stack),
    ``arena_section_bytes`` (``.mpq_arena``) and ``stack_reserve_bytes`` (``.stack``, board
    layout only)."""
    out = dict.fromkeys(("code_bytes", "rodata_bytes", "data_bytes", "bss_bytes",
                         "arena_section_bytes", "stack_reserve_bytes"), 0)
    for s in elf_sections(path):
        if not s.flags & _SHF_ALLOC or (s.flags & _SHF_TLS and s.type == _SHT_NOBITS):
            continue  # not in memory / .tbss (its bytes are .tbss_space)
        if s.flags & _SHF_EXEC:
            key = "code_bytes"
        elif not s.flags & _SHF_WRITE:
            key = "rodata_bytes"
        elif s.type != _SHT_NOBITS:
            key = "data_bytes"
        else:
            key = {".mpq_arena": "arena_section_bytes",
                   ".stack": "stack_reserve_bytes"}.get(s.name, "bss_bytes")
        out[key] += s.size
    return out


def board_memory(ram_kib: float | None, flash_kib: float | None,
                 stack_kib: float | None) -> BoardMemory | None:
    """The board layout for the given sizes (None when neither RAM nor flash is given: the
    simulators' default layout, ``harness/link.ld``). An unspecified region is 256 MiB."""
    if ram_kib is None and flash_kib is None:
        if stack_kib is not None:
            raise ValueError("stack_kib needs a board layout: give ram_kib and/or flash_kib")
        return None

    def nbytes(kib: float | None, default: int) -> int:
        return default if kib is None else int(round(kib * 1024))

    return BoardMemory(flash_bytes=nbytes(flash_kib, 256 << 20),
                       ram_bytes=nbytes(ram_kib, 256 << 20),
                       stack_bytes=nbytes(stack_kib, DEFAULT_STACK_KIB << 10))


def does_not_fit(linker_output: str, board: BoardMemory | None) -> DoesNotFitError | None:
    """The linker's "will not fit in region" / "region overflowed" errors as one clear
    message, or None when the output has none."""
    over = {m.group(1): int(m.group(2)) for m in
            re.finditer(r"region `(\w+)' overflowed by (\d+) bytes", linker_output)}
    if not over:
        return None
    secs: dict[str, list[str]] = {}
    for m in re.finditer(r"section `([^']+)' will not fit in region `(\w+)'", linker_output):
        secs.setdefault(m.group(2), []).append(m.group(1))
    size = {"ram": board.ram_bytes if board else None,
            "flash": board.flash_bytes if board else None}
    parts = []
    for region, n in over.items():
        what = ", ".join(secs.get(region, [])) or "the program"
        lim = f" ({region}_kib={size[region] / 1024:g})" if size.get(region) else ""
        parts.append(f"section {what} does not fit in {region}{lim}: region {region} "
                     f"overflowed by {n} bytes")
    return DoesNotFitError("the model does not fit the board: " + "; ".join(parts))


def link_figures(directory: str | Path, prof: Profile, linux: bool,
                 board: BoardMemory | None, float_shims: bool = True) -> dict[str, Any]:
    """Link the artifact's Spike ELF (with its zero ``input.bin``) and read its figures
    (``float_shims``: see :func:`~tvm_mpq.deploy.buildrules.tool_vars`).

    Without the bare-metal toolchain the figures are empty (``{}``), unless ``board`` asks for
    a fit check. Raises :class:`DoesNotFitError` when a section does not fit the board.
    """
    try:
        gcc = toolchain.find_gcc()
        toolchain.find_picolibc()
    except ToolchainError:
        if board is not None:
            raise
        return {}
    values = {**tool_vars(prof, board, float_shims), "CC_BM": gcc, "INPUT": "input.bin"}
    try:
        run_rules(build_rules(prof, linux)["spike"], str(directory), values)
    except BuildError as e:
        err = does_not_fit(str(e), board)
        if err is not None:
            raise err from None
        if board is not None:
            raise
        return {"link_error": str(e)}
    return elf_figures(Path(directory) / FIGURES_ELF)


def memory_figures(plan: dict[str, int], elf: dict[str, Any], board: BoardMemory | None
                   ) -> dict[str, Any]:
    """The artifact's ``memory`` (``manifest.json``): the plan's figures (``arena_bytes``,
    ``workspace_bytes``, ``arena_lower_bound``, ``weight_bytes``), the ELF's (None without
    the toolchain) and their totals; ``stack_bytes`` and ``ram_bytes`` stay None until a run
    measures the stack (:func:`record_stack`)."""
    have = "code_bytes" in elf
    m: dict[str, Any] = {**plan, "stack_bytes": None, "model_stack_bytes": None,
                         "stack_size": board.stack_bytes if board else toolchain.SIM_STACK_BYTES}
    for k in ("code_bytes", "rodata_bytes", "data_bytes", "bss_bytes"):
        m[k] = elf.get(k)
    m["static_ram_bytes"] = (elf["data_bytes"] + elf["bss_bytes"] + elf["arena_section_bytes"]
                             if have else None)
    m["ram_bytes"] = None
    m["flash_bytes"] = (elf["code_bytes"] + elf["rodata_bytes"] + elf["data_bytes"]
                        if have else None)
    m["ram_kib"] = board.ram_bytes / 1024 if board else None
    m["flash_kib"] = board.flash_bytes / 1024 if board else None
    m["elf"] = FIGURES_ELF if have else None
    if "link_error" in elf:
        m["link_error"] = elf["link_error"]
    return m


def record_stack(directory: str | Path, manifest: dict[str, Any], stack: int,
                 model_stack: int) -> None:
    """Record a run's stack high-water marks in ``manifest`` and its ``manifest.json`` (the
    largest seen over runs), and complete ``ram_bytes``."""
    m = manifest.setdefault("memory", {})
    m["stack_bytes"] = max(stack, m.get("stack_bytes") or 0)
    m["model_stack_bytes"] = max(model_stack, m.get("model_stack_bytes") or 0)
    if m.get("static_ram_bytes") is not None:
        m["ram_bytes"] = m["static_ram_bytes"] + m["stack_bytes"]
    path = Path(directory) / "manifest.json"
    if path.is_file():
        path.write_text(json.dumps(manifest, indent=1))


def _fmt(n: Any) -> str:
    return "-" if n is None else f"{n:,}"


def memory_table(m: dict[str, Any]) -> str:
    """The memory figures as a small text table (bytes)."""
    stack = (f"{_fmt(m.get('stack_bytes'))} measured ({_fmt(m.get('model_stack_bytes'))} in "
             f"mpq_model_run), {_fmt(m.get('stack_size'))} reserved")
    ram_lim = f" of {m['ram_kib']:g} KiB" if m.get("ram_kib") else ""
    flash_lim = f" of {m['flash_kib']:g} KiB" if m.get("flash_kib") else ""
    other_ro = (m["rodata_bytes"] - m["weight_bytes"]) if m.get("rodata_bytes") is not None else None
    rows = [
        ("RAM", ""),
        ("  arena", f"{_fmt(m.get('arena_bytes'))} (lower bound {_fmt(m.get('arena_lower_bound'))},"
                    f" workspace {_fmt(m.get('workspace_bytes'))})"),
        ("  .data + .bss", _fmt(None if m.get("data_bytes") is None
                                else m["data_bytes"] + m["bss_bytes"])),
        ("  stack", stack),
        ("  ram_bytes", _fmt(m.get("ram_bytes")) + ram_lim),
        ("flash", ""),
        ("  code (.text)", _fmt(m.get("code_bytes"))),
        ("  weights", _fmt(m.get("weight_bytes"))),
        ("  other .rodata", _fmt(other_ro)),
        ("  .data image", _fmt(m.get("data_bytes"))),
        ("  flash_bytes", _fmt(m.get("flash_bytes")) + flash_lim),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}".rstrip() for k, v in rows)
