"""Where kernels run: the :class:`Runner` base and :func:`create_runner`.

In the manner of MetaSchedule's ``runner/`` package, one abstract base sits beside its
implementations:

* :class:`~tvm_mpq.measure.local_runner.LocalRunner` (``local_runner.py``): measures on this
  machine; prepares each kernel, tunes it if asked, runs chunks of prepared kernels;
* :class:`~tvm_mpq.measure.sim_runner.SimRunner` (``sim_runner.py``): bare metal on Spike or
  QEMU ``-icount``, retired-instruction counts;
* :class:`~tvm_mpq.measure.host_runner.HostRunner` (``host_runner.py``): this machine's wall
  time through TVM's time evaluator;
* :class:`~tvm_mpq.rpc.runner.RPCRunner` (``tvm_mpq/rpc/runner.py``): simulator hosts behind
  a TVM RPC tracker;
* :class:`~tvm_mpq.measure.qemu_user_runner.QemuUserRunner` (``qemu_user_runner.py``): static
  riscv64 Linux executables (the standalone artifact's Linux build); measures no kernels.

A runner knows its backend tag (stored with every record), the unit of its numbers and the
tools it needs. Everything that depends on the backend lives in a runner; the rest of the
package hands a runner object over instead of testing backend strings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvm_mpq.targets import Profile, get_profile

if TYPE_CHECKING:
    from tvm_mpq.measure.baremetal import KernelCase, KernelRun
    from tvm_mpq.measure.campaign import MeasureRequest
    from tvm_mpq.measure.database import MeasureRecord
    from tvm_mpq.measure.toolchain import SimResult

#: backend names :func:`create_runner` accepts
BACKENDS = ("spike", "qemu", "host")
#: the backends that simulate a RISC-V profile bare metal
SIM_BACKENDS = ("spike", "qemu")
#: the backends that run the standalone artifact (``qemu-user``: its static Linux build)
ARTIFACT_BACKENDS = (*SIM_BACKENDS, "qemu-user")
#: default-schedule kernels per simulator run of a campaign
DEFAULT_CHUNK = 8


@dataclass(frozen=True)
class RunSettings:
    """How a campaign measures (see :func:`tvm_mpq.measure.campaign.measure_many`).

    Attributes:
        seed: seed of the random inputs.
        chunk_size: default-schedule kernels per run; a crash loses at most one chunk.
        work_dir: root of the MetaSchedule work directories (one per kernel and budget).
        timeout_per_kernel_s: wall-clock budget per kernel of a run.
    """

    seed: int = 0
    chunk_size: int = DEFAULT_CHUNK
    work_dir: str | None = None
    timeout_per_kernel_s: float = 300.0


#: receives records as they finish (the campaign stores them at once)
RecordSink = Callable[[list["MeasureRecord"]], None]


class Runner(ABC):
    """Measures kernels on one kind of machine.

    Attributes:
        backend: the tag records carry (``"spike"``, ``"qemu"``, ``"host"``, ...).
        unit: what a record's cost is: ``"instructions"`` (deterministic retired-instruction
            counts) or ``"seconds"`` (wall time).
        bare_metal: runs bare-metal ELFs (:meth:`run_elf`, :meth:`run_cases`: kernel cases of
            the harness, the quantize/dequantize passes, the standalone artifact).
        platform: build variant of the C harness / standalone artifact this runner executes
            (``"spike"``, ``"virt"`` for qemu-system, ``"linux"`` for a static Linux binary);
            None when it runs no such binary.
        default_profile: the profile a command line measures when none is given.
    """

    backend: str
    unit: str
    bare_metal: bool = False
    #: :meth:`time_model` measures whole compiled models (the final stage uses it)
    times_models: bool = False
    #: share of all (workload, variant, bits) kernels in tune()'s default measurement design
    design_fraction: float = 1.0
    platform: str | None = None
    default_profile: str = "rv64gc_zbb"

    def check_profile(self, profile: str | Profile) -> Profile:
        """The profile, after checking this runner can measure it (ValueError otherwise)."""
        return get_profile(profile)

    @abstractmethod
    def check_tools(self, profile: Profile) -> None:
        """Raise :class:`~tvm_mpq.measure.toolchain.ToolchainError` naming the fix if a tool
        this runner needs is missing (called before any work)."""

    @abstractmethod
    def measure(self, requests: Sequence[MeasureRequest], profile: Profile,
                settings: RunSettings, done: RecordSink) -> None:
        """Measure ``requests`` (distinct, none of them cached) on ``profile``.

        Every request ends as exactly one record handed to ``done`` as soon as it is known
        (a failure is a record without a number, never an exception); ``done`` may be called
        with several records at once.

        Raises:
            ToolchainError: a tool is missing (nothing more is measured).
        """

    @property
    def unit_note(self) -> str:
        """How to read this runner's costs, when the unit alone does not say (e.g. QEMU
        wall time, which is not hardware latency); ``""`` otherwise."""
        return ""

    def time_model(self, compiled: Any, x: Any) -> float | None:
        """Cost of one whole inference of a compiled model on this runner's machine, for
        runners that run no bare-metal artifact (None: not measured)."""
        return None

    def remote_model(self, compiled: Any) -> Any:
        """A context manager whose value has ``predict(images)``: ``compiled`` running on
        this runner's device, for accuracy measured there (None: this runner has no device
        that runs whole models; accuracy then comes from a host build)."""
        return None

    def run_elf(self, elf: str, profile: Profile, max_instructions: int,
                timeout_s: float) -> SimResult:
        """Run a bare-metal ELF built for :attr:`platform` (:attr:`bare_metal` runners)."""
        raise NotImplementedError(f"backend {self.backend!r} runs no bare-metal ELF")

    def run_cases(self, cases: list[KernelCase], profile: Profile,
                  timeout_s: float = 600) -> list[KernelRun]:
        """Build ``cases`` into one ELF and measure them (:attr:`bare_metal` runners)."""
        raise NotImplementedError(f"backend {self.backend!r} runs no bare-metal kernels")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"


def create_runner(backend: str | Runner) -> Runner:
    """The runner for ``backend`` (a name from :data:`BACKENDS`, or a runner, returned as is)."""
    if isinstance(backend, Runner):
        return backend
    if backend in SIM_BACKENDS:
        from tvm_mpq.measure.sim_runner import SimRunner

        return SimRunner(backend)
    if backend == "host":
        from tvm_mpq.measure.host_runner import HostRunner

        return HostRunner()
    if backend == "qemu-user":  # runs the standalone artifact's Linux build only
        from tvm_mpq.measure.qemu_user_runner import QemuUserRunner

        return QemuUserRunner()
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS} or a Runner")


def last_line(error: str | BaseException) -> str:
    """The last non-empty line of an error's text (TVM's errors end with the message after a
    long traceback): what a record's message keeps."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def __getattr__(name: str) -> Any:
    # the implementations live in their own modules; importable from here as well
    if name == "SimRunner":
        from tvm_mpq.measure.sim_runner import SimRunner

        return SimRunner
    if name == "HostRunner":
        from tvm_mpq.measure.host_runner import HostRunner

        return HostRunner
    if name == "LocalRunner":
        from tvm_mpq.measure.local_runner import LocalRunner

        return LocalRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
