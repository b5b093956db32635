"""Quantization-aware fine-tuning of a plan, and MOHAQ-style "beacons".

:func:`qat_finetune` fine-tunes the BN-folded float weights of a model under a plan with
straight-through fake quantization, then re-quantizes the weights. Two methods:

* ``"fixed"``: the calibrated activation scales / zero points and weight scales stay fixed;
* ``"lsq"`` (learned step size, Esser et al., ICLR 2020): the per-channel weight scales and
  the per-layer activation scale are trained too, with LSQ's gradient and its gradient
  scale 1 / sqrt(N * Q_max); activation zero points stay the calibrated integers (the
  contract's asymmetric uint codes), 1-bit weights keep their sign with a trained scale.

It returns the fine-tuned float model and its :class:`~tvm_mpq.quant.qparams.QuantParams`
(the learned scales as float32, integer weights re-quantized with them): both go to
:func:`tvm_mpq.fake_quant` and :func:`tvm_mpq.compile` unchanged (same contract), so the
compiled model still matches the reference exactly.

MOHAQ (multi-objective hardware-aware quantization) retrains only a few "beacon"
solutions and corrects the post-training accuracy of their neighbours by the beacon's
gain: :func:`beacon_correction` does that with the nearest beacon in bit-width space.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_mpq.quant.calibration import calibrate
from tvm_mpq.quant.folding import fold_bn, set_submodule
from tvm_mpq.quant.plan import FP32, QuantPlan
from tvm_mpq.quant.qparams import LayerQParams, QuantParams

__all__ = ["QAT_METHODS", "QATLayer", "beacon_correction", "plan_distance", "qat_finetune",
           "train_batches"]

#: what :func:`qat_finetune` trains besides the weights: nothing, or the scales (LSQ)
QAT_METHODS = ("fixed", "lsq")
#: smallest scale a trained one is clamped to (a step of zero would divide by zero)
_MIN_SCALE = 1e-8


class _SignSTE(torch.autograd.Function):
    """Binary weights {-1, +1} (+1 for 0) with a straight-through gradient."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return g


class QATLayer(nn.Module):
    """Trainable float weight, STE fake quantization; with ``learn_scales`` (LSQ) the weight
    and activation scales are trainable parameters too."""

    def __init__(self, mod: nn.Module, qp: LayerQParams, learn_scales: bool = False):
        super().__init__()
        self.mod, self.qp, self.learn_scales = mod, qp, learn_scales
        s_w = torch.from_numpy(qp.w_scale.astype(np.float32))
        s_a = torch.tensor([float(qp.a_scale)], dtype=torch.float32)
        if learn_scales:
            self.s_w, self.s_a = nn.Parameter(s_w), nn.Parameter(s_a)
        else:
            self.register_buffer("s_w", s_w)
            self.register_buffer("s_a", s_a)
        self.register_buffer("zeros", torch.zeros(len(qp.w_scale), dtype=torch.int32))
        self.register_buffer("z_a", torch.tensor([int(qp.a_zero_point)], dtype=torch.int32))

    def clamp_scales(self) -> None:
        """Keep trained scales positive (after each optimiser step)."""
        with torch.no_grad():
            self.s_w.clamp_(min=_MIN_SCALE)
            self.s_a.clamp_(min=_MIN_SCALE)

    def weight_fq(self) -> torch.Tensor:
        w = self.mod.weight
        shape = (-1,) + (1,) * (w.dim() - 1)
        if self.qp.w_bits == 1:
            return _SignSTE.apply(w) * self.s_w.view(shape)
        lo, hi = self.qp.w_range
        if self.learn_scales:  # LSQ: gradient scale 1 / sqrt(weights per channel * Q_max)
            g = 1.0 / float(np.sqrt(w[0].numel() * hi))
            return torch._fake_quantize_learnable_per_channel_affine(
                w, self.s_w, self.zeros.float(), 0, lo, hi, g)
        return torch.fake_quantize_per_channel_affine(w, self.s_w, self.zeros, 0, lo, hi)

    def input_fq(self, x: torch.Tensor) -> torch.Tensor:
        qp = self.qp
        if self.learn_scales:  # LSQ: gradient scale 1 / sqrt(activations per sample * Q_max)
            g = 1.0 / float(np.sqrt(x[0].numel() * qp.a_qmax))
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.s_a, self.z_a.float(), 0, qp.a_qmax, g)
        return torch.fake_quantize_per_tensor_affine(x, float(qp.a_scale), int(qp.a_zero_point),
                                                     0, qp.a_qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_fq(x)
        w = self.weight_fq()
        m = self.mod
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w, m.bias)

    def requantized(self) -> LayerQParams:
        """The layer's parameters with integer weights from the fine-tuned float weights."""
        qp = self.qp
        w = self.mod.weight.detach()
        s_w = self.s_w.detach().float()
        shape = (-1,) + (1,) * (w.dim() - 1)
        if qp.w_bits == 1:
            w_q = torch.where(w >= 0, 1, -1)
        else:
            lo, hi = qp.w_range
            w_q = torch.clamp(torch.round(w / s_w.view(shape)), lo, hi)
        bias = None if self.mod.bias is None else self.mod.bias.detach().float().numpy().copy()
        a_scale = np.float32(self.s_a.detach().item()) if self.learn_scales else qp.a_scale
        return LayerQParams(qp.name, qp.kind, qp.w_bits, qp.a_bits, a_scale, qp.a_zero_point,
                            s_w.numpy().astype(np.float32), w_q.numpy().astype(np.int8), bias,
                            qp.a_min, qp.a_max)


def train_batches(train_data: Any, batch_size: int, steps: int, seed: int) -> Iterable[tuple]:
    """``steps`` training batches: random draws (seeded) from ``(images, labels)`` tensors, or
    the batches of an iterable of ``(x, y)``, cycled."""
    if isinstance(train_data, (tuple, list)) and len(train_data) == 2 and \
            isinstance(train_data[0], torch.Tensor):
        x, y = train_data
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch_size,), generator=g)
            yield x[idx], y[idx]
        return
    n = 0
    while n < steps:
        for b in train_data:
            yield b[0], b[1]
            n += 1
            if n >= steps:
                return


def qat_finetune(model: nn.Module, plan: QuantPlan, calib_data: Any, train_data: Any, *,
                 qparams: QuantParams | None = None, steps: int = 300, lr: float = 1e-3,
                 batch_size: int = 128, seed: int = 0, progress: bool = False,
                 method: str = "fixed", scale_lr: float | None = None
                 ) -> tuple[nn.Module, QuantParams]:
    """Fine-tune ``model`` under ``plan`` with straight-through fake quantization.

    Args:
        model: float model (not modified; BN is folded on a copy).
        plan: the plan; fp32 layers are fine-tuned in float.
        calib_data: calibration inputs (for ``qparams`` when None, and for the fine-tuned
            model's value ranges).
        train_data: ``(images, labels)`` tensors (random batches are drawn) or an iterable
            of ``(x, y)`` batches. Use training data, not the evaluation split.
        qparams: the plan's calibration (the scales' starting point; fixed for "fixed").
        steps, lr, batch_size, seed: optimisation settings (Adam, cosine decay).
        method: one of :data:`QAT_METHODS`: ``"fixed"`` scales or ``"lsq"`` learned scales.
        scale_lr: learning rate of the LSQ scales (None: ``lr / 10``; scales are small).

    Returns:
        ``(finetuned_float_model, qparams)``: pass both to ``fake_quant`` / ``compile``;
        ``qparams.tensors`` holds the fine-tuned model's value ranges on ``calib_data``.
    """
    from tqdm.auto import tqdm

    if method not in QAT_METHODS:
        raise ValueError(f"unknown QAT method {method!r}: expected one of {QAT_METHODS}")
    torch.manual_seed(seed)
    folded = fold_bn(model)
    if qparams is None:
        qparams = calibrate(folded, plan, calib_data)
    train = copy.deepcopy(folded).train()
    wrappers: dict[str, QATLayer] = {}
    mods = dict(train.named_modules())
    for name in plan.quantized_layers():
        w = QATLayer(mods[name], qparams[name], learn_scales=method == "lsq")
        set_submodule(train, name, w)
        wrappers[name] = w
    scales = {id(p) for w in wrappers.values() if w.learn_scales for p in (w.s_w, w.s_a)}
    groups = [{"params": [p for p in train.parameters()
                          if p.requires_grad and id(p) not in scales], "lr": lr}]
    if scales:
        groups.append({"params": [p for p in train.parameters() if id(p) in scales],
                       "lr": lr / 10 if scale_lr is None else scale_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    bar = tqdm(total=steps, disable=not progress, desc="QAT", unit="step")
    for x, y in train_batches(train_data, batch_size, steps, seed):
        loss = F.cross_entropy(train(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for w in wrappers.values():
            w.clamp_scales()
        sched.step()
        bar.update()
        bar.set_postfix(loss=float(loss.detach()))
    bar.close()
    train.eval()
    out = QuantParams(meta={**qparams.meta, "qat": {"steps": steps, "lr": lr, "seed": seed,
                                                     "method": method}})
    for name, w in wrappers.items():
        out.layers[name] = w.requantized()
        set_submodule(train, name, w.mod)  # back to a plain float model
    train.eval()
    if wrappers:  # integer-only inference needs the fine-tuned model's own value ranges
        from tvm_mpq.quant.exported import observe_tensor_ranges
        from tvm_mpq.quant.observers import iter_batches

        out.tensors = observe_tensor_ranges(train, iter_batches(calib_data, batch_size))
    return train, out


def _genes(plan: QuantPlan, layers: Sequence[str]) -> np.ndarray:
    def code(n: str) -> tuple[float, float]:
        c = plan[n] if n in plan else None
        if c is None or c.is_fp32:
            return (np.log2(FP32), np.log2(FP32))
        return (np.log2(c.w_bits), np.log2(c.a_bits))

    return np.asarray([v for n in layers for v in code(n)], dtype=np.float64)


def plan_distance(a: QuantPlan, b: QuantPlan) -> float:
    """L1 distance between two plans' per-layer log2 bit-widths (fp32 counts as 32 bits)."""
    layers = a.layers()
    return float(np.abs(_genes(a, layers) - _genes(b, layers)).sum())


def beacon_correction(ptq_acc: Sequence[float], plans: Sequence[QuantPlan],
                      beacons: Sequence[tuple[QuantPlan, float, float]]) -> list[float]:
    """MOHAQ correction: each plan's PTQ accuracy plus its nearest beacon's QAT gain.

    Args:
        ptq_acc: post-training accuracy of each plan.
        plans: the plans.
        beacons: ``(plan, ptq_accuracy, qat_accuracy)`` of the retrained beacons.

    Returns:
        The corrected accuracy estimates (clipped to [0, 1]).
    """
    if not beacons:
        return list(map(float, ptq_acc))
    out = []
    for acc, p in zip(ptq_acc, plans, strict=True):
        b = min(beacons, key=lambda t: plan_distance(p, t[0]))
        out.append(float(min(1.0, max(0.0, acc + (b[2] - b[1])))))
    return out
