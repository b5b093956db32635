"""The compiled model on a board: :class:`RemoteModel` and :func:`run_remote`.

A :class:`~tvm_mpq.compiler.compiled.CompiledModel` is exported as a riscv64 Linux Relax VM
library (``export_library``), uploaded to a board server registered at a TVM RPC tracker
(the ``tvm_rpc`` of ``tvm-mpq rpc build-runtime``, on the board or under qemu-riscv64), loaded
there and run through the Relax VM over RPC: outputs come back to compare with the host
build, ``RemoteModel.predict`` evaluates many inputs through the board, and ``time`` runs
TVM's time evaluator on the board.

Times are the board's wall time. Under QEMU (``qemu_user=True`` or a key starting with
``qemu``) they are QEMU's, which models no timing: reported, never as hardware latency.
The server runs whatever it is sent: use it on a trusted network (docs/boards.md).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvm_mpq.rpc.tracker import DEFAULT_PORT, parse_addr

__all__ = ["RemoteModel", "RemoteRun", "run_remote"]


@dataclass
class RemoteRun:
    """What :func:`run_remote` measured.

    Attributes:
        output: the board's output for ``x``.
        seconds: median wall time of one inference on the board (``repeat`` timings, each the
            mean of ``number`` calls); ``spread``: (max - min) / median.
        under_qemu: the board was QEMU: ``seconds`` is emulation time, not latency.
        max_abs_diff: max |board - host build| of the output (None when not compared).
    """

    output: np.ndarray
    seconds: float
    spread: float
    under_qemu: bool
    max_abs_diff: float | None = None
    results: list[float] = field(default_factory=list)

    def describe(self) -> str:
        what = "QEMU wall time (not hardware latency)" if self.under_qemu else "board wall time"
        diff = "" if self.max_abs_diff is None else f", max |board - host| {self.max_abs_diff:.3g}"
        return f"{self.seconds * 1e3:.3f} ms per inference ({what}, spread {self.spread:.1%}){diff}"


class RemoteModel:
    """A compiled model loaded on a board server (one RPC session; close it, or use
    ``with``)."""

    def __init__(self, compiled: Any, tracker: str | tuple[str, int], key: str, *,
                 session_timeout: float = 600.0, qemu_user: bool | None = None) -> None:
        import tvm
        from tvm import relax, rpc

        if compiled.profile.is_host:
            raise ValueError("run_remote needs a model compiled for a RISC-V profile (this one "
                             "is for the host)")
        self.compiled = compiled
        self.under_qemu = key.startswith("qemu") if qemu_user is None else qemu_user
        host, port = parse_addr(tracker, DEFAULT_PORT)
        self._tmp = tempfile.TemporaryDirectory(prefix="tvm_mpq_remote_")
        lib = os.path.join(self._tmp.name, "model.so")
        compiled.export_library(lib)
        self.session = rpc.connect_tracker(host, port).request(key, session_timeout=session_timeout)
        self.session.upload(lib)
        self.dev = self.session.cpu(0)
        self.vm = relax.VirtualMachine(self.session.load_module("model.so"), self.dev)
        self._tvm = tvm

    def _input(self, x: Any) -> Any:
        dtype = np.uint8 if self.compiled.integer_io else np.float32
        x = np.ascontiguousarray(np.asarray(x), dtype=dtype)
        if tuple(x.shape) != tuple(self.compiled.input_shape):
            raise ValueError(f"input shape {x.shape} != compiled shape {self.compiled.input_shape}")
        return self._tvm.runtime.tensor(x, self.dev)

    def __call__(self, x: Any) -> np.ndarray:
        """The board's output for ``x`` (the compiled input shape)."""
        # stateful call: a tuple result stays on the board as an object the client cannot
        # index, get_outputs fetches its fields
        self.vm.set_input("main", self._input(x))
        self.vm.invoke_stateful("main")
        out = self.vm.get_outputs("main")
        while isinstance(out, (list, tuple)):
            out = out[0]
        return out.numpy()

    def predict(self, images: Any) -> np.ndarray:
        """Outputs for many inputs through the board, in chunks of the compiled batch."""
        from tvm_mpq.compiler.compiled import predict_in_batches

        return predict_in_batches(self, np.asarray(images), self.compiled.input_shape[0])

    def time(self, x: Any, number: int = 5, repeat: int = 3,
             min_repeat_ms: int = 0) -> tuple[float, float, list[float]]:
        """``(median seconds, spread, every repeat)`` of ``main`` on the board (TVM's time
        evaluator: ``repeat`` timings, each the mean of ``number`` calls)."""
        self.vm.set_input("main", self._input(x))
        f = self.vm.time_evaluator("invoke_stateful", self.dev, number=number, repeat=repeat,
                                   min_repeat_ms=min_repeat_ms)
        res = list(f("main").results)
        med = statistics.median(res)
        return med, (max(res) - min(res)) / med if med > 0 else 0.0, res

    def close(self) -> None:
        self.vm = self.session = None  # type: ignore[assignment]
        self._tmp.cleanup()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_remote(compiled: Any, x: Any, *, tracker: str | tuple[str, int], key: str,
               number: int = 5, repeat: int = 3, compare: bool = True,
               qemu_user: bool | None = None) -> RemoteRun:
    """Run ``compiled`` on the board server under ``key`` once for its output and with the
    time evaluator for its wall time (see the module docstring); with ``compare``, the
    output is checked against the host build (``max_abs_diff``)."""
    with RemoteModel(compiled, tracker, key, qemu_user=qemu_user) as rm:
        out = rm(x)
        sec, spread, res = rm.time(x, number=number, repeat=repeat)
        diff = (float(np.abs(out.astype(np.float64) - compiled(x)).max()) if compare else None)
        return RemoteRun(out, sec, spread, rm.under_qemu, diff, res)
