"""Small plain-torch CNNs for 28-32 px inputs (no torchvision dependency).

Every conv is ``Conv2d(bias=False) -> BatchNorm2d [-> ReLU/ReLU6]`` inside an
``nn.Sequential`` so BN can be folded by position, and module names follow
torchvision (``features.3.conv.0.0``, ``classifier.1``); those names are the
stable keys for per-layer bit-widths. All models export with ``torch.export``
and import with ``tvm.relax.frontend.torch.from_exported_program``.

Models are sized for Fashion-MNIST (1x28x28) by default: the MobileNet stem
keeps full resolution (``stem_stride=1``) and the later stages downsample as in
the originals. The committed MobileNetV2 checkpoint uses ``stem_stride=2``
(2.5x cheaper to train and run on a small CPU); see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODELS",
    "WEIGHTS_DIR",
    "MobileNetV1",
    "MobileNetV2",
    "ResNet",
    "build",
    "checkpoint_path",
    "load_pretrained",
]

#: Directory holding the committed checkpoints (``<name>_fmnist.pt``).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` (as torchvision), never dropping >10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> activation`` (children ``0``, ``1``, ``2``).

    ``act=None`` gives a linear conv+BN (projection / residual branch end).
    """

    def __init__(
        self,
        inp: int,
        oup: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(inp, oup, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(oup),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class _PooledClassifier(nn.Module):
    """The MobileNets' common head: ``features`` -> global average ``pool`` -> ``classifier``
    (dropout + linear), then the weight initialisation."""

    def _finish(self, feats: list[nn.Module], channels: int, num_classes: int,
                dropout: float) -> None:
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection (+ skip)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, kernel_size=1))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(_PooledClassifier):
    """MobileNetV2 (Sandler et al. 2018) with torchvision module names.

    Args:
        num_classes: classifier outputs.
        width_mult: channel multiplier (0.35, 0.5, 0.75, 1.0 ...).
        in_channels: input channels (1 for Fashion-MNIST).
        stem_stride: 1 keeps 28-32 px inputs at full resolution in the first stage
            (ImageNet uses 2).
        last_channel: width of the final 1x1 conv; ``None`` keeps torchvision's
            ``1280 * max(1, width_mult)``. Smaller values shrink the checkpoint.
        dropout: dropout before the classifier (identity in eval/export).
    """

    # t (expansion), c (channels), n (repeats), s (first stride)
    CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        in_channels: int = 1,
        stem_stride: int = 1,
        last_channel: int | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        inp = _make_divisible(32 * width_mult)
        if last_channel is None:
            last_channel = _make_divisible(1280 * max(1.0, width_mult))
        self.last_channel = last_channel
        feats: list[nn.Module] = [ConvBNAct(in_channels, inp, stride=stem_stride)]
        for t, c, n, s in self.CFG:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        feats.append(ConvBNAct(inp, last_channel, kernel_size=1))
        self._finish(feats, last_channel, num_classes, dropout)


# --------------------------------------------------------------------------- MobileNetV1


class MobileNetV1(_PooledClassifier):
    """MobileNetV1 (Howard et al. 2017): stem conv + 13 depthwise-separable blocks.

    ``features.N`` (N >= 1) is ``Sequential(depthwise ConvBNAct, pointwise ConvBNAct)``,
    so convs are named ``features.N.0.0`` (3x3 depthwise) and ``features.N.1.0`` (1x1).

    Args:
        num_classes: classifier outputs.
        width_mult: channel multiplier (channels rounded to multiples of 8).
        in_channels: input channels (1 for Fashion-MNIST).
        stem_stride: 1 for 28-32 px inputs, 2 for ImageNet-sized inputs.
        dropout: dropout before the classifier (identity in eval/export).
    """

    # (pointwise output channels, depthwise stride)
    CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
           (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        in_channels: int = 1,
        stem_stride: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inp = _make_divisible(32 * width_mult)
        feats: list[nn.Module] = [
            ConvBNAct(in_channels, inp, stride=stem_stride, act=nn.ReLU)
        ]
        for c, s in self.CFG:
            out = _make_divisible(c * width_mult)
            feats.append(nn.Sequential(
                ConvBNAct(inp, inp, stride=s, groups=inp, act=nn.ReLU),
                ConvBNAct(inp, out, kernel_size=1, act=nn.ReLU),
            ))
            inp = out
        self._finish(feats, inp, num_classes, dropout)


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(conv(x) + shortcut(x))``.

    ``conv.0.0`` / ``conv.1.0`` are the two 3x3 convs; ``shortcut.0`` is the 1x1
    projection when the shape changes (otherwise ``shortcut`` is an identity).
    """

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            ConvBNAct(inp, oup, stride=stride, act=nn.ReLU),
            ConvBNAct(oup, oup, act=None),
        )
        self.shortcut: nn.Module
        if stride != 1 or inp != oup:
            self.shortcut = ConvBNAct(inp, oup, kernel_size=1, stride=stride, act=None)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2): depth = 6n + 2.

    Three stages of ``n`` basic blocks with ``16, 32, 64`` channels (times
    ``width_mult``), strides 1, 2, 2. ResNet-8 has n=1, ResNet-20 n=3.
    Convs are named ``features.0.0`` (stem) and ``features.K.conv.J.0``.
    """

    def __init__(
        self,
        depth: int = 8,
        num_classes: int = 10,
        width_mult: float = 1.0,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        widths = [_make_divisible(c * width_mult) for c in (16, 32, 64)]
        inp = widths[0]
        feats: list[nn.Module] = [ConvBNAct(in_channels, inp, act=nn.ReLU)]
        for stage, out in enumerate(widths):
            for i in range(n):
                feats.append(BasicBlock(inp, out, 2 if stage > 0 and i == 0 else 1))
                inp = out
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inp, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- registry


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def make(**kwargs: Any) -> nn.Module:
        return ResNet(depth=depth, **kwargs)

    return make


#: name -> constructor; kwargs are forwarded (num_classes, width_mult, in_channels, ...).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "resnet8": _resnet(8),
    "resnet20": _resnet(20),
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model by registry name.

    Args:
        name: one of :data:`MODELS` (``mobilenet_v1``, ``mobilenet_v2``, ``resnet8``,
            ``resnet20``).
        **kwargs: constructor arguments, e.g. ``width_mult=0.35``, ``in_channels=1``,
            ``num_classes=10``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known models).
    """
    try:
        ctor = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None
    return ctor(**kwargs)


def checkpoint_path(name: str) -> Path:
    """Path of the committed Fashion-MNIST checkpoint for ``name``."""
    return WEIGHTS_DIR / f"{name}_fmnist.pt"


def load_pretrained(name: str, path: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a trained Fashion-MNIST checkpoint written by ``scripts/train.py``.

    Args:
        name: registry name, e.g. ``"mobilenet_v2"``.
        path: checkpoint file; defaults to :func:`checkpoint_path` ``(name)``.

    Returns:
        ``(model, info)``: the model in eval mode, and the checkpoint metadata
        (``model``, ``kwargs``, ``test_acc``, ``test_acc_first1000``, ``train_cmd``,
        ``train_time_s``, ...; everything except the state dict).

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: no checkpoint; the message gives the command that makes it.
    """
    if name not in MODELS:
        build(name)  # raises the ValueError listing known models
    ckpt_file = Path(path) if path is not None else checkpoint_path(name)
    if not ckpt_file.is_file():
        raise FileNotFoundError(
            f"no checkpoint for {name!r} at {ckpt_file}; train one with "
            f"`python scripts/train.py --model {name} --out {ckpt_file}` "
            "(see docs/models.md for the exact settings)"
        )
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    if ckpt.get("model", name) != name:
        raise ValueError(f"{ckpt_file} holds a {ckpt['model']!r} model, not {name!r}")
    model = build(name, **ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info["path"] = str(ckpt_file)
    return model.eval(), info
