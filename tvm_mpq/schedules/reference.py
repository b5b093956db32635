"""Numpy integer references and input validation shared by every kernel variant."""

from __future__ import annotations

import numpy as np

from tvm_mpq.schedules.workload import A_BITS, W_BITS, Conv2dWorkload, DenseWorkload


def weight_range(w_bits: int) -> tuple[int, int]:
    """Inclusive value range of a w_bits weight (w_bits=1 is {-1, +1})."""
    if w_bits == 1:
        return (-1, 1)
    return (-(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1)


def act_range(a_bits: int) -> tuple[int, int]:
    """Inclusive value range of an unsigned a_bits activation."""
    return (0, (1 << a_bits) - 1)


def check_bits(w_bits: int, a_bits: int) -> None:
    """ValueError unless both bit-widths are supported."""
    if w_bits not in W_BITS:
        raise ValueError(f"w_bits={w_bits!r} not supported; expected one of {W_BITS}")
    if a_bits not in A_BITS:
        raise ValueError(f"a_bits={a_bits!r} not supported; expected one of {A_BITS}")


def check_values(x: np.ndarray, w: np.ndarray, w_bits: int, a_bits: int) -> None:
    """ValueError naming the first problem: non-integer data or values out of range."""
    check_bits(w_bits, a_bits)
    for name, arr in (("x", x), ("w", w)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    lo, hi = act_range(a_bits)
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(
            f"activation values out of range for a_bits={a_bits}: expected [{lo}, {hi}], "
            f"got [{x.min()}, {x.max()}]")
    lo, hi = weight_range(w_bits)
    if w.size and (w.min() < lo or w.max() > hi):
        raise ValueError(
            f"weight values out of range for w_bits={w_bits}: expected [{lo}, {hi}], "
            f"got [{w.min()}, {w.max()}]")
    if w_bits == 1 and w.size and np.any(w == 0):
        raise ValueError("w_bits=1 weights must be -1 or +1 (binary), found 0")


def pad_input(x: np.ndarray, wl: Conv2dWorkload, pad_value: int = 0) -> np.ndarray:
    t, left, b, r = wl.padding
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=pad_value)


def conv2d_ref(x: np.ndarray, w: np.ndarray, wl: Conv2dWorkload, pad_value: int = 0) -> np.ndarray:
    """Exact grouped NCHW conv2d in int64, returned as int32."""
    xp = pad_input(x.astype(np.int64), wl, pad_value)
    out = np.zeros(wl.output_shape, np.int64)
    sh, sw = wl.stride
    for g in range(wl.groups):
        xs = xp[:, g * wl.cg:(g + 1) * wl.cg]
        ws = w[g * wl.kg:(g + 1) * wl.kg].astype(np.int64)
        for r in range(wl.kh):
            for s in range(wl.kw):
                patch = xs[:, :, r:r + sh * (wl.oh - 1) + 1:sh, s:s + sw * (wl.ow - 1) + 1:sw]
                out[:, g * wl.kg:(g + 1) * wl.kg] += np.einsum("nchw,kc->nkhw", patch, ws[:, :, r, s])
    return out.astype(np.int32)


def dense_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact dense (x @ w.T) in int64, returned as int32."""
    return (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)


def check_shapes(x: np.ndarray, w: np.ndarray, wl: Conv2dWorkload | DenseWorkload) -> None:
    if tuple(x.shape) != tuple(wl.input_shape):
        raise ValueError(f"shape mismatch: x has shape {x.shape}, expected {wl.input_shape}")
    if tuple(w.shape) != tuple(wl.weight_shape):
        raise ValueError(f"shape mismatch: w has shape {w.shape}, expected {wl.weight_shape}")
