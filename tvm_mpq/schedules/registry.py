"""Variant registry: (workload, variant, bits) -> KernelDef."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tvm_mpq.schedules import conv2d, swar
from tvm_mpq.schedules.kernel import KernelDef
from tvm_mpq.schedules.reference import check_bits
from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload, Workload

_CONV = {
    "fp32": conv2d.conv2d_fp32,
    "int8": conv2d.conv2d_int8,
    "bitserial": conv2d.conv2d_bitserial,
    "unpack": conv2d.conv2d_unpack,
    "swar": swar.conv2d_swar,
}


def variants() -> list[str]:
    """Names of the kernel variants."""
    return list(_CONV)


def check_variant(variant: str) -> None:
    if variant not in _CONV:
        raise ValueError(f"unknown variant {variant!r}; expected one of {variants()}")


def dense_as_conv(wl: DenseWorkload) -> Conv2dWorkload:
    """A dense layer is the 1x1 conv of (m, d, 1, 1) with (n_out, d, 1, 1)."""
    return Conv2dWorkload(wl.m, wl.d, 1, 1, wl.n_out, 1, 1)


def make_kernel(workload: Workload, variant: str, w_bits: int, a_bits: int, *,
                pad_value: int = 0, word_bits: int = 64) -> KernelDef:
    """Build the TE kernel of ``variant`` for ``workload`` at (w_bits, a_bits).

    Dense workloads use the conv2d computations on their 1x1 equivalent; their
    ``prepare_*`` functions accept 2-D arrays and the output is (m, n_out, 1, 1).
    """
    check_variant(variant)
    check_bits(w_bits, a_bits)
    if not 0 <= pad_value < (1 << a_bits):
        raise ValueError(f"pad_value={pad_value} outside the a_bits={a_bits} range")
    if isinstance(workload, DenseWorkload):
        kd = _CONV[variant](dense_as_conv(workload), w_bits=w_bits, a_bits=a_bits,
                            word_bits=word_bits)
        pi, pw = kd.prepare_input, kd.prepare_weight
        return replace(kd, workload=workload,
                       prepare_input=lambda a: pi(np.asarray(a).reshape(*a.shape, 1, 1)),
                       prepare_weight=lambda a: pw(np.asarray(a).reshape(*a.shape, 1, 1)))
    return _CONV[variant](workload, w_bits=w_bits, a_bits=a_bits, pad_value=pad_value,
                          word_bits=word_bits)


def packed_weight_bytes(workload: Workload, variant: str, w_bits: int, a_bits: int, *,
                        word_bits: int = 64) -> int:
    """Bytes of the weight argument of ``variant``'s kernel (the pre-packed layout a compiled
    model stores: e.g. 4 bytes per weight for ``swar`` w8a8, two lanes per 64-bit word)."""
    w = make_kernel(workload, variant, w_bits, a_bits, word_bits=word_bits).tensors[1]
    return int(np.prod([int(d) for d in w.shape])) * np.dtype(str(w.dtype)).itemsize
