"""Fashion-MNIST from the Debian ``dataset-fashion-mnist`` IDX files, and evaluation.

Pure numpy + gzip: nothing is downloaded. Images come back as float32
``N x 1 x 28 x 28`` tensors normalised with fixed (training-set) mean/std, so
every consumer (training, calibration, TVM evaluation) sees identical inputs.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

__all__ = [
    "CLASSES",
    "DEFAULT_DIR",
    "MEAN",
    "STD",
    "calib_subset",
    "correct_predictions",
    "dataset_dir",
    "evaluate",
    "load_fashion_mnist",
    "make_loader",
    "paired_drop_se",
]

#: Where the Debian package installs the files; override with ``TVM_MPQ_FMNIST_DIR``.
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Training-set pixel statistics (on [0, 1] scale), fixed so inputs never depend on a subset.
MEAN = 0.2860
STD = 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def dataset_dir() -> Path:
    """Directory with the IDX ``.gz`` files (``$TVM_MPQ_FMNIST_DIR`` or :data:`DEFAULT_DIR`)."""
    return Path(os.environ.get("TVM_MPQ_FMNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic 0x0000 08 ndim, then ndim uint32 dims)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {tuple(dims)} values, found {data.size}")
    return data.reshape(tuple(dims))


@lru_cache(maxsize=2)
def _load_raw(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = _FILES[split]
    paths = [Path(root) / img_name, Path(root) / lbl_name]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install the Debian package "
            "`dataset-fashion-mnist` (run ./scripts/setup.sh, or "
            "`apt-get install dataset-fashion-mnist`), or point TVM_MPQ_FMNIST_DIR at a "
            "directory holding the four IDX .gz files."
        )
    images, labels = (_read_idx(p) for p in paths)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _normalize(images_u8: np.ndarray) -> torch.Tensor:
    x = images_u8.astype(np.float32)[:, None, :, :]
    x = (x / 255.0 - MEAN) / STD
    return torch.from_numpy(x)


def load_fashion_mnist(
    split: str = "train", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split.

    Args:
        split: ``"train"`` (60 000 images) or ``"test"`` (10 000).
        limit: keep only the first ``limit`` images (file order, deterministic).

    Returns:
        ``(images, labels)``: float32 ``N x 1 x 28 x 28`` normalised with
        :data:`MEAN` / :data:`STD`, and int64 labels in ``[0, 9]``.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: dataset missing (names the Debian package and setup script).
    """
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    images, labels = _load_raw(split, str(dataset_dir()))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return _normalize(images), torch.from_numpy(labels.astype(np.int64))


def calib_subset(
    n: int = 512, seed: int = 0, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible random subset (``n`` images, drawn without replacement by ``seed``).

    Drawn from the training split by default so calibration never sees test data.
    """
    images, labels = _load_raw(split, str(dataset_dir()))
    if not 0 < n <= len(images):
        raise ValueError(f"n must be in [1, {len(images)}], got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    return _normalize(images[idx]), torch.from_numpy(labels[idx].astype(np.int64))


def make_loader(
    split: str = "train",
    batch_size: int = 128,
    shuffle: bool | None = None,
    limit: int | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` yielding ``(images, labels)`` batches of a split held in memory.

    Batches are sliced from the tensors in one indexing op (a ``BatchSampler`` feeds
    index lists to the ``TensorDataset``), which is much faster than per-sample collation.
    ``shuffle`` defaults to ``True`` for train and ``False`` for test; the order is
    fixed by ``seed``.
    """
    images, labels = load_fashion_mnist(split, limit)
    shuffle = split == "train" if shuffle is None else shuffle
    ds = TensorDataset(images, labels)
    if shuffle:
        gen = torch.Generator().manual_seed(seed)
        base: Any = RandomSampler(ds, generator=gen)
    else:
        base = SequentialSampler(ds)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(ds, sampler=sampler, batch_size=None)


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().numpy()
    if hasattr(out, "numpy"):  # tvm.runtime.Tensor and friends
        return np.asarray(out.numpy())
    if isinstance(out, (list, tuple)) and len(out) == 1:  # Relax VM returns a 1-tuple
        return _to_numpy(out[0])
    return np.asarray(out)


def evaluate(model: torch.nn.Module | Callable[[Any], Any], images: torch.Tensor | np.ndarray,
             labels: torch.Tensor | np.ndarray, **options: Any) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``images``: the mean of
    :func:`correct_predictions`, whose keyword ``options`` (``batch_size``, ``as_numpy``,
    ``pad_last``) it takes."""
    return float(correct_predictions(model, images, labels, **options).mean())


def correct_predictions(
    model: torch.nn.Module | Callable[[Any], Any],
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    batch_size: int = 256,
    as_numpy: bool | None = None,
    pad_last: bool = False,
) -> np.ndarray:
    """Whether ``model``'s top-1 class is right, per image (bool array of ``len(images)``):
    paired per-image outcomes give the standard error of an accuracy difference
    (:func:`paired_drop_se`).

    Args:
        model: an ``nn.Module`` (run in eval mode under ``no_grad``; its training flag
            is restored) or any callable mapping a batch to logits, e.g. a wrapper
            around a TVM Relax VM. Outputs may be torch tensors, TVM tensors,
            numpy arrays or a 1-tuple of those.
        images: ``N x C x H x W`` float32.
        labels: ``N`` integer class ids.
        batch_size: images per call.
        as_numpy: feed batches as contiguous float32 numpy arrays; defaults to
            ``False`` for ``nn.Module`` and ``True`` for other callables.
        pad_last: pad the final short batch to ``batch_size`` (logits of the padding
            are dropped), for compiled modules with a static batch dimension.
    """
    x_all = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    y_all = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    x_all = np.asarray(x_all, dtype=np.float32)
    y_all = np.asarray(y_all).astype(np.int64).reshape(-1)
    if len(x_all) != len(y_all):
        raise ValueError(f"{len(x_all)} images but {len(y_all)} labels")
    if len(x_all) == 0:
        raise ValueError("no images to evaluate")
    is_module = isinstance(model, torch.nn.Module)
    as_numpy = (not is_module) if as_numpy is None else as_numpy
    was_training = model.training if is_module else False
    if is_module:
        model.eval()
    correct = np.zeros(len(y_all), dtype=bool)
    try:
        with torch.no_grad():
            for start in range(0, len(x_all), batch_size):
                xb = x_all[start:start + batch_size]
                n = len(xb)
                if pad_last and n < batch_size:
                    pad = np.zeros((batch_size - n, *xb.shape[1:]), dtype=np.float32)
                    xb = np.concatenate([xb, pad])
                xb = np.ascontiguousarray(xb)
                logits = _to_numpy(model(xb if as_numpy else torch.from_numpy(xb)))
                pred = logits.reshape(len(xb), -1)[:n].argmax(axis=1)
                correct[start:start + n] = pred == y_all[start:start + n]
    finally:
        if is_module and was_training:
            model.train()
    return correct


def paired_drop_se(reference: np.ndarray, other: np.ndarray) -> float:
    """Standard error of ``mean(reference) - mean(other)``, the accuracy drop, from per-image
    outcomes on the same images (:func:`correct_predictions`): the standard deviation of the
    per-image differences (-1, 0, 1) over sqrt(n). Only images where the two disagree
    contribute, so it is far smaller than the unpaired error of either accuracy; on 1000
    images and a few dozen disagreements it is still about half a point."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"per-image outcomes of different shapes: {a.shape} vs {b.shape}")
    if len(a) < 2:
        raise ValueError("a standard error needs at least 2 images")
    return float(np.std(a - b, ddof=1) / np.sqrt(len(a)))
