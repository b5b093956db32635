"""Plots of search results (matplotlib, Agg backend: no display needed).

Public API::

    plot_pareto(result_or_members, "front.png")   # latency vs drop (or accuracy), size as colour
    plot_pareto(tune_result, "pareto.png")        # measured cost vs drop, baselines, best
    plot_bits(plan, "bits.png")                   # per-layer weight / activation bits
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tvm_mpq.quant.plan import FP32, QuantPlan

__all__ = ["plot_bits", "plot_pareto"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(front: Any, path: str | os.PathLike[str], *, title: str | None = None,
                unit: str = "instructions", baseline: Sequence[tuple[str, float, float]] = ()) -> str:
    """Cost vs accuracy drop (or measured accuracy), weight size as colour.

    Args:
        front: a :class:`~tvm_mpq.search.front.SearchResult` or a list of ``FrontMember``
            (predicted latency; measured accuracy when refined), or a
            :class:`~tvm_mpq.tuner.result.TuneResult` (measured cost vs accuracy drop, its
            baselines as labelled crosses and its best plan circled).
        path: output image (format from the extension).
        unit: latency unit for the axis label (a ``TuneResult`` names its own).
        baseline: extra labelled reference points ``(label, latency, drop)``, e.g. uniform plans.

    Returns:
        ``path`` as a string.
    """
    plt = _plt()
    pts = _points(front)
    baseline = [*pts["baseline"], *baseline]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lat, y = np.asarray(pts["x"], dtype=float), np.asarray(pts["y"], dtype=float)
    if len(lat):
        order = np.argsort(lat)
        ax.plot(lat[order], y[order], color="0.7", lw=0.8, zorder=1)
        sc = ax.scatter(lat, y, c=np.asarray(pts["size"], dtype=float), cmap="viridis", s=28,
                        zorder=2, edgecolors=["none" if ok else "red" for ok in pts["ok"]])
        fig.colorbar(sc, ax=ax, label="weights (KiB)")
    for label, bl, bd in baseline:
        ax.scatter([bl], [100 * bd], marker="x", color="k", zorder=3)
        ax.annotate(label, (bl, 100 * bd), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if pts["best"] is not None:
        ax.scatter([pts["best"][0]], [pts["best"][1]], s=120, facecolors="none",
                   edgecolors="black", zorder=4, label="best")
        ax.legend(fontsize=8)
    ax.set_xlabel(pts["xlabel"] or f"predicted latency ({unit})")
    ax.set_ylabel(pts["ylabel"])
    ax.set_title(title or f"Pareto front ({len(lat)} plans)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


def _points(front: Any) -> dict[str, Any]:
    """What :func:`plot_pareto` draws, from a search front or a ``TuneResult``."""
    if hasattr(front, "baselines"):  # a TuneResult: measured costs, drops in points
        pts = [p for p in front.pareto if p.drop is not None]
        best = front.best
        return {"x": [p.cost for p in pts], "y": [100 * p.drop for p in pts],
                "size": [p.size_bytes / 1024 for p in pts], "ok": [True] * len(pts),
                "baseline": [(n, b.cost, b.drop) for n, b in front.baselines.items()
                             if b.drop is not None and n != "best_uniform"],  # (a copy)
                "best": (best.cost, 100 * best.drop) if best is not None and best.drop is not None
                else None,
                "xlabel": f"measured cost ({front.cost_unit}, {front.profile} on {front.backend})",
                "ylabel": "accuracy drop vs fp32 (points)"}
    members = getattr(front, "members", front)
    refined = bool(members) and all(m.accuracy is not None for m in members)
    return {"x": [m.latency for m in members],
            "y": [100 * (m.accuracy if refined else m.drop) for m in members],
            "size": [m.size / 1024 for m in members], "ok": [m.feasible for m in members],
            "baseline": [], "best": None, "xlabel": None,
            "ylabel": "top-1 accuracy (%)" if refined else "accuracy-drop proxy (x100)"}


def plot_bits(plan: QuantPlan, path: str | os.PathLike[str], *, title: str | None = None) -> str:
    """Bar chart of each layer's weight and activation bits (fp32 drawn as 32, hatched)."""
    plt = _plt()
    names = plan.layers()
    w = np.asarray([plan[n].w_bits for n in names], dtype=float)
    a = np.asarray([plan[n].a_bits for n in names], dtype=float)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 4.0))
    fp = np.asarray([plan[n].is_fp32 for n in names])
    ax.bar(x - 0.2, w, 0.4, label="weight bits", color="tab:blue",
           hatch=None, edgecolor="white")
    ax.bar(x + 0.2, a, 0.4, label="activation bits", color="tab:orange", edgecolor="white")
    for i in np.flatnonzero(fp):
        ax.bar([x[i]], [FP32], 0.8, fill=False, hatch="//", edgecolor="0.5", lw=0)
    ax.set_yscale("log", base=2)
    ax.set_yticks([1, 2, 4, 8, 32], ["1", "2", "4", "8", "fp32"])
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel("bits")
    ax.set_title(title or repr(plan)[:90])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)
