"""Rewriting the float model: BatchNorm folding and submodule replacement.

Calibration, the fake-quant reference, sensitivity and QAT all work on the BN-folded model
(:func:`fold_bn`) and swap layers by their torch module name (:func:`set_submodule`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule of ``root`` at the dotted ``name`` (as ``named_modules()`` spells
    it, e.g. ``"layer1.0.conv1"``) by ``new``, in place."""
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
            set_submodule(m, src.target, fuse_conv_bn_eval(mods[src.target], mods[n.target]))
            set_submodule(m, n.target, nn.Identity())
    return m
