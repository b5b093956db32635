"""Stage checkpoints of :func:`tvm_mpq.tune`: fingerprints, JSON files, the manifest.

A stage's checkpoint is valid when the manifest (``workdir/stages/manifest.json``) records
the stage's current fingerprint: a hash of everything the stage depends on (model weights,
data, the settings it uses, the kernel revision, the fingerprints of the stages before it).
Changing the model's weights thus invalidates sensitivity and every stage after it, not the
import or the measurements.

A JSON checkpoint that cannot be read (a kill mid-write, a hand edit) is set aside as
``<file>.corrupt`` with a warning naming it, and the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["Manifest", "data_fingerprint", "digest", "model_fingerprint", "read_json",
           "set_aside", "write_json"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- fingerprints
def digest(*parts: Any) -> str:
    """Short hash of JSON-able parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _update(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for o in obj:
            _update(h, o)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _update(h, obj[k])
    elif obj is None or isinstance(obj, (int, float, str, bool)):
        h.update(repr(obj).encode())
    elif callable(obj):  # e.g. eval_fn: by name (a changed body with the same name is not seen)
        h.update(f"F{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj))}"
                 .encode())
    else:  # an opaque iterable of batches cannot be hashed without consuming it: by type
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}".encode())


def data_fingerprint(data: Any) -> str:
    """Hash of data: tensors and arrays by dtype, shape and bytes, nested in tuples, lists
    and dicts; a callable by its qualified name; any other object (an opaque iterable of
    batches) by its type only."""
    h = hashlib.sha256()
    _update(h, data)
    return h.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module, weights: bool = True) -> str:
    """Hash of a model's structure (``repr``) and of its ``state_dict`` tensors: their values
    with ``weights=True``, else only names, dtypes and shapes (what the import depends on)."""
    sd = model.state_dict()
    h = hashlib.sha256(repr(model).encode())
    for k in sorted(sd):
        t = sd[k]
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        if weights:
            _update(h, t)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- files
def set_aside(path: str, suffix: str = ".corrupt") -> str:
    """Rename ``path`` to ``path + suffix`` (replacing an older one); returns the new path."""
    os.replace(path, path + suffix)
    return path + suffix


def read_json(path: str, what: str = "checkpoint") -> Any:
    """The JSON content of ``path``; None if missing. An unreadable file is set aside as
    ``<path>.corrupt`` with a warning saying so (None is returned: recompute)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        bad = set_aside(path)
        log.warning("unreadable %s %s (%s): kept as %s, recomputing", what, path, e, bad)
        return None


def write_json(path: str, obj: Any, indent: int | None = 1) -> None:
    """Write JSON atomically (a kill mid-write leaves the previous file intact)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=str)
    os.replace(tmp, path)


class Manifest:
    """``stage name -> fingerprint`` of the finished stages of a workdir
    (``stages/manifest.json``)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "stages", "manifest.json")
        saved = read_json(self.path, "stage manifest")
        self.done: dict[str, str] = dict(saved.get("stages", {})) if isinstance(saved, dict) else {}

    def valid(self, stage: str, fingerprint: str) -> bool:
        return self.done.get(stage) == fingerprint

    def record(self, stage: str, fingerprint: str) -> None:
        self.done[stage] = fingerprint
        write_json(self.path, {"version": 1, "stages": self.done})

    def forget(self, stages: Iterable[str]) -> None:
        """Drop stages (their checkpoints count as missing)."""
        for s in stages:
            self.done.pop(s, None)
        write_json(self.path, {"version": 1, "stages": self.done})
