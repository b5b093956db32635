"""Up-front checks of tune()'s data: one ValueError naming the problem and the fix, before
any stage runs (a NaN image would otherwise turn every quantization range into NaN and give
chance accuracy for every quantized plan; empty or mismatched data would fail deep inside a
stage)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_data", "check_model", "check_samples", "check_search_space", "check_workdir",
           "first_sample", "leading_samples"]


def check_samples(name: str, x: Any, sample_shape: tuple[int, ...],
                  dtype: torch.dtype = torch.float32) -> None:
    """``x`` (tensor / array, samples along dim 0) is non-empty, finite and of the model's
    per-sample shape and input dtype.

    Raises:
        ValueError: empty, another per-sample shape, or a NaN / inf value (the message names
            the first bad sample).
    """
    t = torch.as_tensor(x)
    if t.ndim == 0 or len(t) == 0:
        raise ValueError(f"{name} is empty: give at least one sample of shape {sample_shape}")
    if tuple(t.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"{name} samples have shape {tuple(t.shape[1:])}, the model's example "
                         f"input {tuple(sample_shape)} (samples along the first dimension)")
    if not t.is_floating_point():
        raise ValueError(f"{name} has dtype {t.dtype}: the model takes floating-point inputs "
                         "(convert, e.g. x.float() / 255)")
    if t.dtype != dtype:
        raise ValueError(f"{name} has dtype {t.dtype}, the example input {dtype}: give both in "
                         "the model's dtype (e.g. x.float())")
    bad = ~torch.isfinite(t.reshape(len(t), -1))
    if bool(bad.any()):
        rows = bad.any(dim=1).nonzero().flatten()
        i = int(rows[0])
        raise ValueError(f"{name}: {len(rows)} sample(s) contain NaN or inf (first: sample "
                         f"{i}, {int(bad[i].sum())} of {bad.shape[1]} values); remove or "
                         "fix them")


def _is_array(data: Any) -> bool:
    return isinstance(data, torch.Tensor) or hasattr(data, "__array__")


def _labelled(name: str, data: Any, sample_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        return
    x, y = data[0], data[1]
    check_samples(f"{name} images", x, sample_shape, dtype)
    n, m = len(x), len(y)
    if n != m:
        raise ValueError(f"{name} has {n} images but {m} labels: give one label per image")
    yt = torch.as_tensor(y)
    if yt.is_floating_point() or yt.is_complex() or yt.ndim != 1:
        raise ValueError(f"{name} labels are {yt.dtype} of shape {tuple(yt.shape)}: top-1 "
                         "accuracy needs one integer class index per image; for another "
                         "metric give eval_fn=")


def check_data(example_inputs: tuple[Any, ...], calib_data: Any, eval_data: Any = None,
               train_data: Any = None) -> None:
    """Check tune()'s example input, calibration, evaluation and training data (tensors and
    arrays; other iterables, e.g. a DataLoader, are read by the stages as they come).

    Raises:
        ValueError: see :func:`check_samples`; labelled data with as many labels as images.
    """
    x0 = torch.as_tensor(example_inputs[0])
    if x0.ndim == 0 or len(x0) == 0:
        raise ValueError("example_inputs is empty: give one input batch, e.g. calib_data[:1]")
    shape = tuple(x0.shape[1:])
    check_samples("example_inputs", x0, shape, x0.dtype)
    if calib_data is None:
        raise ValueError("tune needs calib_data (inputs to calibrate the quantization ranges)")
    if _is_array(calib_data):
        check_samples("calib_data", calib_data, shape, x0.dtype)
    elif isinstance(calib_data, (list, tuple)) and not calib_data:
        raise ValueError("calib_data is empty: give at least one calibration batch")
    _labelled("eval_data", eval_data, shape, x0.dtype)
    _labelled("train_data", train_data, shape, x0.dtype)


def leading_samples(data: Any, n: int) -> torch.Tensor:
    """The first ``n`` inputs of calibration-style data (a tensor / array, or an iterable of
    batches or of ``(x, y, ...)`` batches) as one float tensor."""
    from tvm_mpq.quant.observers import iter_batches

    if _is_array(data):
        return torch.as_tensor(data)[:n].float()
    out, have = [], 0
    for b in iter_batches(data, n):
        out.append(torch.as_tensor(b)[:n - have])
        have += len(out[-1])
        if have >= n:
            break
    if not out:
        raise ValueError("calib_data is empty: give at least one calibration batch")
    return torch.cat(out).float()


def first_sample(calib_data: Any) -> torch.Tensor:
    """The default example input: the first calibration sample, batch of one."""
    if calib_data is None:
        raise ValueError("tune needs calib_data (inputs to calibrate the quantization ranges)")
    return leading_samples(calib_data, 1)


def check_workdir(workdir: str) -> None:
    """Create ``workdir`` (ValueError naming it when it cannot be created or written)."""
    import os
    import tempfile

    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise ValueError(f"workdir={workdir!r} cannot be created or written ({e.strerror}): "
                         "give a writable directory") from None


def check_model(model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> None:
    """Run the float model once on ``example_inputs`` (ValueError with torch's message when it
    fails: a wrong input shape shows here, not inside the import)."""
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward is reported
        shapes = ", ".join(str(tuple(torch.as_tensor(x).shape)) for x in example_inputs)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"the model fails on example_inputs of shape {shapes} "
                         f"({type(e).__name__}: {first}); example_inputs defaults to "
                         "calib_data[:1]: check the data's per-sample shape") from None


def check_search_space(bits: Any, variants: Any) -> None:
    """Every candidate ``(w_bits, a_bits)`` is in {1, 2, 4, 8} and every variant is a kernel
    of the registry (ValueError naming the bad one)."""
    from tvm_mpq.quant.plan import normalize_bits
    from tvm_mpq.schedules.registry import check_variant

    if not bits:
        raise ValueError("bits is empty: give at least one (w_bits, a_bits) pair, e.g. [(8, 8)]")
    for w, a in bits:
        normalize_bits(w, "w_bits")
        normalize_bits(a, "a_bits")
    if not variants:
        raise ValueError("variants is empty: give at least one kernel variant, e.g. ['int8']")
    for v in variants:
        check_variant(v)
