"""The result of calibration: per-layer quantization parameters (:class:`LayerQParams`) and
their collection for a plan (:class:`QuantParams`), saved as JSON + NPZ."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class LayerQParams:
    """Quantization parameters of one layer.

    ``w_q`` is int8 (OIHW for conv, (out, in) for linear) holding values in
    ``[-2^(w-1), 2^(w-1) - 1]`` (``{-1, +1}`` for 1 bit); ``w_scale`` float32
    ``[out]``; ``a_scale`` float32; ``a_zero_point`` int in ``[0, 2^a - 1]``;
    ``bias`` float32 ``[out]`` or None (the BN-folded bias, kept in float).
    ``a_min`` / ``a_max`` are the observed input range (for information).
    """

    name: str
    kind: str
    w_bits: int
    a_bits: int
    a_scale: np.float32
    a_zero_point: int
    w_scale: np.ndarray
    w_q: np.ndarray
    bias: np.ndarray | None
    a_min: float = 0.0
    a_max: float = 0.0

    @property
    def a_qmax(self) -> int:
        return 2**self.a_bits - 1

    @property
    def w_range(self) -> tuple[int, int]:
        if self.w_bits == 1:
            return -1, 1
        return -(2 ** (self.w_bits - 1)), 2 ** (self.w_bits - 1) - 1

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``a_q = clamp(round_half_even(x / s_a) + z, 0, 2^a - 1)`` (float32 tensor of ints).

        The division is a true float32 division (not a multiply by 1/s_a).
        """
        s = torch.tensor(self.a_scale, dtype=torch.float32)
        return torch.clamp(torch.round(x.float() / s) + self.a_zero_point, 0, self.a_qmax)


@dataclass
class QuantParams:
    """Per-layer quantization parameters of a plan, keyed by torch module name.

    ``tensors`` holds the float model's observed ``(min, max)`` of every graph value, keyed by
    fx node name (:func:`tvm_mpq.quant.integer.observe_tensor_ranges`): integer-only inference
    quantizes the values that no layer reads directly (residual branches, block outputs) with
    them. Independent of the plan.
    """

    layers: dict[str, LayerQParams] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerQParams:
        return self.layers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __len__(self) -> int:
        return len(self.layers)

    def names(self) -> list[str]:
        return list(self.layers)

    @staticmethod
    def _paths(path: str | os.PathLike) -> tuple[str, str]:
        base = os.fspath(path)
        root, ext = os.path.splitext(base)
        if ext in (".npz", ".json"):
            base = root
        return base + ".json", base + ".npz"

    def save(self, path: str | os.PathLike) -> None:
        """Write ``<path>.json`` (scalars, bits, order) and ``<path>.npz`` (arrays)."""
        jpath, npath = self._paths(path)
        arrays: dict[str, np.ndarray] = {}
        entries = []
        for i, (n, p) in enumerate(self.layers.items()):
            entries.append({"name": n, "kind": p.kind, "w_bits": p.w_bits, "a_bits": p.a_bits,
                            "a_scale": float(p.a_scale), "a_zero_point": int(p.a_zero_point),
                            "a_min": float(p.a_min), "a_max": float(p.a_max),
                            "has_bias": p.bias is not None})
            arrays[f"{i}_w_q"] = p.w_q
            arrays[f"{i}_w_scale"] = p.w_scale
            if p.bias is not None:
                arrays[f"{i}_bias"] = p.bias
        np.savez(npath, **arrays)
        with open(jpath, "w") as f:
            json.dump({"version": 1, "meta": self.meta, "layers": entries,
                       "tensors": {k: list(v) for k, v in self.tensors.items()}}, f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantParams:
        """Read files written by :meth:`save`."""
        jpath, npath = cls._paths(path)
        with open(jpath) as f:
            d = json.load(f)
        qp = cls(meta=d.get("meta", {}),
                 tensors={k: (float(v[0]), float(v[1])) for k, v in d.get("tensors", {}).items()})
        with np.load(npath) as z:
            for i, e in enumerate(d["layers"]):
                qp.layers[e["name"]] = LayerQParams(
                    e["name"], e["kind"], e["w_bits"], e["a_bits"], np.float32(e["a_scale"]),
                    int(e["a_zero_point"]), z[f"{i}_w_scale"].astype(np.float32),
                    z[f"{i}_w_q"].astype(np.int8),
                    z[f"{i}_bias"].astype(np.float32) if e["has_bias"] else None,
                    e.get("a_min", 0.0), e.get("a_max", 0.0))
        return qp
