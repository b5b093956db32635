"""Watching the float model run: the calibration batches, per-layer input observers, and the
captured input of one layer (for the data-driven calibration steps)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn


def iter_batches(calib_data: Any, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield input tensors from a tensor (split into ``batch_size`` batches), an iterable of
    tensors, or of ``(x, y, ...)`` batches."""
    if isinstance(calib_data, torch.Tensor):
        yield from calib_data.split(batch_size)
        return
    for b in calib_data:
        yield b[0] if isinstance(b, (tuple, list)) else b


class RangeObserver:
    """Forward pre-hook: running min/max of a layer's input and a random sample of it.

    Each layer has its own generator (seeded from ``seed`` and the layer name), so
    the sample does not depend on which other layers the plan quantizes.

    Attributes:
        lo, hi: the exact min / max seen over all batches.
        samples: per batch, up to ``per_batch`` values drawn at random (all when fewer).
    """

    def __init__(self, per_batch: int, seed: int, name: str):
        self.lo, self.hi = float("inf"), float("-inf")
        self.samples: list[torch.Tensor] = []
        self.per_batch = per_batch
        self.gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()))
                                                 % (1 << 63))

    def __call__(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().float().flatten()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        if x.numel() > self.per_batch:
            x = x[torch.randint(0, x.numel(), (self.per_batch,), generator=self.gen)]
        self.samples.append(x.clone())


def observe(model: nn.Module, layers: list[nn.Module], observers: list[RangeObserver],
            batches: Iterable[torch.Tensor], max_batches: int | None,
            keep: int) -> list[torch.Tensor]:
    """Run ``model`` (no grad) over ``batches`` (at most ``max_batches``) with each observer
    hooked on its layer; returns the first ``keep`` inputs, as a list of batch slices."""
    hooks = [m.register_forward_pre_hook(o) for m, o in zip(layers, observers, strict=True)]
    kept: list[torch.Tensor] = []
    n_kept = 0
    try:
        with torch.no_grad():
            for i, x in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                if n_kept < keep:
                    kept.append(x[:keep - n_kept])
                    n_kept += len(kept[-1])
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return kept


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted input is captured."""


def capture_input(model: nn.Module, layer: nn.Module, x: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """The (first-call) input of ``layer`` when ``model`` runs on ``x``, batch by batch (the
    forward pass stops there).

    Raises:
        ValueError: ``layer`` did not run for some batch.
    """
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        got.append(args[0].detach().float())
        raise _Stop

    h = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for xb in x.split(batch_size):
                n = len(got)
                try:
                    model(xb)
                except _Stop:
                    pass
                if len(got) != n + 1:
                    raise ValueError("layer never ran during calibration")
    finally:
        h.remove()
    return torch.cat(got)
