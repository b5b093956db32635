"""What the bare-metal harness prints, read back: :class:`KernelRun` per kernel.

The harness (``harness/driver.c``) prints ``@@S i`` when kernel ``i`` starts, ``@@E ...``
for its errors, ``@@K i name rc=.. instret=.. cycles=.. mismatches=.. first=..`` when it
ends, ``@@TRAP``/``@@WATCHDOG`` when the run dies and ``@@DONE`` at the end.
:func:`parse_run` turns one simulator run into results and says where a crashed run stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tvm_mpq.measure.toolchain import SimResult


@dataclass
class KernelRun:
    """Measurement of one kernel.

    Attributes:
        status: ``"ok" | "wrong_result" | "build_error" | "run_error" | "timeout"``.
        instructions: retired instructions of the packed call (None unless ok).
        cycles: mcycle delta (equals instructions on Spike and QEMU; None unless ok).
        message: empty when ok, otherwise the error text or mismatch count.
    """

    name: str
    status: str
    instructions: int | None
    cycles: int | None
    message: str


def failed_run(name: str, status: str, message: str) -> KernelRun:
    """The result of a kernel that failed (no numbers); ``message`` defaults to the status."""
    return KernelRun(name, status, None, None, message or status)


_K_LINE = re.compile(r"^@@K (\d+) (\S+) rc=(-?\d+) instret=(\d+) cycles=(\d+) "
                     r"mismatches=(\d+) first=(-?\d+)\s*$")


_MCAUSE = {0: "instruction address misaligned", 1: "instruction access fault",
           2: "illegal instruction", 3: "breakpoint", 4: "load address misaligned",
           5: "load access fault", 6: "store address misaligned", 7: "store access fault",
           8: "ecall from U-mode", 11: "ecall from M-mode", 12: "instruction page fault",
           13: "load page fault", 15: "store page fault"}


def describe_trap(line: str) -> str:
    """A readable description of the harness' ``@@TRAP mcause=.. mepc=.. mtval=..`` line."""
    f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    try:
        cause = int(f.get("mcause", "-1"), 16)
    except ValueError:
        return line[2:]
    return (f"trap: {_MCAUSE.get(cause, f'mcause {cause}')} at pc={f.get('mepc')} "
            f"(mtval={f.get('mtval')})")


def parse_run(sim: SimResult, names: list[str],
              results: dict[str, KernelRun]) -> tuple[bool, int | None, str, str]:
    """Record in ``results`` every kernel the run of ``names`` (in harness order) reported.

    Returns ``(done, crashed_at, status, reason)``: ``done`` when the harness finished;
    otherwise the index of the kernel that trapped or timed out (None when the run died
    outside any kernel: then every unreported kernel is recorded as failed), and its status
    and reason. Kernels after ``crashed_at`` are left unrecorded (they never ran).
    """
    started: int | None = None
    errors: dict[int, list[str]] = {}
    done = False
    trap = ""
    watchdog = False
    for line in sim.stdout.splitlines():
        line = line.strip()
        if line.startswith("@@S "):
            started = int(line[4:])
        elif line.startswith("@@E ") and started is not None:
            errors.setdefault(started, []).append(line[4:])
        elif line.startswith("@@K "):
            m = _K_LINE.match(line)
            if not m:
                continue
            i = int(m.group(1))
            rc, ins, cyc, bad, first = (int(m.group(k)) for k in (3, 4, 5, 6, 7))
            name = names[i]
            if rc != 0:
                msg = f"kernel returned {rc}: " + "; ".join(errors.get(i, [])) if errors.get(
                    i) else f"kernel returned {rc}"
                results[name] = failed_run(name, "run_error", msg)
            elif bad:
                results[name] = failed_run(name, "wrong_result",
                                      f"{bad} mismatching elements (first at flat index {first})")
            else:
                results[name] = KernelRun(name, "ok", ins, cyc, "")
            started = None
        elif line.startswith("@@TRAP"):
            trap = describe_trap(line)
        elif line.startswith("@@WATCHDOG"):
            watchdog = True
        elif line.startswith("@@DONE"):
            done = True
    missing = [n for n in names if n not in results]
    if done:
        for n in missing:
            results[n] = failed_run(n, "run_error", "no result line")
        return True, None, "", ""
    tail = " | ".join(sim.stdout.strip().splitlines()[-3:])
    if watchdog or sim.timed_out or (sim.returncode == 0 and not trap):
        status = "timeout"
        reason = ("instruction watchdog" if watchdog or not sim.timed_out
                  else "wall-clock timeout")
    else:
        status = "run_error"
        reason = trap or (f"simulator killed by signal {-sim.returncode}: {tail}"
                          if sim.returncode < 0 else f"simulator exited with {sim.returncode}: {tail}")
    if started is None:  # died outside any kernel (start-up): nothing attributable
        for n in missing:
            results[n] = failed_run(n, status, f"{reason} (outside kernels)")
        return False, None, status, reason
    culprit = names[started]
    extra = "; ".join(errors.get(started, []))
    results[culprit] = failed_run(culprit, status, reason + (f"; {extra}" if extra else ""))
    return False, started, status, reason
