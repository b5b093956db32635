"""Run one quantized kernel on the host and get its int32 results.

The convenience API re-exported as ``tvm_mpq.schedules.run_conv2d`` / ``run_dense``: numpy
in, numpy out, arguments checked against the variant's bit-width ranges; the kernel is built
for the host (or any target this machine runs) with its default schedule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_mpq.schedules.build import build_kernel, is_host_target, resolve_target, run_built
from tvm_mpq.schedules.reference import check_shapes, check_values
from tvm_mpq.schedules.registry import check_variant, make_kernel
from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload, Workload

FP32_EXACT_LIMIT = 1 << 24  # integers above this are not all representable in float32


def _check_fp32_exact(x: np.ndarray, w: np.ndarray, variant: str) -> None:
    """The float baseline is exact only while every partial sum fits float32's mantissa."""
    if variant != "fp32" or not x.size or not w.size:
        return
    bound = int(np.abs(x).max()) * int(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1).max())
    if bound >= FP32_EXACT_LIMIT:
        raise ValueError(
            f"variant 'fp32' cannot return exact integers here: partial sums may reach {bound} "
            f">= 2^24; use an integer variant or smaller values")


def _run(wl: Workload, x: np.ndarray, w: np.ndarray, w_bits: int, a_bits: int, variant: str,
         target: Any, pad_value: int = 0) -> np.ndarray:
    check_variant(variant)
    check_values(x, w, w_bits, a_bits)
    check_shapes(x, w, wl)
    _check_fp32_exact(x, w, variant)
    tgt = resolve_target(target)
    if not is_host_target(tgt):
        raise ValueError(
            f"target {tgt} cannot run on this host; build with tvm_mpq.schedules.build_kernel "
            "and measure it on a RISC-V backend (tvm_mpq.measure)")
    kd = make_kernel(wl, variant, w_bits, a_bits, pad_value=pad_value)
    out = run_built(build_kernel(kd, tgt), kd, x, w)
    return np.rint(out).astype(np.int32) if variant == "fp32" else out.astype(np.int32)


def run_conv2d(x: np.ndarray, w: np.ndarray, *, stride: int | tuple[int, int] = 1,
               padding: int | tuple[int, ...] = 0, groups: int = 1, w_bits: int, a_bits: int,
               variant: str, target: Any = "llvm", pad_value: int = 0) -> np.ndarray:
    """Run one quantized conv2d kernel on the host.

    Args:
        x: integer activations, NCHW, values in [0, 2**a_bits).
        w: integer weights, OIHW (I = C // groups); w_bits=1 means values in {-1, +1},
            otherwise two's complement [-2**(w_bits-1), 2**(w_bits-1) - 1].
        stride, padding, groups: as in ``torch.nn.functional.conv2d`` (padding may also be
            (top, left, bottom, right)).
        w_bits, a_bits: bit-widths, each in {1, 2, 4, 8}.
        variant: one of :func:`variants` ("fp32", "int8", "bitserial", "unpack", "swar").
        target: a host target ("llvm").
        pad_value: value of padded activations (the activation zero point).

    Returns:
        int32 array (N, K, OH, OW), equal to the integer reference.

    Raises:
        ValueError: unsupported bits or variant, values out of range, shape mismatch.
    """
    x, w = np.asarray(x), np.asarray(w)
    wl = Conv2dWorkload.make(x.shape, w.shape, stride, padding, groups)
    return _run(wl, x, w, w_bits, a_bits, variant, target, pad_value)


def run_dense(x: np.ndarray, w: np.ndarray, *, w_bits: int, a_bits: int, variant: str,
              target: Any = "llvm") -> np.ndarray:
    """Run one quantized dense kernel (x @ w.T) on the host; see :func:`run_conv2d`.

    Args:
        x: integer activations (batch, features).
        w: integer weights (out_features, features).
    """
    x, w = np.asarray(x), np.asarray(w)
    wl = DenseWorkload.make(x.shape, w.shape)
    return _run(wl, x, w, w_bits, a_bits, variant, target).reshape(wl.output_shape)
