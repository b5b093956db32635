"""Kernels with the requantize epilogue fused: bit-exact against the integer references."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvm_mpq.compiler.dyadic_ops import dyadic_consts, with_requantize
from tvm_mpq.quant.dyadic import dyadic_params, requantize_dyadic_ref
from tvm_mpq.schedules import Conv2dWorkload, make_kernel
from tvm_mpq.schedules.epilogue import fused_schedule, fuses
from tvm_mpq.schedules.ms_tune import reference_output, validation_inputs
from tvm_mpq.schedules.workload import DenseWorkload
from tvm_mpq.targets import get_profile

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fused(kd, seed: int = 0):
    """``kd`` with a requantize epilogue (multipliers spread over the accumulators' range),
    its epilogue constants and the integer reference of the fused result for ``x, w``."""
    k = int(kd.output.shape[1])
    x, w = validation_inputs(kd, seed)[0]
    acc = np.asarray(reference_output(kd, x, w)).astype(np.int64)
    rng = np.random.default_rng(seed)
    real = rng.uniform(0.5, 1.5, k) * 200.0 / max(1, int(np.abs(acc).max()))
    m, kk, t = dyadic_params(real, rng.integers(-100, 100, k), 0)
    consts = dyadic_consts(m, kk, t, "wide")
    fk = with_requantize(kd, consts, 3, 250, "wide")
    ref = requantize_dyadic_ref(acc, m, kk, t, 3, 250, ch_axis=1).astype(np.uint8)
    return fk, fk.make_args(x, w, consts), ref


def _run(mod: tvm.IRModule, args: list[np.ndarray]) -> np.ndarray:
    lib = tvm.compile(mod, target="llvm")
    dev = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*dev)
    return dev[-1].numpy()


@FAST
@given(st.sampled_from(["int8", "swar", "unpack", "bitserial"]), st.sampled_from([1, 2, 4, 8]),
       st.integers(1, 3), st.integers(3, 11), st.sampled_from(["conv", "dw", "pw"]),
       st.integers(1, 2), st.integers(0, 1000))
def test_fused_kernels_bit_exact(variant, bits, c, hw, kind, stride, seed):
    """Every variant's default schedule with the epilogue fused (inlined into the output's
    write where it can be) equals requantize(conv2d reference), signed lanes included."""
    if variant == "unpack" and bits == 8:
        bits = 4
    c4 = 4 * c
    if kind == "dw":
        wl = Conv2dWorkload.make((1, c4, hw, hw), (c4, 1, 3, 3), stride, 1, groups=c4)
    elif kind == "pw":
        wl = Conv2dWorkload.make((1, c4, hw, hw), (8, c4, 1, 1), stride, 0)
    else:
        wl = Conv2dWorkload.make((1, c4, hw, hw), (8, c4, 3, 3), stride, 1)
    kd = make_kernel(wl, variant, bits, bits, pad_value=1)
    fk, args, ref = _fused(kd, seed)
    mod = fused_schedule(fk, "rv64gc_zbb")
    np.testing.assert_array_equal(_run(mod, args), ref)
    if variant in ("int8", "swar", "unpack"):  # their output stage is a plain store
        assert bool(mod["main"].attrs["epilogue_inlined"])


def test_fuses_where_measured_cheaper():
    zbb, gc, rv32 = (get_profile(p) for p in ("rv64gc_zbb", "rv64gc", "rv32imc"))
    dw = Conv2dWorkload.make((1, 16, 14, 14), (16, 1, 3, 3), 1, 1, groups=16)
    conv = Conv2dWorkload.make((1, 16, 14, 14), (16, 16, 3, 3), 1, 1)
    pw = Conv2dWorkload.make((1, 16, 14, 14), (32, 16, 1, 1))
    assert fuses(make_kernel(dw, "swar", 2, 2), zbb) and fuses(make_kernel(dw, "swar", 2, 2), gc)
    assert fuses(make_kernel(dw, "int8", 8, 8), zbb)
    assert not fuses(make_kernel(dw, "int8", 8, 8), gc)  # the clamp branches without Zbb
    assert fuses(make_kernel(conv, "int8", 8, 8), gc)
    assert not fuses(make_kernel(conv, "int8", 8, 8, word_bits=32), rv32)
    assert not fuses(make_kernel(pw, "swar", 4, 4), zbb)
    w8 = make_kernel(conv, "swar", 8, 8)  # two unblocked pixel lanes on a 3x3 conv
    assert w8.attrs["layout"] == "pixels" and "block" not in w8.attrs and not fuses(w8, zbb)
    assert not fuses(make_kernel(conv, "bitserial", 2, 2), zbb)
    assert not fuses(make_kernel(DenseWorkload(1, 64, 16), "int8", 8, 8), zbb)


def test_epilogue_errors():
    wl = Conv2dWorkload.make((1, 4, 6, 6), (4, 4, 3, 3), 1, 1)
    kd = make_kernel(wl, "int8", 8, 8)
    with pytest.raises(ValueError, match="no epilogue"):
        fused_schedule(kd)
    fk, args, _ = _fused(kd)
    with pytest.raises(ValueError, match="already has an epilogue"):
        fk.with_epilogue(lambda o, p: o, [], "again")
    with pytest.raises(ValueError, match="epilogue arguments"):
        fk.make_args(np.zeros(wl.input_shape), np.zeros(wl.weight_shape))
    assert fk.describe().endswith("+requantize[3,250,wide]")
    assert [str(t.dtype) for t in fk.params][-1] == "uint8" and len(args) == 6
