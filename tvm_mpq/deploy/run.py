"""Running an artifact: build it for the runner's platform and run one inference
(:func:`run_standalone`)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvm_mpq.deploy.artifact import StandaloneArtifact, StandaloneResult
from tvm_mpq.deploy.buildrules import BuildError, build_rules, run_rules, tool_vars
from tvm_mpq.deploy.export import export_standalone, load_standalone
from tvm_mpq.deploy.memory import does_not_fit, record_stack
from tvm_mpq.measure import toolchain
from tvm_mpq.measure.runner import ARTIFACT_BACKENDS, Runner, create_runner
from tvm_mpq.targets import Profile, get_profile

if TYPE_CHECKING:
    from tvm_mpq.compiler.compiled import CompiledModel

def _runner(backend: str | Runner) -> Runner:
    """The runner of ``backend``: one that runs a built artifact (it has a ``platform``)."""
    try:
        runner = create_runner(backend)
    except ValueError:
        raise ValueError(f"unknown backend {backend!r}; expected one of {ARTIFACT_BACKENDS}") from None
    if runner.platform is None:
        raise ValueError(f"backend {runner.backend!r} cannot run a standalone artifact; "
                         f"expected one of {ARTIFACT_BACKENDS}")
    return runner


def run_standalone(
    compiled_or_artifact: CompiledModel | StandaloneArtifact | str,
    x: np.ndarray | Any,
    backend: str | Runner = "spike",
    *,
    profile: str | Profile | None = None,
    directory: str | None = None,
    max_instructions: int = 10**10,
    timeout_s: float = 1800,
    profile_ops: bool = False,
) -> StandaloneResult:
    """Build the standalone model and run one inference on ``x``.

    Args:
        compiled_or_artifact: a :class:`StandaloneArtifact`, its directory, or a
            :class:`~tvm_mpq.compiler.compiled.CompiledModel` (exported first, to ``directory`` or a
            temporary directory that is removed afterwards).
        x: the input, of the model's input shape (numpy or torch): float (converted to
            float32), or for an ``integer_io`` artifact its integer codes (uint8: quantize a
            float input with ``cm.input_quant``).
        backend: ``"spike"`` / ``"qemu"`` (bare metal: ``qemu-system-riscv* -M virt -icount
            shift=0,sleep=off``), both with instruction counts; or ``"qemu-user"`` (static
            riscv64 Linux executable under ``qemu-riscv64``; no counts). A runner of
            :mod:`tvm_mpq.measure.runner` with one of those platforms is accepted too.
        profile: export profile when given a CompiledModel.
        directory: export directory when given a CompiledModel.
        max_instructions: bare-metal watchdog (whole program).
        timeout_s: wall-clock limit of the simulator run.
        profile_ops: also count each op's retired instructions (minstret around every call;
            ``StandaloneResult.op_instructions``). Bare-metal backends only; the per-call
            counter reads add a few instructions to the whole-model count.

    Returns:
        :class:`StandaloneResult` (its ``output`` of the artifact's output dtype: float32, or
        the uint8 output codes of an ``integer_io`` artifact); build and run failures are
        reported in ``status``.

    Raises:
        ToolchainError: the cross compiler, libc or simulator for ``backend`` is missing.
        ValueError: unknown backend, wrong input shape, or (``integer_io``) an input that is
            not integer codes in the input dtype's range.
    """
    runner = _runner(backend)
    tmp = None
    if isinstance(compiled_or_artifact, StandaloneArtifact):
        art = compiled_or_artifact
    elif isinstance(compiled_or_artifact, str | os.PathLike):
        art = load_standalone(str(compiled_or_artifact))
    else:
        if directory is None:
            tmp = tempfile.mkdtemp(prefix="tvm_mpq_sa_")
        runner.check_tools(get_profile(profile or compiled_or_artifact.profile))
        art = export_standalone(compiled_or_artifact, directory or tmp, profile,
                                linux=runner.platform == "linux")
    try:
        return _run(art, x, runner, max_instructions, timeout_s, profile_ops)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def entry_input(x: Any, art: StandaloneArtifact) -> np.ndarray:
    """``x`` (numpy or torch) as the array whose bytes ``mpq_model_run`` of ``art`` reads:
    little-endian float32, or integer codes (never rounded or wrapped here: a float or
    out-of-range value is an error).

    Raises:
        ValueError: wrong shape; for an integer input, non-integer or out-of-range values.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    dt = np.dtype(art.input_dtype).newbyteorder("<")
    if dt.kind in "iu":
        if x.dtype.kind not in "iub":
            raise ValueError(f"the model takes {dt.name} codes, got {x.dtype} values: quantize "
                             "them with the compiled model's input_quant (docs/standalone.md)")
        info = np.iinfo(dt)
        if x.size and (x.min() < info.min or x.max() > info.max):
            raise ValueError(f"input codes outside the {dt.name} range [{info.min}, {info.max}]")
    x = np.ascontiguousarray(x, dtype=dt)
    if tuple(x.shape) != tuple(art.input_shape):
        raise ValueError(f"input shape {x.shape} != model input {art.input_shape}")
    return x


def _build(art: StandaloneArtifact, variant: str, x: np.ndarray, max_instructions: int) -> str:
    """Build ``variant`` of the artifact with ``x`` as input; returns the input file's path."""
    prof = art.profile
    run_dir = os.path.join(art.directory, "build", variant)
    os.makedirs(run_dir, exist_ok=True)
    inp = os.path.join(run_dir, "input.bin")
    Path(inp).write_bytes(x.tobytes())
    values = tool_vars(prof, art.board, art.manifest.get("float_shims", True))
    if variant != "linux":
        values["CC_BM"] = toolchain.find_gcc()
    values.update(INPUT=inp, WATCHDOG_TICKS=str(max(1, max_instructions // 100)))
    run_rules(build_rules(prof, art.linux)[variant], art.directory, values)
    return inp


def _run(art: StandaloneArtifact, x: Any, runner: Runner, max_instructions: int,
         timeout_s: float, profile_ops: bool = False) -> StandaloneResult:
    linux = runner.platform == "linux"
    if profile_ops and linux:
        raise ValueError("profile_ops needs a bare-metal backend (spike or qemu), not qemu-user")
    runner.check_tools(art.profile)
    x = entry_input(x, art)
    if linux and not art.linux:
        return StandaloneResult(None, None, "build_error",
                                "artifact has no Linux kernel object (rv32 profile or linux=False)",
                                backend=runner.backend)
    variant = runner.platform + ("_ops" if profile_ops else "")
    try:
        inp = _build(art, variant, x, max_instructions)
    except BuildError as e:
        fit = does_not_fit(str(e), art.board)
        return StandaloneResult(None, None, "build_error", str(fit or e), backend=runner.backend)
    t0 = time.monotonic()
    if linux:
        sim = runner.run_elf(os.path.join(art.directory, "build/linux/model"), art.profile,
                             max_instructions, timeout_s, args=[inp])
    else:  # Spike's --instructions is a backstop only: the harness watchdog fires first
        sim = runner.run_elf(os.path.join(art.directory, f"build/{variant}/model.elf"), art.profile,
                             max_instructions + max_instructions // 10 + 10**6, timeout_s)
    wall = time.monotonic() - t0
    return _result(art, sim, runner, wall, profile_ops)


def _result(art: StandaloneArtifact, sim: toolchain.SimResult, runner: Runner, wall: float,
            profile_ops: bool) -> StandaloneResult:
    """The :class:`StandaloneResult` of one run's console output (a measured stack is recorded
    in the artifact's memory figures)."""
    info, out, msg = parse_output(sim.stdout, int(np.prod(art.output_shape)), art.output_dtype)
    stack = info.get("stack")
    if stack is not None and stack[0] >= stack[2]:
        return StandaloneResult(None, None, "run_error", f"stack overflow: the program used the "
                                f"whole {stack[2]}-byte stack", backend=runner.backend, wall_s=wall)
    if info.get("done") and info.get("rc") == 0 and out is not None:
        ops = None
        if profile_ops:
            names = [op["func"] for op in art.manifest["ops"]]
            counts = info.get("ops", {})
            if sorted(counts) != list(range(len(names))):
                return StandaloneResult(None, None, "run_error",
                                        f"per-op counts for {len(counts)} of {len(names)} ops",
                                        backend=runner.backend, wall_s=wall)
            ops = [(i, names[i], counts[i]) for i in range(len(names))]
        if stack is not None:
            record_stack(art.directory, art.manifest, stack[0], stack[1])
        return StandaloneResult(out.reshape(art.output_shape), info.get("instructions"), "ok", "",
                                info.get("cycles"), runner.backend, wall, ops,
                                *(stack[:2] if stack else (None, None)))
    return _failure(info, msg, sim, runner, wall)


def _failure(info: dict[str, Any], msg: str, sim: toolchain.SimResult, runner: Runner,
             wall: float) -> StandaloneResult:
    """A run that did not finish with an output: timeout or run error."""
    text, rc = sim.stdout, sim.returncode
    # Spike stopped by its --instructions backstop exits 0 without @@DONE
    if sim.timed_out or info.get("watchdog") or (runner.platform == "spike" and rc == 0
                                                 and "done" not in info):
        status = "timeout"
        msg = "wall-clock timeout" if sim.timed_out else "instruction watchdog"
    else:
        status = "run_error"
        if "rc" in info and info["rc"] != 0:
            msg = f"mpq_model_run returned {info['rc']}" + (f": {msg}" if msg else "")
        tail = " | ".join(text.strip().splitlines()[-3:])
        msg = msg or f"exit status {rc}: {tail}"
    return StandaloneResult(None, None, status, msg, backend=runner.backend, wall_s=wall)


_R_LINE = re.compile(r"^@@R rc=(-?\d+)(?: instret=(\d+) cycles=(\d+))?\s*$")
_M_LINE = re.compile(r"^@@M stack=(\d+) model_stack=(\d+) stack_size=(\d+)\s*$")


def parse_output(text: str, n: int, dtype: str = "float32"
                  ) -> tuple[dict[str, Any], np.ndarray | None, str]:
    """Parse the driver's console lines (``harness/standalone_main.c``): ``(counters, output
    array of n elements of ``dtype`` or None, error text)``. Each ``@@O`` word holds one
    element's bits (a narrower integer zero-extended)."""
    info: dict[str, Any] = {}
    words: dict[int, int] = {}
    errs, trap = [], ""
    for line in text.splitlines():
        line = line.strip()
        m = _R_LINE.match(line)
        if m:
            info["rc"] = int(m.group(1))
            if m.group(2) is not None:
                info["instructions"], info["cycles"] = int(m.group(2)), int(m.group(3))
        elif _M_LINE.match(line):
            info["stack"] = tuple(int(v) for v in _M_LINE.match(line).groups())
        elif line.startswith("@@O "):
            parts = line.split()
            i0 = int(parts[1])
            for k, h in enumerate(parts[2:]):
                words[i0 + k] = int(h, 16)
        elif line.startswith("@@P "):
            _, idx, cnt = line.split()
            info.setdefault("ops", {})[int(idx)] = int(cnt)
        elif line.startswith("@@E "):
            errs.append(line[4:])
        elif line.startswith("@@TRAP"):
            trap = line[2:]
        elif line.startswith("@@WATCHDOG"):
            info["watchdog"] = True
        elif line == "@@DONE":
            info["done"] = True
    out = None
    if len(words) == n and all(i in words for i in range(n)):
        dt = np.dtype(dtype).newbyteorder("<")
        bits = np.array([words[i] for i in range(n)], dtype=np.uint32)
        if dt.itemsize < 4 and np.any(bits >> (8 * dt.itemsize)):
            return info, None, "an output word wider than the output dtype " + dtype
        out = bits.astype(f"<u{dt.itemsize}").view(dt).astype(dt.newbyteorder("="))
    msg = "; ".join(errs + ([trap] if trap else []))
    return info, out, msg
