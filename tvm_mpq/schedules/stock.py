"""TVM's stock TOPI bitserial conv2d, as the baseline our bitserial kernels are measured against.

``topi.nn.bitserial_conv2d_nchw`` with ``unipolar=False`` (plain AND + popcount, unsigned
w-bit weights), activations packed inside the kernel by TOPI's ``bitpack``, weights pre-packed
(the packing is not part of the measured call) and the default lowering (no schedule), as
in the RISC-V measurement issue. Its weights are unsigned, ours signed: the instruction count
compares like with like (same MACs, same planes); the outputs are checked against the numpy
reference with the weights it computes with.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, topi

from tvm_mpq.schedules.workload import Conv2dWorkload


def stock_bitserial_conv2d(wl: Conv2dWorkload, w_bits: int, a_bits: int, word_bits: int = 64):
    """(PrimFunc, prepare) for TOPI's bitserial conv on ``wl`` (groups must be 1).

    ``prepare(x, w_unsigned)`` returns the numpy arguments (uint8 input, pre-packed weight,
    int32 output buffer); ``w_unsigned`` holds values in [0, 2**w_bits).
    """
    if wl.groups != 1:
        raise ValueError("TOPI's bitserial_conv2d_nchw has no groups (depthwise/grouped conv)")
    pack = f"uint{word_bits}"
    x = te.placeholder(wl.input_shape, "uint8", "x")
    wraw = te.placeholder(wl.weight_shape, "uint8", "w")
    wq = topi.nn.bitpack(wraw, w_bits, pack_axis=1, bit_axis=4, pack_type=pack)
    wpk = te.placeholder([int(d) for d in wq.shape], pack, "w_packed")
    out = topi.nn.bitserial_conv2d_nchw(x, wpk, wl.stride, list(wl.padding), a_bits, w_bits,
                                        pack_dtype=pack, out_dtype="int32", unipolar=False)
    func = te.create_prim_func([x, wpk, out])
    packer = tvm.compile(te.create_prim_func([wraw, wq]), target="llvm")

    def prepare(xa: np.ndarray, wa: np.ndarray) -> list[np.ndarray]:
        w_nd = tvm.runtime.tensor(np.asarray(wa, np.uint8))
        wq_nd = tvm.runtime.tensor(np.zeros([int(d) for d in wq.shape], pack))
        packer(w_nd, wq_nd)
        return [np.asarray(xa, np.uint8), wq_nd.numpy(),
                np.zeros([int(d) for d in out.shape], "int32")]

    return func, prepare


def stock_bitpack(wl: Conv2dWorkload, a_bits: int, word_bits: int = 64):
    """(PrimFunc, output shape) of TOPI's activation ``bitpack`` alone (default lowering).

    Measured next to :func:`stock_bitserial_conv2d`, it gives the stock kernel's cost with
    pre-packed activations (total minus packing), the setting of the issue's stock figures.
    """
    pack = f"uint{word_bits}"
    x = te.placeholder(wl.input_shape, "uint8", "x")
    q = topi.nn.bitpack(x, a_bits, pack_axis=1, bit_axis=2, pack_type=pack)
    return te.create_prim_func([x, q]), [int(d) for d in q.shape], pack
