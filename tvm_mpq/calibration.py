"""BN folding, weight quantization and activation calibration.

Everything here runs once, on the BN-folded float model, and produces the
:class:`QuantParams` shared by the torch reference (:mod:`tvm_mpq.fakequant`)
and the TVM-compiled model.

Rules (the project's contract, see also ``fakequant``):

Weights, per output channel ``k``, symmetric:
  - 1 bit: ``w_q = +1 if w >= 0 else -1``, ``s_w[k] = mean(|w_k|)`` (the
    least-squares scale for fixed signs).
  - b in {2, 4, 8}: ``qmin, qmax = -2^(b-1), 2^(b-1) - 1``; candidate scales
    ``s = r * max|w_k| / qmax`` for ``r`` in :data:`CLIP_RATIOS` (1.00, 0.95,
    ..., 0.20); pick the one minimising ``||w_k - s * clamp(round(w_k / s),
    qmin, qmax)||^2`` (ties -> larger r). ``weight_clip="max"`` uses r = 1.
    An all-zero channel gets scale 1.
  - ``w_q = clamp(round_half_even(w / s_w), qmin, qmax)`` in float32.

Activations (the input of each quantized layer), per tensor, unsigned
asymmetric with ``qmax = 2^a - 1``, from an observed range ``[lo, hi]``
widened to include 0 (torch.ao ``MinMaxObserver`` rule):
  ``s_a = max((hi - lo) / qmax, eps_f32)``, ``z = clamp(-round(lo / s_a), 0, qmax)``.
  The range is the exact min/max over all calibration batches ("minmax"), a
  percentile of a sample of the inputs ("percentile"), or the shrink of the
  min/max range by a ratio in :data:`CLIP_RATIOS` that minimises the
  quantization MSE on that sample ("mse"). ``act_method="auto"`` (default) is
  "minmax" for 8-bit and "mse" for fewer bits.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .plan import FP32, QuantPlan

__all__ = [
    "CLIP_RATIOS",
    "LayerQParams",
    "QuantParams",
    "act_qparams",
    "calibrate",
    "fold_bn",
    "quantize_weight",
]

CLIP_RATIOS: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(17))
"""Clip-ratio grid (1.00 ... 0.20) for the MSE weight / activation range search."""

_EPS = float(torch.finfo(torch.float32).eps)


# ---------------------------------------------------------------- BN folding
def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def fold_bn(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with BatchNorm2d folded into the preceding conv.

    Folds ``Conv2d`` immediately followed by ``BatchNorm2d`` inside an
    ``nn.Sequential`` (torchvision style), then, if the model is
    ``torch.fx``-traceable, conv -> bn pairs used as attributes (ResNet-style
    ``self.conv1`` / ``self.bn1``) when the conv output feeds only that BN and
    each module is called once. Folded BNs become ``nn.Identity``; module
    names are unchanged. Idempotent. BNs that cannot be folded stay float.
    """
    m = copy.deepcopy(model).eval()
    for seq in m.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys, keys[1:], strict=False):
            ca, cb = seq._modules[a], seq._modules[b]
            if isinstance(ca, nn.Conv2d) and isinstance(cb, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(ca, cb)
                seq._modules[b] = nn.Identity()
    if not any(isinstance(x, nn.BatchNorm2d) for x in m.modules()):
        return m
    try:
        graph = torch.fx.symbolic_trace(m).graph
    except Exception:  # data-dependent control flow etc.: Sequential pairs only
        return m
    mods = dict(m.named_modules())
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    for n in graph.nodes:
        if n.op != "call_module" or not isinstance(mods.get(n.target), nn.BatchNorm2d):
            continue
        src = n.args[0] if n.args else None
        if (getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[n.target] == 1):
            _set_submodule(m, src.target, fuse_conv_bn_eval(mods[src.target], mods[n.target]))
            _set_submodule(m, n.target, nn.Identity())
    return m


# ---------------------------------------------------------------- weights
def quantize_weight(w: torch.Tensor, bits: int, clip: str = "mse") -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric weight quantization (rule in the module docstring).

    Args:
        w: float weight, output channels first (OIHW or (out, in)).
        bits: 1, 2, 4 or 8.
        clip: "mse" (search :data:`CLIP_RATIOS`) or "max" (no clipping).

    Returns:
        ``(w_q, s_w)``: int8 array shaped like ``w`` and float32 ``[out]`` scales.
    """
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1)
    if bits == 1:
        s = flat.abs().mean(1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.where(w >= 0, 1.0, -1.0)
        return q.to(torch.int8).numpy(), s.numpy().astype(np.float32)
    if bits not in (2, 4, 8):
        raise ValueError(f"weight bits must be 1, 2, 4 or 8, got {bits}")
    if clip not in ("mse", "max"):
        raise ValueError(f"clip must be 'mse' or 'max', got {clip!r}")
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    amax = flat.abs().amax(1)
    amax = torch.where(amax > 0, amax, torch.full_like(amax, float(qmax)))  # zero channel -> s=1
    ratios = CLIP_RATIOS if clip == "mse" else (1.0,)
    best_s, best_err = None, None
    for r in ratios:
        s = (amax * r / qmax).float()
        deq = torch.clamp(torch.round(flat / s[:, None]), qmin, qmax) * s[:, None]
        err = (flat - deq).pow(2).sum(1)
        if best_s is None:
            best_s, best_err = s, err
        else:
            better = err < best_err  # strict: ties keep the larger ratio
            best_s = torch.where(better, s, best_s)
            best_err = torch.where(better, err, best_err)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.clamp(torch.round(w / best_s.view(shape)), qmin, qmax)
    return q.to(torch.int8).numpy(), best_s.numpy().astype(np.float32)


# ---------------------------------------------------------------- activations
def act_qparams(lo: float, hi: float, bits: int) -> tuple[np.float32, int]:
    """Unsigned asymmetric (scale, zero point) for the range ``[lo, hi]`` (torch.ao rule)."""
    qmax = 2**bits - 1
    lo_t = torch.tensor(min(float(lo), 0.0), dtype=torch.float32)
    hi_t = torch.tensor(max(float(hi), 0.0), dtype=torch.float32)
    scale = torch.clamp((hi_t - lo_t) / float(qmax), min=_EPS)
    zp = int(torch.clamp(-torch.round(lo_t / scale), 0, qmax).item())
    return np.float32(scale.item()), zp


def _fq_act(x: torch.Tensor, scale: float, zp: int, bits: int) -> torch.Tensor:
    q = torch.clamp(torch.round(x / torch.tensor(scale, dtype=torch.float32)) + zp, 0, 2**bits - 1)
    return (q - zp) * scale


def _choose_range(lo: float, hi: float, sample: torch.Tensor, bits: int, method: str,
                  percentile: float) -> tuple[float, float]:
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        qs = torch.quantile(sample.double(),
                            torch.tensor([1 - percentile / 100, percentile / 100], dtype=torch.double))
        return (min(float(qs[0]), 0.0) if lo < 0 else lo), float(qs[1])
    if method == "mse":
        best, best_err = (lo, hi), None
        for r in CLIP_RATIOS:
            s, z = act_qparams(lo * r, hi * r, bits)
            err = float((sample - _fq_act(sample, float(s), z, bits)).pow(2).mean())
            if best_err is None or err < best_err:
                best, best_err = (lo * r, hi * r), err
        return best
    raise ValueError(f"unknown act_method {method!r}: 'auto', 'minmax', 'percentile' or 'mse'")


# ---------------------------------------------------------------- containers
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
    """Per-layer quantization parameters of a plan, keyed by torch module name."""

    layers: dict[str, LayerQParams] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

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
            json.dump({"version": 1, "meta": self.meta, "layers": entries}, f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantParams:
        """Read files written by :meth:`save`."""
        jpath, npath = cls._paths(path)
        with open(jpath) as f:
            d = json.load(f)
        qp = cls(meta=d.get("meta", {}))
        with np.load(npath) as z:
            for i, e in enumerate(d["layers"]):
                qp.layers[e["name"]] = LayerQParams(
                    e["name"], e["kind"], e["w_bits"], e["a_bits"], np.float32(e["a_scale"]),
                    int(e["a_zero_point"]), z[f"{i}_w_scale"].astype(np.float32),
                    z[f"{i}_w_q"].astype(np.int8),
                    z[f"{i}_bias"].astype(np.float32) if e["has_bias"] else None,
                    e.get("a_min", 0.0), e.get("a_max", 0.0))
        return qp


# ---------------------------------------------------------------- calibration
def _batches(calib_data: Any, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield input tensors from a tensor, a list of tensors, or (x, y) batches."""
    if isinstance(calib_data, torch.Tensor):
        yield from calib_data.split(batch_size)
        return
    for b in calib_data:
        yield b[0] if isinstance(b, (tuple, list)) else b


class _Observer:
    def __init__(self, per_batch: int, gen: torch.Generator):
        self.lo, self.hi = float("inf"), float("-inf")
        self.samples: list[torch.Tensor] = []
        self.per_batch, self.gen = per_batch, gen

    def __call__(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().float().flatten()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        if x.numel() > self.per_batch:
            x = x[torch.randint(0, x.numel(), (self.per_batch,), generator=self.gen)]
        self.samples.append(x.clone())


def calibrate(
    model: nn.Module,
    plan: QuantPlan,
    calib_data: Any,
    *,
    act_method: str = "auto",
    percentile: float = 99.99,
    weight_clip: str = "mse",
    batch_size: int = 64,
    max_batches: int | None = None,
    samples_per_batch: int = 1 << 14,
    seed: int = 0,
) -> QuantParams:
    """Compute :class:`QuantParams` for every non-fp32 layer of ``plan``.

    The model is BN-folded (:func:`fold_bn`, on a copy) and run in float over
    the calibration batches; forward pre-hooks observe each planned layer's
    input. Rules for scales and zero points: see the module docstring.

    Args:
        model: the float model (BN folded or not).
        plan: which layers to quantize, at which bits.
        calib_data: a tensor of inputs (split into ``batch_size`` batches), or
            an iterable of input tensors or of ``(x, y, ...)`` batches.
        act_method: "auto" (minmax at 8 bits, mse below), "minmax", "percentile", "mse".
        percentile: for "percentile", the upper percentile (lower: 100 - p if negative).
        weight_clip: "mse" or "max" (see :func:`quantize_weight`).
        max_batches: stop after this many batches.
        samples_per_batch: input values sampled per batch per layer for percentile/mse.
        seed: seed of that sampling.
    """
    folded = fold_bn(model)
    mods = dict(folded.named_modules())
    names = plan.quantized_layers()
    for n in names:
        if n not in mods:
            raise ValueError(f"plan layer {n!r} is not a module of the model")
        if not isinstance(mods[n], (nn.Conv2d, nn.Linear)):
            raise ValueError(f"plan layer {n!r} is a {type(mods[n]).__name__}, "
                             "not an nn.Conv2d / nn.Linear")
        if isinstance(mods[n], nn.Conv2d) and tuple(mods[n].dilation) != (1, 1):
            raise ValueError(f"plan layer {n!r} has dilation {mods[n].dilation}: not quantizable")
    gen = torch.Generator().manual_seed(seed)
    obs = {n: _Observer(samples_per_batch, gen) for n in names}
    hooks = [mods[n].register_forward_pre_hook(obs[n]) for n in names]
    try:
        with torch.no_grad():
            for i, x in enumerate(_batches(calib_data, batch_size)):
                if max_batches is not None and i >= max_batches:
                    break
                folded(x)
    finally:
        for h in hooks:
            h.remove()

    qp = QuantParams(meta={"act_method": act_method, "percentile": percentile,
                           "weight_clip": weight_clip, "clip_ratios": list(CLIP_RATIOS)})
    for n in names:
        cfg, m, o = plan[n], mods[n], obs[n]
        if not o.samples:
            raise ValueError(f"layer {n!r} never ran during calibration")
        method = act_method if act_method != "auto" else ("minmax" if cfg.a_bits == 8 else "mse")
        sample = torch.cat(o.samples)
        lo, hi = _choose_range(o.lo, o.hi, sample, cfg.a_bits, method, percentile)
        a_scale, zp = act_qparams(lo, hi, cfg.a_bits)
        assert cfg.w_bits != FP32
        w_q, w_scale = quantize_weight(m.weight, cfg.w_bits, weight_clip)
        bias = None if m.bias is None else m.bias.detach().float().numpy().copy()
        qp.layers[n] = LayerQParams(n, "conv2d" if isinstance(m, nn.Conv2d) else "linear",
                                    cfg.w_bits, cfg.a_bits, a_scale, zp, w_scale, w_q, bias,
                                    o.lo, o.hi)
    return qp
