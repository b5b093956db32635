"""Plots of search results (matplotlib, Agg backend: no display needed).

Public API::

    plot_pareto(result_or_members, "front.png")   # latency vs drop (or accuracy), size as colour
    plot_bits(plan, "bits.png")                   # per-layer weight / activation bits
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..plan import FP32, QuantPlan

__all__ = ["plot_bits", "plot_pareto"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(front: Any, path: str | os.PathLike[str], *, title: str | None = None,
                unit: str = "instructions", baseline: Sequence[tuple[str, float, float]] = ()) -> str:
    """Latency vs accuracy drop (measured accuracy when refined), weight size as colour.

    Args:
        front: a :class:`~tvm_mpq.search.nsga.SearchResult` or a list of ``FrontMember``.
        path: output image (format from the extension).
        unit: latency unit for the axis label.
        baseline: extra labelled reference points ``(label, latency, drop)``, e.g. uniform plans.

    Returns:
        ``path`` as a string.
    """
    plt = _plt()
    members = getattr(front, "members", front)
    refined = bool(members) and all(m.accuracy is not None for m in members)
    lat = np.asarray([m.latency for m in members], dtype=float)
    y = np.asarray([100 * (m.accuracy if refined else m.drop) for m in members], dtype=float)
    size = np.asarray([m.size / 1024 for m in members], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if len(members):
        order = np.argsort(lat)
        ax.plot(lat[order], y[order], color="0.7", lw=0.8, zorder=1)
        sc = ax.scatter(lat, y, c=size, cmap="viridis", s=28, zorder=2,
                        edgecolors=["none" if m.feasible else "red" for m in members])
        fig.colorbar(sc, ax=ax, label="weights (KiB)")
    for label, bl, bd in baseline:
        ax.scatter([bl], [100 * bd], marker="x", color="k", zorder=3)
        ax.annotate(label, (bl, 100 * bd), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"predicted latency ({unit})")
    ax.set_ylabel("top-1 accuracy (%)" if refined else "accuracy-drop proxy (x100)")
    ax.set_title(title or f"Pareto front ({len(members)} plans)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


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
