"""A plan's standalone artifact, built and run once: its whole-model cost and its exact
memory figures (``ram_budget`` / ``flash_budget``).

The figures are the artifact's own (:attr:`tvm_mpq.deploy.StandaloneArtifact.memory`), not
an estimate: RAM is the linked ELF's ``.data`` + ``.bss`` + the planned arena (activations
and every kernel's workspace) + the stack high-water mark measured by running it on the
bare-metal runner; flash is ``.text`` + ``.rodata`` (weights included) + ``.data``. The
search sees a lower bound of the flash (its ``flash`` constraint: the weights as the chosen
kernels store them, pre-packed, + biases; a plan over ``flash_budget`` on those alone is
pruned there); the chooser checks front plans against the exact figures cheapest first, so
only the plans it considers are built.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tvm_mpq.tuner.checkpoint import digest
from tvm_mpq.tuner.result import PlanPoint

__all__ = ["MEMORY_KEYS", "fits_memory", "has_memory_budget", "memory_problem",
           "standalone_point"]

log = logging.getLogger(__name__)

#: the artifact's memory figures kept on a :class:`PlanPoint` (bytes)
MEMORY_KEYS = ("arena_bytes", "arena_lower_bound", "workspace_bytes", "stack_bytes",
               "code_bytes", "weight_bytes", "ram_bytes", "flash_bytes")


def has_memory_budget(state: Any) -> bool:
    """Whether the run has a RAM or flash budget."""
    b = state.config.budgets
    return b.ram_budget is not None or b.flash_budget is not None


def standalone_point(state: Any, p: PlanPoint, directory: str) -> None:
    """Compile ``p.plan`` with the run's glue, export its standalone artifact to
    ``directory`` and run it once on the bare-metal runner; records ``p.model_cost`` (whole
    model), ``p.memory`` / ``p.ram_bytes`` / ``p.flash_bytes`` and ``p.standalone_dir``. A
    failure is noted on ``p`` (the figures stay None), not raised."""
    from tvm_mpq.compiler.compiled import compile as mpq_compile
    from tvm_mpq.deploy import export_standalone, run_standalone
    from tvm_mpq.tuner.stages.beacons import load_qat

    try:
        x1 = state.example_inputs[0][:1]
        m_p, qp_p = load_qat(p.qat_dir) if p.qat_dir else (state.model, state.qparams(p.plan))
        cm1 = mpq_compile(m_p, (x1,), p.plan, state.profile, qparams=qp_p, glue=state.glue,
                          schedule_for=state.schedule_for)
        art = export_standalone(cm1, directory)
        p.standalone_dir = art.directory
        r = run_standalone(art, x1.numpy(), backend=state.runner)
        if r.status != "ok":
            p.notes += f" standalone run {r.status}: {r.message}"
            return
        p.model_cost = float(r.instructions)
        mem = art.memory
        p.memory = {k: mem.get(k) for k in MEMORY_KEYS}
        p.ram_bytes, p.flash_bytes = mem.get("ram_bytes"), mem.get("flash_bytes")
    except Exception as e:  # record the failure on the point; the others still run
        log.warning("standalone artifact of %s failed: %s", p.label, e)
        p.notes += f" standalone artifact failed: {type(e).__name__}: {e}"


def memory_problem(state: Any, p: PlanPoint) -> str | None:
    """Why ``p``'s figures break the run's RAM / flash budget (None: they fit, or there is
    no budget). Figures that could not be measured break it: a fit is never assumed."""
    b = state.config.budgets
    out = []
    for what, budget, got in (("RAM", b.ram_budget, p.ram_bytes),
                              ("flash", b.flash_budget, p.flash_bytes)):
        if budget is None:
            continue
        if got is None:
            out.append(f"{what} not measured")
        elif got > budget:
            out.append(f"{what} {got:,.0f} B > budget {budget:,.0f} B")
    return "; ".join(out) or None


def fits_memory(state: Any, p: PlanPoint) -> bool:
    """Whether ``p`` meets the RAM / flash budgets (True without one). Builds and runs the
    plan's artifact the first time (``workdir/standalone/plan_<digest>``); a plan that does
    not fit gets a note and ``meets_constraints = False``."""
    if not has_memory_budget(state):
        return True
    if p.ram_bytes is None and p.flash_bytes is None and p.standalone_dir is None:
        key = digest(p.plan.to_dict(), p.qat_dir or "ptq")[:12]
        standalone_point(state, p, os.path.join(state.workdir, "standalone", f"plan_{key}"))
        if state.progress:
            print(f"[tvm-mpq]   memory of {p.label} ({p.cost:.4g} {state.unit}): RAM "
                  f"{p.ram_bytes}, flash {p.flash_bytes} bytes", flush=True)
    why = memory_problem(state, p)
    if why is not None:
        p.meets_constraints = False
        if why not in p.notes:
            p.notes = (p.notes + f" does not fit: {why}").strip()
    return why is None
