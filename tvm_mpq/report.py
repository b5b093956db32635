"""Reports of a tune() result: Markdown summary, Pareto plot, per-layer bit chart."""

from __future__ import annotations

import os
from typing import Any

_COLS = ("plan", "bits", "measured cost", "vs int8", "whole model", "accuracy", "compiled acc.",
         "drop (pt)", "size (KiB)")


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


def summary_table(res: Any) -> str:
    """Markdown table: baselines, the chosen plan, and the front."""
    int8 = res.baselines.get("int8")
    ref = int8.measured_cost if int8 is not None else None
    rows = list(res.baselines.values()) + ([res.best] if res.best else [])
    rows += [p for p in res.pareto if p is not res.best]
    lines = ["| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    for p in rows:
        ratio = f"{p.measured_cost / ref:.3f}" if p.measured_cost and ref else "-"
        drop = f"{100 * p.drop:.2f}" if p.drop is not None else "-"
        lines.append("| " + " | ".join([
            p.label, _bits_summary(p.plan), _fmt(p.measured_cost), ratio, _fmt(p.model_cost),
            _fmt(p.accuracy, pct=True), _fmt(p.compiled_accuracy, pct=True), drop,
            f"{p.size_bytes / 1024:.1f}"]) + " |")
    return "\n".join(lines)


def plot_pareto(res: Any, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [p for p in res.pareto if p.drop is not None]
    cost = [p.measured_cost or p.predicted_cost for p in pts]
    sc = ax.scatter(cost, [100 * p.drop for p in pts], c=[p.size_bytes / 1024 for p in pts],
                    cmap="viridis", label="Pareto front")
    fig.colorbar(sc, ax=ax, label="weights (KiB)")
    for name, b in res.baselines.items():
        c = b.measured_cost or b.predicted_cost
        if b.drop is not None:
            ax.scatter([c], [100 * b.drop], marker="x", color="red")
            ax.annotate(name, (c, 100 * b.drop), textcoords="offset points", xytext=(4, 4))
    if res.best is not None and res.best.drop is not None:
        c = res.best.measured_cost or res.best.predicted_cost
        ax.scatter([c], [100 * res.best.drop], s=120, facecolors="none", edgecolors="black",
                   label="best")
    ax.set_xlabel(f"measured cost ({res.cost_unit}, {res.profile} on {res.backend})")
    ax.set_ylabel("accuracy drop vs fp32 (points)")
    ax.set_title("Mixed-precision Pareto front")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bits(plan: Any, path: str, title: str = "per-layer bit-widths") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = plan.layers()
    w = [32 if plan[n].is_fp32 else plan[n].w_bits for n in names]
    a = [32 if plan[n].is_fp32 else plan[n].a_bits for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], w, width=0.4, label="weights")
    ax.bar([x + 0.2 for x in xs], a, width=0.4, label="activations")
    ax.set_yscale("log", base=2)
    ax.set_yticks([1, 2, 4, 8, 32], ["1", "2", "4", "8", "fp32"])
    ax.set_xticks(list(xs), names, rotation=90, fontsize=7)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(res: Any, directory: str) -> str:
    """Write ``pareto.png``, ``bits.png`` and ``summary.md`` into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    plot_pareto(res, os.path.join(directory, "pareto.png"))
    if res.best is not None:
        plot_bits(res.best.plan, os.path.join(directory, "bits.png"), "best plan: bits per layer")
    lines = [
        "# tvm-mpq tuning result", "",
        f"Target profile **{res.profile}**, backend **{res.backend}** "
        f"(cost = {res.cost_unit} of one inference).", "",
        f"{res.message}", "",
        f"fp32 accuracy: {_fmt(res.fp32_accuracy, pct=True)}", "",
        summary_table(res), "",
        "measured cost = sum of measured per-layer kernel costs (+ quantize/dequantize passes "
        "of quantized layers); whole model = the standalone "
        "artifact's retired instructions (quantize/requantize and float ops included).", "",
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
