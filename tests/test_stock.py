"""TVM's stock TOPI bitserial conv (the benchmark's baseline) and our packing-only kernel."""

import numpy as np
import pytest
import tvm

from tvm_mpq.schedules import Conv2dWorkload, make_kernel
from tvm_mpq.schedules.default_schedules import bitserial_packing_func
from tvm_mpq.schedules.reference import conv2d_ref
from tvm_mpq.schedules.stock import stock_bitpack, stock_bitserial_conv2d


@pytest.mark.parametrize("w_bits,a_bits,word", [(1, 1, 64), (2, 2, 32), (4, 2, 16)])
def test_stock_bitserial_matches_reference(w_bits, a_bits, word):
    wl = Conv2dWorkload.make((1, 64, 6, 5), (8, 64, 3, 3), 1, 1)
    rng = np.random.default_rng(w_bits)
    x = rng.integers(0, 2 ** a_bits, wl.input_shape)
    w = rng.integers(0, 2 ** w_bits, wl.weight_shape)  # stock weights are unsigned
    func, prep = stock_bitserial_conv2d(wl, w_bits, a_bits, word)
    args = [tvm.runtime.tensor(a) for a in prep(x, w)]
    tvm.compile(func, target="llvm")(*args)
    ref = conv2d_ref(x, w, wl)
    np.testing.assert_array_equal(args[-1].numpy().reshape(ref.shape), ref)
    pf, shape, dt = stock_bitpack(wl, a_bits, word)
    assert shape[1] == 64 // word and dt == f"uint{word}"


def test_stock_refuses_grouped():
    wl = Conv2dWorkload.make((1, 64, 6, 6), (64, 1, 3, 3), 1, 1, groups=64)
    with pytest.raises(ValueError, match="groups"):
        stock_bitserial_conv2d(wl, 1, 1)


@pytest.mark.parametrize("shape,padding", [((1, 64, 8, 8), 1), ((1, 20, 4, 6), 0), ((1, 9, 3, 3), 1)])
def test_packing_func_matches_numpy_planes(shape, padding):
    """The packing-only function yields the kernel's padded planes: bit j of word cw of plane b
    at (h, w) is bit b of channel 64*cw + j (padding: the packed zero-point, here 0)."""
    a_bits = 2
    wl = Conv2dWorkload.make(shape, (4, shape[1], 3, 3), 1, padding)
    kd = make_kernel(wl, "bitserial", 2, a_bits)
    func, out_shape = bitserial_packing_func(kd)
    x = np.random.default_rng(0).integers(0, 2 ** a_bits, shape).astype(np.uint8)
    out = tvm.runtime.tensor(np.zeros(out_shape, "uint64"))
    tvm.compile(func, target="llvm")(tvm.runtime.tensor(x), out)
    got = out.numpy()
    c = shape[1]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    got = got.reshape(1, 1, xp.shape[2], xp.shape[3], -1, a_bits)  # flat pixels without padding
    for b in range(a_bits):
        bits = (xp[0] >> b) & 1  # (c, hp, wp)
        for ch in range(c):
            cw, j = divmod(ch, 64)
            np.testing.assert_array_equal((got[0, 0, :, :, cw, b] >> np.uint64(j)) & np.uint64(1),
                                          bits[ch].astype(np.uint64))
