"""The deploy stage's public result types: a written artifact and one standalone inference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvm_mpq.measure.toolchain import BoardMemory
from tvm_mpq.targets import Profile


@dataclass
class StandaloneArtifact:
    """A written standalone model (see ``manifest.json`` in ``directory`` for the details).

    Attributes:
        directory: where everything was written.
        profile: the RISC-V profile the kernel objects were built for.
        input_shape, output_shape: shapes of ``mpq_model_run``'s buffers (their dtypes:
            :attr:`input_dtype`, :attr:`output_dtype`).
        arena_bytes: size of the static arena after the liveness plan: the tensors passed
            between calls and, at its start, the kernels' workspace region.
        naive_bytes: sum of all intermediate tensors' and workspaces' sizes (what no reuse
            would need).
        weight_bytes: size of the constant blob (``weights.bin``).
        num_ops: packed calls per inference.
        linux: whether a riscv64 Linux kernel object was built (rv64 profiles only).
        manifest: the parsed ``manifest.json``.
    """

    directory: str
    profile: Profile
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    arena_bytes: int
    naive_bytes: int
    weight_bytes: int
    num_ops: int
    linux: bool
    manifest: dict[str, Any] = field(repr=False)

    @property
    def input_dtype(self) -> str:
        """``"float32"``, or ``"uint8"`` for the codes of an ``integer_io`` model."""
        return self.manifest["input"]["dtype"]

    @property
    def output_dtype(self) -> str:
        """``"float32"``, or ``"uint8"`` for the codes of an ``integer_io`` model."""
        return self.manifest["output"]["dtype"]

    @property
    def integer_io(self) -> bool:
        """``mpq_model_run`` takes input codes and returns output codes (uint8)."""
        return bool(self.manifest.get("integer_io", False))

    @property
    def input_quant(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` of the input codes (``integer_io``), else None: a code
        ``q`` stands for ``(q - zero_point) * scale``."""
        q = self.manifest["input"].get("quant")
        return (q["scale"], q["zero_point"]) if q else None

    @property
    def output_quant(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` of the output codes (``integer_io``), else None."""
        q = self.manifest["output"].get("quant")
        return (q["scale"], q["zero_point"]) if q else None

    @property
    def memory(self) -> dict[str, Any]:
        """The memory figures in bytes (docs/standalone.md, "Memory figures"): ``arena_bytes``,
        ``workspace_bytes``, ``arena_lower_bound``, ``stack_bytes`` (None until a run measured
        it), ``code_bytes``, ``weight_bytes``, ``ram_bytes``, ``flash_bytes``, ... (the ELF
        figures are None when the export found no bare-metal toolchain)."""
        return self.manifest.get("memory", {})

    @property
    def board(self) -> BoardMemory | None:
        """The board layout it was exported for (``ram_kib``/``flash_kib``), or None."""
        b = self.manifest.get("board")
        return BoardMemory(**b) if b else None

    def memory_table(self) -> str:
        """:attr:`memory` as a text table."""
        from tvm_mpq.deploy.memory import memory_table

        return memory_table(self.memory)


@dataclass
class StandaloneResult:
    """One standalone inference.

    Attributes:
        output: the model output (``output_shape``; float32, or the uint8 output codes of an
            ``integer_io`` artifact), or None unless ``status == "ok"``.
        instructions: retired instructions of ``mpq_model_run`` (bare metal only; None on
            ``qemu-user`` and on failure).
        status: ``"ok" | "build_error" | "run_error" | "timeout"``.
        message: empty when ok, otherwise what went wrong.
        cycles: mcycle delta (equals ``instructions`` on Spike and QEMU icount).
        backend: the backend it ran on.
        wall_s: simulator wall time.
        op_instructions: with ``profile_ops=True``, the retired instructions of every op in
            call order, as ``(op index, PrimFunc name, instructions)`` (the names are those
            of the manifest's ``ops``); their sum is ``instructions`` minus the driver's few
            counter reads per call. None otherwise.
        stack_bytes: the program's stack high-water mark in bytes (bare metal; the run also
            records it in the artifact's ``memory``). None on ``qemu-user`` and on failure.
        model_stack_bytes: the part of it below the caller's frame: what ``mpq_model_run``
            (with its kernels) adds to the stack of whoever calls it.
    """

    output: np.ndarray | None
    instructions: int | None
    status: str
    message: str
    cycles: int | None = None
    backend: str = ""
    wall_s: float = 0.0
    op_instructions: list[tuple[int, str, int]] | None = None
    stack_bytes: int | None = None
    model_stack_bytes: int | None = None

    def op_table(self) -> list[tuple[str, int, int]]:
        """Per-op counts grouped by PrimFunc name: ``(name, calls, instructions)``, dearest
        first (needs ``profile_ops=True``)."""
        if self.op_instructions is None:
            raise ValueError("no per-op counts: run with profile_ops=True on spike or qemu")
        agg: dict[str, list[int]] = {}
        for _, name, n in self.op_instructions:
            a = agg.setdefault(name, [0, 0])
            a[0] += 1
            a[1] += n
        return sorted(((k, c, n) for k, (c, n) in agg.items()), key=lambda r: -r[2])
