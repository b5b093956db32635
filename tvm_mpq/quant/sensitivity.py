"""Per-layer quantization sensitivity by post-training quantization.

For each quantizable layer and each candidate ``(w_bits, a_bits)`` only that
layer is fake-quantized (every other layer stays fp32) and the model is run on
a small evaluation subset; the table records, against the fp32 model on the
same inputs:

* ``loss_delta``: cross-entropy increase (needs labels),
* ``acc_drop``: top-1 accuracy drop, a fraction (needs labels),
* ``kl``: mean KL(fp32 softmax || quantized softmax) (needs no labels),
* ``rel_mse``: output distortion relative to fp32, ``||q - ref||^2 / ||ref||^2`` over all
  outputs (needs no labels; the proxy for outputs that are not class logits).

Without labels the search uses ``kl`` when the model's output looks like class logits
(``(batch, classes)`` with at least two classes) and ``rel_mse`` otherwise (regression,
dense maps, embeddings); :meth:`SensitivityTable.default_metric` says which.

Calibration runs once per bits pair: activation ranges are observed on the
float model, where every layer's input is the same whether one layer or all
are planned, so the uniform plan's :class:`~tvm_mpq.quant.qparams.QuantParams`
serve every single-layer plan (bit-identical to calling
:func:`~tvm_mpq.quant.fakequant.fake_quant` per layer, without its model copies).

The additive proxy :meth:`SensitivityTable.plan_drop` sums per-layer values
(first-order: interactions between layers are ignored; the search refines
front members with real evaluations, see :func:`tvm_mpq.search.refine.refine`).

Public API::

    sens = layer_sensitivity(model, calib_x, (eval_x, eval_y), bits=[(8, 8), (4, 4), (2, 2)])
    sens.save("sens.json"); sens = SensitivityTable.load("sens.json")
    sens.value("features.3.conv", 4, 4, metric="loss")
    sens.plan_drop(plan, metric="loss")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_mpq.quant.calibration import calibrate
from tvm_mpq.quant.fakequant import QuantConv2d, QuantLinear
from tvm_mpq.quant.folding import fold_bn, set_submodule
from tvm_mpq.quant.plan import QuantPlan

__all__ = ["METRICS", "SensitivityTable", "layer_sensitivity", "split_eval_data"]

METRICS = ("loss", "acc", "kl", "rel_mse")
_FIELD = {"loss": "loss_delta", "acc": "acc_drop", "kl": "kl", "rel_mse": "rel_mse"}


def _bits_key(w: int, a: int) -> str:
    return f"w{w}a{a}"


@dataclass
class SensitivityTable:
    """Per-layer, per-bits sensitivity.

    Attributes:
        layers: layer names (plan order).
        bits: the ``(w_bits, a_bits)`` pairs measured.
        entries: ``entries[layer]["w4a4"] = {"loss_delta": .., "acc_drop": .., "kl": ..}``
            (``loss_delta`` / ``acc_drop`` are None without labels).
        base: fp32 ``{"loss": .., "acc": ..}`` on the evaluation subset.
        meta: how it was computed (subset sizes, calibration options).
    """

    layers: list[str]
    bits: list[tuple[int, int]]
    entries: dict[str, dict[str, dict[str, float | None]]]
    base: dict[str, float | None] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def has_labels(self) -> bool:
        return self.base.get("acc") is not None

    def default_metric(self) -> str:
        """"loss" when labels were given (smoother than accuracy on a small subset), else the
        label-free proxy of the model's output: "kl" for class logits, "rel_mse" otherwise."""
        return "loss" if self.has_labels() else str(self.meta.get("label_free", "kl"))

    def value(self, layer: str, w_bits: int, a_bits: int, metric: str | None = None) -> float:
        """Sensitivity of one layer at one bits pair (0 for fp32).

        Raises:
            KeyError: layer or bits pair not in the table (message names what is known).
        """
        if w_bits >= 32:
            return 0.0
        metric = metric or self.default_metric()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if layer not in self.entries:
            raise KeyError(f"layer {layer!r} not in the sensitivity table "
                           f"({len(self.layers)} layers)")
        e = self.entries[layer].get(_bits_key(w_bits, a_bits))
        if e is None:
            raise KeyError(f"w{w_bits}a{a_bits} not measured; table has "
                           f"{', '.join(_bits_key(*b) for b in self.bits)}")
        v = e[_FIELD[metric]]
        if v is None:
            raise ValueError(f"metric {metric!r} needs labels; this table has only the "
                             "label-free 'kl' and 'rel_mse'")
        return float(v)

    def plan_drop(self, plan: QuantPlan, metric: str | None = None, clip: bool = True) -> float:
        """Additive proxy of a whole plan: the sum of its layers' values.

        Args:
            clip: count negative per-layer values (noise: quantization "helping" on a
                small subset) as 0, so many small negatives do not hide a real drop.
        """
        total = 0.0
        for name, cfg in plan.items():
            if not cfg.is_fp32:
                v = self.value(name, cfg.w_bits, cfg.a_bits, metric)
                total += max(v, 0.0) if clip else v
        return total

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "layers": self.layers, "bits": [list(b) for b in self.bits],
                "entries": self.entries, "base": self.base, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityTable:
        if d.get("version") != 1:
            raise ValueError(f"unsupported sensitivity table version {d.get('version')!r}")
        return cls(list(d["layers"]), [tuple(b) for b in d["bits"]], d["entries"],
                   d.get("base", {}), d.get("meta", {}))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SensitivityTable:
        """Read a table written by :meth:`save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def summary(self, metric: str | None = None) -> str:
        metric = metric or self.default_metric()
        head = "layer".ljust(32) + "".join(_bits_key(*b).rjust(10) for b in self.bits)
        rows = [head]
        for n in self.layers:
            rows.append(n[:31].ljust(32) + "".join(
                f"{self.value(n, w, a, metric):10.4f}" for w, a in self.bits))
        return "\n".join(rows)


def split_eval_data(eval_data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, labels)`` of evaluation data given as ``(images, labels)`` or images alone.

    Images become a float32 tensor, labels (None when absent) a flat int64 one.
    """
    if isinstance(eval_data, (tuple, list)):
        x = eval_data[0]
        y = eval_data[1] if len(eval_data) > 1 else None
    else:
        x, y = eval_data, None
    x = torch.as_tensor(x, dtype=torch.float32)
    y = None if y is None else torch.as_tensor(y).long().reshape(-1)
    return x, y


def _outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, bool]:
    """The model's outputs on ``x``, flattened per sample, and whether they look like class
    logits (``(batch, classes)``, at least two classes)."""
    with torch.no_grad():
        outs = [model(b).float() for b in x.split(batch_size)]
    logits_like = outs[0].ndim == 2 and outs[0].shape[1] >= 2
    return torch.cat([o.reshape(len(o), -1) for o in outs]), logits_like


def _scores(out: torch.Tensor, ref: torch.Tensor, ref_logp: torch.Tensor,
            y: torch.Tensor | None) -> dict[str, float | None]:
    logp = F.log_softmax(out, dim=1)
    # KL >= 0; float rounding can make a near-zero value slightly negative
    kl = max(float((ref_logp.exp() * (ref_logp - logp)).sum(dim=1).mean()), 0.0)
    rel = float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))
    if y is None:
        return {"loss": None, "acc": None, "kl": kl, "rel_mse": rel}
    loss = float(F.nll_loss(logp, y))
    acc = float((out.argmax(dim=1) == y).float().mean())
    return {"loss": loss, "acc": acc, "kl": kl, "rel_mse": rel}


def layer_sensitivity(
    model: nn.Module,
    calib_data: Any,
    eval_data: Any,
    bits: Sequence[tuple[int, int]] = ((8, 8), (4, 8), (4, 4), (2, 2)),
    layers: Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    progress: bool = True,
    **calib_kwargs: Any,
) -> SensitivityTable:
    """Measure the sensitivity of every layer at every bits pair (see module docstring).

    Args:
        model: the float model (not modified).
        calib_data: calibration inputs, as :func:`~tvm_mpq.quant.calibration.calibrate` takes them.
        eval_data: ``(images, labels)`` or images alone (then only "kl" and "rel_mse" are
            recorded);
            keep it small: the cost is ``len(layers) * len(bits)`` forward passes over it
            plus one calibration per bits pair (MobileNetV2 on Fashion-MNIST, 53 layers x
            3 pairs x 256 images: ~13 min on 2 busy CPU cores).
        bits: candidate ``(w_bits, a_bits)`` pairs, each in {1, 2, 4, 8}.
        layers: layer names (default: every quantizable Conv2d / Linear, definition order;
            pass ``LayerTable.quantizable_names()`` for forward order).
        batch_size: evaluation batch size.
        progress: tqdm progress bar.
        **calib_kwargs: forwarded to ``calibrate`` (``act_method``, ``weight_clip``, ...).
    """
    from tqdm.auto import tqdm

    from tvm_mpq.frontend.importer import quantizable_modules

    bits = [(int(w), int(a)) for w, a in bits]
    folded = fold_bn(model)
    names = list(layers) if layers is not None else quantizable_modules(folded)
    if not names:
        raise ValueError("model has no quantizable Conv2d / Linear layer")
    mods = dict(folded.named_modules())
    for n in names:
        if not isinstance(mods.get(n), (nn.Conv2d, nn.Linear)):
            raise ValueError(f"layer {n!r} is not an nn.Conv2d / nn.Linear of the model")
    x, y = split_eval_data(eval_data)
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(x)} eval images but {len(y)} labels")
    ref, logits_like = _outputs(folded, x, batch_size)
    if y is not None and not logits_like:
        raise ValueError(f"labels need class logits of shape (batch, classes); the model's "
                         f"output has {ref.shape[1]} value(s) per sample: give eval_fn and no "
                         "labels (label-free sensitivity)")
    ref_logp = F.log_softmax(ref, dim=1)
    base = _scores(ref, ref, ref_logp, y)
    entries: dict[str, dict[str, dict[str, float | None]]] = {n: {} for n in names}
    bar = tqdm(total=len(names) * len(bits), disable=not progress, desc="sensitivity",
               unit="layer")
    try:
        for w, a in bits:
            plan = QuantPlan((n, _cfg(w, a)) for n in names)
            qp = calibrate(folded, plan, calib_data, **calib_kwargs)  # once per bits pair
            for n in names:
                orig = mods[n]
                q = (QuantConv2d(orig, qp[n]) if isinstance(orig, nn.Conv2d)
                     else QuantLinear(orig, qp[n]))
                set_submodule(folded, n, q)
                try:
                    sc = _scores(_outputs(folded, x, batch_size)[0], ref, ref_logp, y)
                finally:
                    set_submodule(folded, n, orig)
                entries[n][_bits_key(w, a)] = {
                    "loss_delta": None if y is None else sc["loss"] - base["loss"],
                    "acc_drop": None if y is None else base["acc"] - sc["acc"],
                    "kl": sc["kl"], "rel_mse": sc["rel_mse"],
                }
                bar.update()
    finally:
        bar.close()
    meta = {"n_eval": int(len(x)), "calib_kwargs": {k: _jsonable(v) for k, v in calib_kwargs.items()},
            "order": "given" if layers is not None else "definition",
            "label_free": "kl" if logits_like else "rel_mse"}
    return SensitivityTable(names, bits, entries, {"loss": base["loss"], "acc": base["acc"]}, meta)


def _cfg(w: int, a: int) -> Any:
    from tvm_mpq.quant.plan import LayerConfig

    return LayerConfig(w, a)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v if not (isinstance(v, float) and math.isnan(v)) else None
    return repr(v)


def sensitivity_matrix(table: SensitivityTable, layers: Sequence[str],
                       options: Sequence[Sequence[tuple[int, int]]], metric: str | None = None,
                       clip: bool = True) -> list[np.ndarray]:
    """Per-layer arrays of proxy values for each layer's option list of (w, a) pairs
    (32 = fp32 -> 0); helper of the search problem."""
    out = []
    for name, opts in zip(layers, options, strict=True):
        vals = np.asarray([table.value(name, w, a, metric) for w, a in opts], dtype=np.float64)
        out.append(np.maximum(vals, 0.0) if clip else vals)
    return out
