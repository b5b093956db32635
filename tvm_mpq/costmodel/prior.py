"""Model-independent "prior" workloads for the cost model's measurement design.

A model's own layers cover few shapes (MobileNetV2 has one regular 3x3 conv; its other 3x3
layers are depthwise), so a cost model trained on them alone extrapolates badly to another
network's layers. :func:`generic_workloads` is a fixed, seeded, stratified sample of common
CNN layer shapes -- regular 3x3 / 1x1 / strided convs, depthwise 3x3, dense -- over
channel counts and feature-map sizes, to be measured next to the model's own layers
(``tune(..., prior_workloads=N)``). Measuring is cheap on the simulators (a few kernels a
second on Spike), so a few dozen extra workloads cost minutes, once per target.
"""

from __future__ import annotations

import random

from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload

__all__ = ["generic_workloads"]

#: (kind, share of the sample): what the common CNN families are made of
_KINDS = (("conv3x3", 0.3), ("conv1x1", 0.3), ("dw3x3", 0.25), ("conv3x3_s2", 0.05),
          ("dw3x3_s2", 0.05), ("dense", 0.05))
_CHANNELS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320)
_SIZES = (1, 2, 3, 4, 5, 7, 8, 10, 14, 16, 28)


def generic_workloads(n: int = 24, *, seed: int = 0, max_hw: int = 28,
                      max_macs: int = 4_000_000) -> list[Conv2dWorkload | DenseWorkload]:
    """``n`` distinct layer workloads (batch 1) spread over kinds, channels and sizes.

    Kinds are allotted by their share (largest remainder), then each kind's channel counts
    and feature-map sizes are drawn as a Latin hypercube over the log-spaced grids, so
    small and large layers are both covered; a draw over ``max_macs`` is shrunk (channels
    first, then size) until it fits, which keeps every kernel a few seconds on Spike.

    Args:
        n: number of workloads.
        seed: sample seed (the same seed gives the same workloads).
        max_hw: largest input height/width.
        max_macs: multiply-accumulate cap per workload.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    counts = {k: int(n * s) for k, s in _KINDS}
    for k, _ in sorted(_KINDS, key=lambda ks: -(n * ks[1] - int(n * ks[1])))[: n - sum(counts.values())]:
        counts[k] += 1
    sizes = [s for s in _SIZES if s <= max_hw]
    out: list[Conv2dWorkload | DenseWorkload] = []
    seen: set[str] = set()
    for kind, m in counts.items():
        c_idx = _lhs(m, len(_CHANNELS), rng)
        k_idx = _lhs(m, len(_CHANNELS), rng)
        h_idx = _lhs(m, len(sizes), rng)
        for i in range(m):
            ci, ki, hi = c_idx[i], k_idx[i], h_idx[i]
            for _ in range(64):  # shrink until under the MAC cap and new
                wl = _make(kind, _CHANNELS[ci], _CHANNELS[ki], sizes[hi])
                if wl.macs <= max_macs and wl.key() not in seen:
                    break
                if max(ci, ki) > 0 and (wl.macs > max_macs or rng.random() < 0.5):
                    ci, ki = (ci - 1, ki) if ci >= ki else (ci, ki - 1)
                    ci, ki = max(ci, 0), max(ki, 0)
                elif hi > 0:
                    hi -= 1
                else:
                    ci, ki = rng.randrange(len(_CHANNELS)), rng.randrange(len(_CHANNELS))
            if wl.macs <= max_macs and wl.key() not in seen:
                seen.add(wl.key())
                out.append(wl)
    return out


def _lhs(m: int, levels: int, rng: random.Random) -> list[int]:
    """``m`` grid indices, one per equal stratum of ``range(levels)``, in random order."""
    idx = [min(levels - 1, int((i + rng.random()) * levels / max(m, 1))) for i in range(m)]
    rng.shuffle(idx)
    return idx


def _make(kind: str, c: int, k: int, hw: int) -> Conv2dWorkload | DenseWorkload:
    if kind == "dense":
        return DenseWorkload.make((1, c * 4), (k, c * 4))
    if kind.startswith("dw"):
        stride = 2 if kind.endswith("_s2") else 1
        return Conv2dWorkload.make((1, c, hw, hw), (c, 1, 3, 3), stride, 1, c)
    if kind == "conv1x1":
        return Conv2dWorkload.make((1, c, hw, hw), (k, c, 1, 1), 1, 0)
    stride = 2 if kind.endswith("_s2") else 1
    return Conv2dWorkload.make((1, c, hw, hw), (k, c, 3, 3), stride, 1)
