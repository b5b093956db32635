"""torchvision's model definitions beside the CPU torch, for tests and benchmarks on
architectures nobody in this project wrote.

The torchvision 0.28.0 wheel on the package index is a CUDA build: it installs with
``--no-deps`` beside the CPU torch, but its C++ operators do not load, and ``import
torchvision`` then fails (``operator torchvision::nms does not exist``) because its fake-tensor
registrations need the schemas of ``nms`` / ``qnms``. :func:`import_torchvision` defines those
two schemas (no kernels: detection ops stay unusable, the classification models need none)
and imports it. ``scripts/setup.sh`` installs the wheel into ``.venv/optional`` (off the
default path, so nothing else imports the half-working package by accident).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

__all__ = ["ARCHITECTURES", "TorchvisionUnavailable", "import_torchvision", "torchvision_model"]

#: the architectures of the import / compile table: (torchvision builder, what it exercises)
ARCHITECTURES: dict[str, str] = {
    "mobilenet_v3_small": "hardswish, squeeze-excitation (hardsigmoid gate)",
    "shufflenet_v2_x0_5": "channel shuffle, split / concat",
    "squeezenet1_1": "fire modules: concat of 1x1 and 3x3 branches",
    "mnasnet0_5": "inverted residuals with 5x5 depthwise",
    "resnet18": "basic blocks, strided 1x1 shortcuts",
    "efficientnet_b0": "SiLU, squeeze-excitation (sigmoid gate), stochastic depth (eval: identity)",
}
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIB: list[Any] = []  # keeps the schema library alive


class TorchvisionUnavailable(RuntimeError):
    """torchvision is not installed (or does not import); the message says why."""


def _default_path() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, ".venv", "optional")


def import_torchvision(path: str | None = None) -> Any:
    """The ``torchvision`` module (see the module docstring); ``path``: a directory to look
    in when it is not importable (default: ``$TVM_MPQ_TORCHVISION_PATH`` or the checkout's
    ``.venv/optional``).

    Raises:
        TorchvisionUnavailable: not found, or found but failing to import (with the reason).
    """
    if "torchvision" not in sys.modules:
        try:
            torch.ops.torchvision.nms  # noqa: B018 - defined by a working torchvision
        except (AttributeError, RuntimeError):
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for schema in _SCHEMAS:
                lib.define(schema)
            _LIB.append(lib)
    extra = path or os.environ.get("TVM_MPQ_TORCHVISION_PATH") or _default_path()
    try:
        import torchvision
    except ModuleNotFoundError:
        if not os.path.isdir(os.path.join(extra, "torchvision")):
            raise TorchvisionUnavailable(
                f"torchvision is not installed (nor in {extra}): pip install --no-deps "
                f"--target {extra} torchvision==0.28.0") from None
        sys.path.append(extra)
        try:
            import torchvision
        except Exception as e:  # noqa: BLE001 - any import failure is "unavailable"
            raise TorchvisionUnavailable(f"torchvision in {extra} does not import: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise TorchvisionUnavailable(f"torchvision does not import: {e}") from None
    return torchvision


def torchvision_model(name: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A torchvision classification model, randomly initialised (no weights are downloaded),
    in eval mode, with non-trivial BatchNorm statistics (so folding is exercised)."""
    tv = import_torchvision()
    torch.manual_seed(seed)
    m = getattr(tv.models, name)(weights=None, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=g))
    return m.eval()
