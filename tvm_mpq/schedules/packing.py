"""Bit packing of integer tensors (numpy side; kernels unpack the same layouts in TIR).

Bit-plane layout (bitserial): value v in a w-bit two's complement (or {0,1} for
the 1-bit bipolar code) is split into planes b = 0..w-1 with bit b of v; along
the packed axis, element j of a word goes to bit j (LSB first); the packed axis
is zero-padded to a whole number of words.

Sub-byte layout (unpack): values are stored as w-bit two's complement fields,
8 // w per byte, element j of a byte at bits [w*j, w*j + w).
"""

from __future__ import annotations

import numpy as np

WORD_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def word_dtype(word_bits: int) -> str:
    if word_bits not in WORD_DTYPES:
        raise ValueError(f"word_bits must be one of {tuple(WORD_DTYPES)}, got {word_bits}")
    return f"uint{word_bits}"


def n_words(length: int, word_bits: int) -> int:
    return -(-length // word_bits)


def weight_code(w: np.ndarray, w_bits: int) -> np.ndarray:
    """Unsigned code whose bit-planes are stored: two's complement; bipolar {-1,+1} -> {0,1}."""
    w = w.astype(np.int64)
    if w_bits == 1:
        return (w > 0).astype(np.uint64)
    return (w & ((1 << w_bits) - 1)).astype(np.uint64)


def pack_bitplanes(code: np.ndarray, bits: int, axis: int, word_bits: int) -> np.ndarray:
    """Pack unsigned ``code`` into bit-planes along ``axis``.

    Returns an array with ``axis`` replaced by two axes (plane, word):
    shape[:axis] + (bits, n_words) + shape[axis+1:].
    """
    code = np.moveaxis(np.asarray(code, dtype=np.uint64), axis, -1)
    length = code.shape[-1]
    nw = n_words(length, word_bits)
    padded = np.zeros(code.shape[:-1] + (nw * word_bits,), np.uint64)
    padded[..., :length] = code
    padded = padded.reshape(code.shape[:-1] + (nw, word_bits))
    shifts = np.arange(word_bits, dtype=np.uint64)
    planes = []
    for b in range(bits):
        bit = (padded >> np.uint64(b)) & np.uint64(1)
        planes.append(np.bitwise_or.reduce(bit << shifts, axis=-1))
    out = np.stack(planes, axis=-2).astype(WORD_DTYPES[word_bits])  # (..., bits, nw)
    # move (bits, nw) back to where axis was
    return np.moveaxis(out, (-2, -1), (axis, axis + 1))


def pack_subbyte(w: np.ndarray, w_bits: int) -> np.ndarray:
    """Pack the last axis of signed ``w`` into bytes (8 // w_bits fields per byte).

    w_bits=8 returns int8 unchanged; w_bits=1 stores the bipolar code (1 = +1).
    The last axis is zero-padded to a whole number of bytes.
    """
    if w_bits == 8:
        return w.astype(np.int8)
    per = 8 // w_bits
    code = weight_code(w, w_bits).astype(np.uint8)
    length = code.shape[-1]
    nb = -(-length // per)
    padded = np.zeros(code.shape[:-1] + (nb * per,), np.uint8)
    padded[..., :length] = code
    padded = padded.reshape(code.shape[:-1] + (nb, per))
    out = np.zeros(code.shape[:-1] + (nb,), np.uint8)
    for j in range(per):
        out |= padded[..., j] << np.uint8(w_bits * j)
    return out


def unpack_subbyte(p: np.ndarray, w_bits: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack_subbyte` (numpy; used by tests)."""
    if w_bits == 8:
        return p.astype(np.int8)
    per = 8 // w_bits
    mask = (1 << w_bits) - 1
    fields = np.stack([(p >> np.uint8(w_bits * j)) & np.uint8(mask) for j in range(per)], axis=-1)
    fields = fields.reshape(p.shape[:-1] + (-1,))[..., :length].astype(np.int16)
    if w_bits == 1:
        return (2 * fields - 1).astype(np.int8)
    return np.where(fields >= (1 << (w_bits - 1)), fields - (1 << w_bits), fields).astype(np.int8)
