"""Reports of a tune() result: Markdown summary, Pareto plot, per-layer bit chart (the plots:
:mod:`tvm_mpq.plots`)."""

from __future__ import annotations

import os
from typing import Any

#: what each glue computes between layers, for the report
_GLUE_TEXT = {
    "integer": "integer-only: requantize epilogues, integer adds and pooling; float only at "
               "fp32 layers, the input and the output",
    "float": "float quantize / dequantize around every quantized layer"}
_COLS = ("plan", "bits", "measured cost", "vs int8", "whole model", "accuracy", "compiled acc.",
         "drop (pt)", "size (KiB)", "RAM (KiB)", "flash (KiB)")
#: the memory table's columns: (header, key of ``PlanPoint.memory``)
_MEM_COLS = (("arena", "arena_bytes"), ("arena lower bound", "arena_lower_bound"),
             ("workspace", "workspace_bytes"), ("stack", "stack_bytes"),
             ("code", "code_bytes"), ("weights", "weight_bytes"), ("RAM", "ram_bytes"),
             ("flash", "flash_bytes"))


def _bits_summary(plan: Any) -> str:
    counts: dict[str, int] = {}
    for name in plan.layers():
        c = plan[name]
        k = "fp32" if c.is_fp32 else f"w{c.w_bits}a{c.a_bits}"
        counts[k] = counts.get(k, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _fmt(v: Any, pct: bool = False, digits: int = 4) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.2f}%"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def _metric(res: Any, v: float | None) -> str:
    """A score as the user's metric: a percentage, or with ``metric_mode="min"`` the error /
    loss itself (the score is its negation)."""
    if v is not None and res.settings.get("metric_mode") == "min":
        return f"{-v:.4g}"
    return _fmt(v, pct=True)


def summary_table(res: Any) -> str:
    """Markdown table: baselines, the chosen plan, and the front."""
    int8 = res.baselines.get("int8")
    ref = int8.measured_cost if int8 is not None else None
    rows = list(res.baselines.values()) + ([res.best] if res.best else [])
    rows += [p for p in res.pareto if p is not res.best]
    lines = ["| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    for p in rows:
        ratio = f"{p.measured_cost / ref:.3f}" if p.measured_cost and ref else "-"
        drop = "-" if p.drop is None else f"{100 * p.drop:.2f}" + (
            "" if p.drop_se is None else f" ± {100 * p.drop_se:.2f}")
        lines.append("| " + " | ".join([
            p.label, _bits_summary(p.plan), _fmt(p.measured_cost), ratio, _fmt(p.model_cost),
            _metric(res, p.accuracy), _metric(res, p.compiled_accuracy), drop,
            f"{p.size_bytes / 1024:.1f}", _kib(p.ram_bytes), _kib(p.flash_bytes)]) + " |")
    return "\n".join(lines)


def _kib(v: float | None) -> str:
    return "-" if v is None else f"{v / 1024:.1f}"


def memory_table(res: Any) -> str:
    """Markdown table of the standalone artifacts' memory figures (bytes), for every plan
    whose artifact was built; empty when none was."""
    rows = [p for p in [*res.baselines.values(), *([res.best] if res.best else []),
                        *[q for q in res.pareto if q is not res.best]] if p.memory]
    if not rows:
        return ""
    lines = ["| plan | " + " | ".join(h for h, _ in _MEM_COLS) + " |",
             "|" + "---|" * (len(_MEM_COLS) + 1)]
    for p in rows:
        lines.append(f"| {p.label} | " + " | ".join(
            "-" if p.memory.get(k) is None else f"{p.memory[k]:,}" for _, k in _MEM_COLS) + " |")
    return "\n".join(lines)


def write_report(res: Any, directory: str) -> str:
    """Write ``pareto.png``, ``bits.png`` and ``summary.md`` into ``directory``."""
    from tvm_mpq.plots import plot_bits, plot_pareto

    os.makedirs(directory, exist_ok=True)
    plot_pareto(res, os.path.join(directory, "pareto.png"), title="Mixed-precision Pareto front")
    if res.best is not None:
        plot_bits(res.best.plan, os.path.join(directory, "bits.png"),
                  title="best plan: bits per layer")
    lines = [
        "# tvm-mpq tuning result", "",
        f"Target profile **{res.profile}**, backend **{res.backend}** "
        f"(cost = {res.cost_unit} of one inference), **{res.glue}** glue "
        f"({_GLUE_TEXT.get(res.glue, res.glue)}).", "",
        f"{res.message}", "",
        (f"fp32 metric (eval_fn, lower is better; drop = its increase x100): "
         f"{_metric(res, res.fp32_accuracy)}" if res.settings.get("metric_mode") == "min"
         else f"fp32 accuracy: {_fmt(res.fp32_accuracy, pct=True)}"), "",
        summary_table(res), "",
        "measured cost = sum of measured per-layer kernel costs + each layer's measured "
        "passes for this glue; whole model = the standalone "
        "artifact's retired instructions (entry/exit conversions, adds and pooling included); "
        "drop ± its standard error from the per-image outcomes paired with fp32's.", "",
        *(["Memory of the standalone artifacts (bytes; RAM = data + bss + arena + measured "
           "stack, flash = text + rodata + data; the arena's lower bound is the largest set "
           "of simultaneously live tensors):", "", memory_table(res), ""]
          if memory_table(res) else []),
        f"Cost model: {res.costmodel_report.get('summary', res.costmodel_report)}", "",
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res.timings.items()), "",
        "![Pareto front](pareto.png)", "",
    ]
    if res.best is not None:
        lines += ["![bits per layer](bits.png)", ""]
    path = os.path.join(directory, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
