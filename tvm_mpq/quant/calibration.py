"""Weight quantization and activation calibration: :func:`calibrate`.

Everything here runs once, on the BN-folded float model (:func:`~tvm_mpq.quant.folding.
fold_bn`), and produces the :class:`~tvm_mpq.quant.qparams.QuantParams` shared by the torch
reference (:mod:`tvm_mpq.quant.fakequant`) and the TVM-compiled model.

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
asymmetric with ``qmax = 2^a - 1``, from a range ``[lo, hi]`` widened to
include 0 (torch.ao ``MinMaxObserver`` rule):
  ``s_a = max((hi - lo) / qmax, eps_f32)``, ``z = clamp(-round(lo / s_a), 0, qmax)``.
  The range is the exact min/max ``[lo0, hi0]`` over all calibration batches
  ("minmax"), a percentile of a sample of the inputs ("percentile"), the
  shrink ``r * [lo0, hi0]``, ``r`` in :data:`CLIP_RATIOS`, minimising the
  input's quantization MSE on that sample ("mse"), or the shrink minimising the
  layer's *output* error ("output", below). ``act_method="auto"`` (default)
  is "output"; "legacy" is the v1 rule ("minmax" at 8 bits, "mse" below).

Data-driven steps (defaults; each opt-out), per layer, on the layer's float
input ``x`` for the first ``opt_images`` calibration images and its float
output ``y = f(x, w)`` (conv / linear without bias):
  1. activation range ("output"): the ``r`` minimising
     ``sum_k ||f(fq(x), w_fq) - y||^2_k`` (per-channel error with its mean
     removed when bias correction is on, since step 3 removes the mean);
  2. weight clip (``weight_clip="output"``, default via "auto"; bits >= 2):
     starting from the "mse" weights, per output channel ``k`` the ratio in
     :data:`CLIP_RATIOS` minimising that channel's output error on ``fq(x)``;
     then step 1 is repeated once with the final weights;
  3. bias correction (``bias_correction=True``): ``bias[k] += mean(y_k -
     f(fq(x), w_fq)_k)`` over images and positions (empirical bias correction,
     Nagel et al. 2019); a layer without bias gets one.
  Optional (``adaround_iters > 0``, off by default, minutes on CPU): before
  step 3, AdaRound picks floor or ceil of ``w / s_w`` per weight (same scale,
  same integer range) by minimising the output error with Adam.
  All steps use the *float* model's inputs, so a layer's parameters depend only
  on the model, the data and its own bits, never on the rest of the plan (the
  search composes per-layer parameters of uniform plans).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_mpq.quant.folding import fold_bn
from tvm_mpq.quant.observers import RangeObserver, capture_input, iter_batches, observe
from tvm_mpq.quant.plan import FP32, LayerConfig, QuantPlan
from tvm_mpq.quant.qparams import LayerQParams, QuantParams

__all__ = ["CLIP_RATIOS", "LEGACY", "act_qparams", "calibrate", "quantize_weight"]

CLIP_RATIOS: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(17))
"""Clip-ratio grid (1.00 ... 0.20) for the MSE weight / activation range search."""

_EPS = float(torch.finfo(torch.float32).eps)


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


# ---------------------------------------------------------------- calibration
def _linear_op(m: nn.Module) -> Any:
    """``f(x, w)``: the layer without bias (conv keeps stride / padding / groups)."""
    if isinstance(m, nn.Conv2d):
        return lambda x, w: m._conv_forward(x, w, None)
    return lambda x, w: F.linear(x, w)


def _chan_err(y: torch.Tensor, ref: torch.Tensor, centered: bool) -> torch.Tensor:
    """Per-output-channel squared error (channel dim 1); ``centered`` drops the mean shift."""
    d = (y - ref).transpose(0, 1).reshape(y.shape[1], -1)
    if centered:
        d = d - d.mean(1, keepdim=True)
    return d.pow(2).mean(1)


def _weight_at_ratios(w: torch.Tensor, bits: int, ratios: torch.Tensor) -> tuple[torch.Tensor,
                                                                                  torch.Tensor]:
    """Quantize ``w`` per channel with scale ``ratios[k] * max|w_k| / qmax`` -> (w_q, s_w)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1)
    amax = flat.abs().amax(1)
    amax = torch.where(amax > 0, amax, torch.full_like(amax, float(qmax)))
    s = (amax * ratios / qmax).float()
    shape = (-1,) + (1,) * (w.dim() - 1)
    return torch.clamp(torch.round(w / s.view(shape)), qmin, qmax), s


def _optimize_layer(m: nn.Module, x: torch.Tensor, bits_w: int, bits_a: int, lo: float, hi: float,
                    w_q: torch.Tensor, w_s: torch.Tensor, *, act_output: bool, weight_output: bool,
                    bias_correction: bool, fixed_range: tuple[float, float],
                    adaround_iters: int = 0, gen: torch.Generator | None = None) -> tuple[
                        tuple[float, float], torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Data-driven choices for one layer from its float input ``x`` (see module docstring).

    Returns ``((lo, hi), w_q, w_s, bias_delta)``; ``bias_delta`` is None without bias correction.
    """
    op = _linear_op(m)
    w = m.weight.detach().float()
    shape = (-1,) + (1,) * (w.dim() - 1)
    with torch.no_grad():
        ref = op(x, w)
        rng = fixed_range

        def fq_in(r: tuple[float, float]) -> torch.Tensor:
            s, z = act_qparams(r[0], r[1], bits_a)
            return _fq_act(x, float(s), z, bits_a)

        def act_search(wf: torch.Tensor) -> tuple[float, float]:
            best, best_err = rng, None
            for r in CLIP_RATIOS:
                cand = (lo * r, hi * r)
                err = float(_chan_err(op(fq_in(cand), wf), ref, bias_correction).sum())
                if best_err is None or err < best_err:
                    best, best_err = cand, err
            return best

        wf = w_q * w_s.view(shape)
        if act_output:
            rng = act_search(wf)
        xq = fq_in(rng)
        if weight_output and bits_w > 1:
            best_err = _chan_err(op(xq, wf), ref, bias_correction)
            for r in CLIP_RATIOS:
                q, s = _weight_at_ratios(w, bits_w, torch.full((w.shape[0],), r))
                err = _chan_err(op(xq, q * s.view(shape)), ref, bias_correction)
                better = err < best_err
                w_q = torch.where(better.view(shape), q, w_q)
                w_s = torch.where(better, s, w_s)
                best_err = torch.where(better, err, best_err)
            wf = w_q * w_s.view(shape)
            if act_output:  # one more pass with the final weights
                rng = act_search(wf)
                xq = fq_in(rng)
        if adaround_iters > 0 and bits_w > 1:
            w_q = _adaround(op, x, xq, ref, w, w_q, w_s, bits_w, adaround_iters, gen)
            wf = w_q * w_s.view(shape)
        delta = None
        if bias_correction:
            d = (ref - op(xq, wf)).transpose(0, 1).reshape(w.shape[0], -1)
            delta = d.mean(1)
    return rng, w_q, w_s, delta


def _adaround(op: Any, x: torch.Tensor, xq: torch.Tensor, ref: torch.Tensor, w: torch.Tensor,
              w_q: torch.Tensor, w_s: torch.Tensor, bits: int, iters: int,
              gen: torch.Generator | None, batch: int = 32, lam: float = 0.01) -> torch.Tensor:
    """AdaRound-lite (Nagel et al. 2020): learn floor-or-ceil per weight on the layer output.

    The scale stays fixed; the result is ``clamp(floor(w / s) + {0, 1}, qmin, qmax)``, so
    it is an ordinary integer weight of the same range. Minimises the output error of the
    layer on its quantized input against the float output, with the rectified-sigmoid
    relaxation and an annealed regulariser pushing each weight to 0 or 1.
    """
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    shape = (-1,) + (1,) * (w.dim() - 1)
    s = w_s.view(shape)
    base = torch.floor(w / s)
    frac = (w / s - base).clamp(0.01, 0.99)
    zeta, gamma = 1.1, -0.1
    v = (-torch.log((zeta - gamma) / (frac - gamma) - 1)).clone().requires_grad_(True)
    n = len(x)
    with torch.enable_grad():
        _adaround_loop(op, xq, ref, v, base, s, qmin, qmax, iters, gen, batch, lam, n)
    with torch.no_grad():
        return torch.clamp(base + (v >= 0).float(), qmin, qmax)


def _adaround_loop(op: Any, xq: torch.Tensor, ref: torch.Tensor, v: torch.Tensor,
                   base: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int, iters: int,
                   gen: torch.Generator | None, batch: int, lam: float, n: int) -> None:
    """The optimisation loop of :func:`_adaround` (updates ``v`` in place)."""
    zeta, gamma = 1.1, -0.1
    opt = torch.optim.Adam([v], lr=1e-2)
    warm = int(0.2 * iters)
    for it in range(iters):
        idx = torch.randint(0, n, (min(batch, n),), generator=gen)
        h = torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0, 1)
        wf = torch.clamp(base + h, qmin, qmax) * s
        out = op(xq[idx], wf)
        d = (out - ref[idx])
        rec = d.pow(2).sum(1).mean() if d.dim() > 1 else d.pow(2).mean()
        loss = rec
        if it >= warm:
            beta = 20 + (2 - 20) * (it - warm) / max(1, iters - warm)
            loss = loss + lam * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


LEGACY: dict[str, Any] = {"act_method": "legacy", "weight_clip": "mse", "bias_correction": False}
"""``calibrate(..., **LEGACY)`` reproduces the rules before data-driven calibration (v1)."""


def calibrate(
    model: nn.Module,
    plan: QuantPlan,
    calib_data: Any,
    *,
    act_method: str = "auto",
    percentile: float = 99.99,
    weight_clip: str = "auto",
    bias_correction: bool = True,
    opt_images: int = 128,
    adaround_iters: int = 0,
    batch_size: int = 64,
    max_batches: int | None = None,
    samples_per_batch: int = 1 << 14,
    seed: int = 0,
) -> QuantParams:
    """Compute :class:`QuantParams` for every non-fp32 layer of ``plan``.

    The model is BN-folded (:func:`fold_bn`, on a copy) and run in float over
    the calibration batches; forward pre-hooks observe each planned layer's
    input. Rules for scales, zero points and bias: see the module docstring.
    A layer's parameters depend only on the float model, the calibration data,
    the keyword arguments and that layer's own bits, never on how the plan
    quantizes the other layers.

    Args:
        model: the float model (BN folded or not).
        plan: which layers to quantize, at which bits.
        calib_data: a tensor of inputs (split into ``batch_size`` batches), or
            an iterable of input tensors or of ``(x, y, ...)`` batches.
        act_method: "auto" ("output"), "output" (minimise the layer's output
            error), "minmax", "percentile", "mse" (input quantization MSE) or
            "legacy" (the v1 rule: minmax at 8 bits, "mse" below).
        percentile: for "percentile", the upper percentile (lower: 100 - p if negative).
        weight_clip: "auto" ("output"), "output" (per channel, minimise that
            output channel's error), "mse" or "max" (see :func:`quantize_weight`).
        bias_correction: add the mean output shift caused by quantization (per
            channel, on the first ``opt_images`` calibration images) to the bias.
        opt_images: calibration images used by "output", bias correction and AdaRound.
        adaround_iters: if > 0, learn each weight's rounding direction (floor or ceil,
            AdaRound) for that many Adam steps per layer, on the layer's output error.
            Slow (minutes on CPU); 0 (default) rounds to nearest.
        max_batches: stop after this many batches.
        samples_per_batch: input values sampled per batch per layer for percentile/mse.
        seed: seed of that sampling.
    """
    if act_method not in ("auto", "output", "minmax", "percentile", "mse", "legacy"):
        raise ValueError(f"unknown act_method {act_method!r}: 'auto', 'output', 'minmax', "
                         "'percentile', 'mse' or 'legacy'")
    if weight_clip not in ("auto", "output", "mse", "max"):
        raise ValueError(f"weight_clip must be 'auto', 'output', 'mse' or 'max', got {weight_clip!r}")
    folded = fold_bn(model)
    mods = dict(folded.named_modules())
    names = plan.quantized_layers()
    _check_layers(names, mods)
    obs = {n: RangeObserver(samples_per_batch, seed, n) for n in names}
    kept = observe(folded, [mods[n] for n in names], [obs[n] for n in names],
                   iter_batches(calib_data, batch_size), max_batches, opt_images)
    s = _Settings(act_method, percentile, weight_clip, bias_correction, adaround_iters,
                  batch_size, seed)
    x_opt = torch.cat(kept) if s.data_driven and kept else None
    qp = QuantParams(meta={"act_method": act_method, "percentile": percentile,
                           "weight_clip": weight_clip, "bias_correction": bias_correction,
                           "opt_images": opt_images, "adaround_iters": adaround_iters,
                           "clip_ratios": list(CLIP_RATIOS)})
    for n in names:
        qp.layers[n] = _layer_qparams(n, plan[n], mods[n], obs[n], folded, x_opt, s)
    if names:
        from tvm_mpq.quant.exported import observe_tensor_ranges

        qp.tensors = observe_tensor_ranges(folded, iter_batches(calib_data, batch_size),
                                           max_batches)
    return qp


def _check_layers(names: list[str], mods: dict[str, nn.Module]) -> None:
    """Every planned layer is a quantizable conv2d / linear of the model."""
    for n in names:
        if n not in mods:
            raise ValueError(f"plan layer {n!r} is not a module of the model")
        if not isinstance(mods[n], (nn.Conv2d, nn.Linear)):
            raise ValueError(f"plan layer {n!r} is a {type(mods[n]).__name__}, "
                             "not an nn.Conv2d / nn.Linear")
        if isinstance(mods[n], nn.Conv2d) and tuple(mods[n].dilation) != (1, 1):
            raise ValueError(f"plan layer {n!r} has dilation {mods[n].dilation}: not quantizable")


@dataclass(frozen=True)
class _Settings:
    """The keyword arguments of :func:`calibrate` that shape each layer's parameters."""

    act_method: str
    percentile: float
    weight_clip: str
    bias_correction: bool
    adaround_iters: int
    batch_size: int
    seed: int

    @property
    def act_out(self) -> bool:
        return self.act_method in ("auto", "output")

    @property
    def w_out(self) -> bool:
        return self.weight_clip in ("auto", "output")

    @property
    def data_driven(self) -> bool:
        return self.act_out or self.w_out or self.bias_correction or self.adaround_iters > 0

    def start_method(self, a_bits: int) -> str:
        """The activation-range rule before any data-driven search."""
        if self.act_method == "legacy":
            return "minmax" if a_bits == 8 else "mse"
        if self.act_out:
            return "minmax"  # starting point of the output search
        return self.act_method


def _layer_qparams(n: str, cfg: LayerConfig, m: nn.Module, o: RangeObserver, folded: nn.Module,
                   x_opt: torch.Tensor | None, s: _Settings) -> LayerQParams:
    """One layer's parameters: observed range and weight rule, then the data-driven steps
    on its float input when ``x_opt`` is given."""
    if not o.samples:
        raise ValueError(f"layer {n!r} never ran during calibration")
    assert cfg.w_bits != FP32
    method = s.start_method(cfg.a_bits)
    sample = torch.cat(o.samples) if method in ("percentile", "mse") else o.samples[0]
    lo, hi = _choose_range(o.lo, o.hi, sample, cfg.a_bits, method, s.percentile)
    w_q_np, w_s_np = quantize_weight(m.weight, cfg.w_bits, "max" if s.weight_clip == "max"
                                     else "mse")
    bias = None if m.bias is None else m.bias.detach().float().numpy().copy()
    if x_opt is not None:
        x_in = capture_input(folded, m, x_opt, s.batch_size)
        (lo, hi), w_q_t, w_s_t, delta = _optimize_layer(
            m, x_in, cfg.w_bits, cfg.a_bits, o.lo, o.hi,
            torch.from_numpy(w_q_np.astype(np.float32)), torch.from_numpy(w_s_np),
            act_output=s.act_out, weight_output=s.w_out, bias_correction=s.bias_correction,
            fixed_range=(lo, hi), adaround_iters=s.adaround_iters,
            gen=torch.Generator().manual_seed(s.seed + zlib.crc32(n.encode())))
        w_q_np = w_q_t.to(torch.int8).numpy()
        w_s_np = w_s_t.numpy().astype(np.float32)
        if delta is not None:
            d = delta.numpy().astype(np.float32)
            bias = d if bias is None else (bias + d).astype(np.float32)
    a_scale, zp = act_qparams(lo, hi, cfg.a_bits)
    return LayerQParams(n, "conv2d" if isinstance(m, nn.Conv2d) else "linear",
                        cfg.w_bits, cfg.a_bits, a_scale, zp, w_s_np, w_q_np, bias, o.lo, o.hi)
