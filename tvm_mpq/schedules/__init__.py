"""Quantized conv2d/dense kernels: fp32, int8, bit-serial and sub-byte-unpack variants.

Each variant is a TE computation with a tunable schedule; every integer result is
bit-exact against the numpy reference in :mod:`.reference`.
"""

from .api import run_conv2d, run_dense
from .build import build_kernel, resolve_target
from .kernel import KernelDef
from .reference import conv2d_ref, dense_ref
from .registry import make_kernel, variants
from .workload import A_BITS, W_BITS, Conv2dWorkload, DenseWorkload

__all__ = [
    "A_BITS", "W_BITS", "Conv2dWorkload", "DenseWorkload", "KernelDef", "build_kernel",
    "conv2d_ref", "dense_ref", "make_kernel", "resolve_target", "run_conv2d", "run_dense",
    "variants",
]
