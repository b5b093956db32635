"""``tvm-mpq tune`` on the user's own model and data.

* ``--model package.module:factory`` (``factory()`` returns the ``nn.Module``; with
  ``--weights state_dict.pt`` its state dict is loaded), ``--model model.pt2``: a
  ``torch.export.save`` file (:func:`tvm_mpq.frontend.exported.load_exported`; no Python
  class needed), ``--model model.pt``: a whole module saved with ``torch.save(model, path)``
  (its class importable), or a bundled name.
* ``--data data.npz`` with named arrays: ``calib`` (calibration inputs, samples along the
  first axis; also fixes the input shape and the example input ``calib[:1]``), and
  ``eval_x`` + ``eval_y`` (labels: top-1 accuracy) or ``eval_x`` + ``--metric
  package.module:function`` (``function(forward, eval_x) -> float``, higher is better, a
  fraction like accuracy; ``forward`` maps a batch to the model's output).
* ``--data DIR``: an ImageFolder-style directory, ``DIR/<class>/<image>`` (labels: the sorted
  class folders), or ``DIR/train/<class>/...`` with ``DIR/val`` (or ``DIR/test``). Images
  (PNG, JPEG, ...) of one size, as float in [0, 1] (1 channel if the first image is
  grayscale, else RGB; normalisation belongs in the model); ``--calib`` of them calibrate
  (from ``train`` when there is one), ``--eval`` evaluate.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["UserInputs", "load_data", "load_model", "resolve"]


@dataclass
class UserInputs:
    """What ``tune()`` gets from the command line."""

    model: Any
    info: dict[str, Any]
    calib: Any
    eval_data: Any
    eval_fn: Any
    example: Any
    source: str


def resolve(spec: str, what: str) -> Any:
    """``package.module:name`` -> the object (ValueError naming the problem)."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected package.module:name")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import {mod_name!r} ({e}); is it on "
                         "PYTHONPATH?") from None
    if not hasattr(mod, attr):
        raise ValueError(f"{what} {spec!r}: {mod_name!r} has no {attr!r}")
    return getattr(mod, attr)


def load_model(spec: str, weights: str | None) -> tuple[Any, dict[str, Any]]:
    """The model of ``--model`` / ``--weights`` and its info (see the module docstring)."""
    import torch

    if spec.endswith(".pt2"):
        from tvm_mpq.frontend.exported import load_exported

        if weights:
            raise ValueError("--weights goes with --model package.module:factory (a .pt2 "
                             "file holds its weights)")
        if not os.path.exists(spec):
            raise ValueError(f"--model {spec}: no such file")
        return load_exported(spec), {"model": spec, "weights": None}
    if ":" in spec:
        model = resolve(spec, "--model")()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"--model {spec}: the factory returned {type(model).__name__}, "
                             "not an nn.Module")
    elif os.path.exists(spec):
        model = torch.load(spec, weights_only=False, map_location="cpu")
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"--model {spec}: holds a {type(model).__name__}, not an nn.Module "
                             "(a state dict goes with --model package.module:factory --weights)")
    else:
        from tvm_mpq.zoo.models import load_pretrained

        if weights:
            raise ValueError("--weights goes with --model package.module:factory")
        return load_pretrained(spec)
    if weights:
        sd = torch.load(weights, weights_only=True, map_location="cpu")
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"--weights {weights} does not fit --model {spec}: "
                             f"{str(e).splitlines()[0]}") from None
    return model.eval(), {"model": spec, "weights": weights}


_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _image_files(root: str, classes: list[str] | None = None) -> tuple[list[tuple[str, int]],
                                                                       list[str]]:
    classes = classes or sorted(d for d in os.listdir(root)
                                if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"--data {root}: no class folders (expected DIR/<class>/<image>)")
    files = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
             if os.path.isdir(os.path.join(root, c))
             for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(_IMAGE_EXT)]
    if not files:
        raise ValueError(f"--data {root}: no images in its class folders ({', '.join(_IMAGE_EXT)})")
    return files, classes


def _read_images(files: list[tuple[str, int]], mode: str) -> tuple[Any, Any]:
    import numpy as np
    import torch
    from PIL import Image

    arrays, size = [], None
    for path, _ in files:
        with Image.open(path) as im:
            a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        if size is None:
            size = a.shape
        elif a.shape != size:
            raise ValueError(f"--data: {path} is {a.shape[1]}x{a.shape[0]}, the first image "
                             f"{size[1]}x{size[0]}: give images of one size (resize them first)")
        arrays.append(a if a.ndim == 3 else a[..., None])
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([c for _, c in files], dtype=torch.long)


def load_image_folder(root: str, n_calib: int, n_eval: int, seed: int = 0) -> tuple[Any, Any]:
    """``(calib, (eval_x, eval_y))`` of an ImageFolder-style directory (module docstring)."""
    import random

    from PIL import Image

    split = next((d for d in ("val", "test") if os.path.isdir(os.path.join(root, d))), None)
    if os.path.isdir(os.path.join(root, "train")) and split:
        train, classes = _image_files(os.path.join(root, "train"))
        held, _ = _image_files(os.path.join(root, split), classes)
    else:
        train, _ = _image_files(root)
        random.Random(seed).shuffle(train)
        if len(train) < 2:
            raise ValueError(f"--data {root}: {len(train)} image(s); calibration and "
                             "evaluation need at least 2")
        k = min(n_calib, len(train) // 2)
        train, held = train[:k], train[k:]
    random.Random(seed).shuffle(train)
    with Image.open(train[0][0]) as im:
        mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
    calib, _ = _read_images(train[:n_calib], mode)
    x, y = _read_images(held[:n_eval], mode)
    return calib, (x, y)


def load_data(path: str, metric: str | None, n_calib: int = 256, n_eval: int = 1000,
              seed: int = 0) -> tuple[Any, Any, Any]:
    """``(calib, eval_data, eval_fn)`` of a ``--data`` file or image folder (see the module
    docstring)."""
    import numpy as np
    import torch

    if os.path.isdir(path):
        calib, (x, y) = load_image_folder(path, n_calib, n_eval, seed)
        if metric:
            fn = resolve(metric, "--metric")
            return calib, None, lambda forward: float(fn(forward, x))
        return calib, (x, y), None

    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise ValueError(f"--data {path}: not a readable .npz file ({e})") from None
    if "calib" not in arrays:
        raise ValueError(f"--data {path}: no 'calib' array (has {sorted(arrays)})")
    calib = torch.as_tensor(arrays["calib"]).float()
    if "eval_x" not in arrays:
        raise ValueError(f"--data {path}: no 'eval_x' array (has {sorted(arrays)})")
    x = torch.as_tensor(arrays["eval_x"]).float()
    if "eval_y" in arrays:
        if metric:
            raise ValueError("--metric replaces the labels: drop eval_y from the data or --metric")
        return calib, (x, torch.as_tensor(arrays["eval_y"]).long()), None
    if not metric:
        raise ValueError(f"--data {path} has no 'eval_y' labels: give --metric "
                         "package.module:function (function(forward, eval_x) -> float)")
    fn = resolve(metric, "--metric")
    return calib, None, lambda forward: float(fn(forward, x))
