"""The glue schedule (unrolled rows of the passes between kernels) keeps every result exact."""

from __future__ import annotations

import re

import numpy as np
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import te

from tvm_mpq.compiler.dyadic_ops import dyadic_consts, requantize_dyadic_te
from tvm_mpq.quant.dyadic import dyadic_params, requantize_dyadic_ref
from tvm_mpq.schedules.glue import MAX_UNROLL, schedule_glue

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _unrolled_extents(func: tvm.tirx.PrimFunc) -> list[int]:
    """Extents of the unrolled loops (from the printed TIR: ``for i in T.unroll(7):``)."""
    return sorted(int(e) for e in re.findall(r"T\.unroll\((\d+)\)", func.script()))


def _requant_func(shape: tuple[int, ...]) -> tuple[tvm.tirx.PrimFunc, list[np.ndarray], np.ndarray]:
    """A requantize epilogue over ``shape`` (wide form), its arguments and numpy result."""
    rng = np.random.default_rng(len(shape) * 1000 + int(np.prod(shape)))
    k = shape[1]
    m, kk, t = dyadic_params(rng.uniform(1e-3, 3e-2, k), rng.integers(-1000, 1000, k), 0)
    acc = rng.integers(-20000, 20000, shape).astype(np.int32)
    consts = dyadic_consts(m, kk, t, "wide")
    x = te.placeholder(shape, "int32", "acc")
    cts = [te.placeholder((k,), str(c.dtype), f"c{i}") for i, c in enumerate(consts)]
    out = requantize_dyadic_te(x, cts, 0, 255, "uint8", 1, "wide")
    ref = requantize_dyadic_ref(acc, m, kk, t, 0, 255, ch_axis=1).astype(np.uint8)
    return te.create_prim_func([x, *cts, out]), [acc, *consts], ref


def _run_host(func: tvm.tirx.PrimFunc, args: list[np.ndarray], out_shape) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    dev = [tvm.runtime.tensor(a) for a in args]
    out = tvm.runtime.tensor(np.zeros(out_shape, np.uint8))
    lib["main"](*dev, out)
    return out.numpy()


@FAST
@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 33))
def test_scheduled_requantize_is_exact(c, h, w):
    func, args, ref = _requant_func((1, c, h, w))
    got = _run_host(schedule_glue(func), args, ref.shape)
    np.testing.assert_array_equal(got, ref)


def test_rows_unrolled_in_groups():
    # a long row: split by its largest divisor up to MAX_UNROLL
    func, _, _ = _requant_func((1, 2, 3, 28))
    assert _unrolled_extents(schedule_glue(func)) == [7]
    # a short row: all of it, and a divisor of the next loop up to MAX_UNROLL elements
    func, _, _ = _requant_func((1, 2, 6, 4))
    assert _unrolled_extents(schedule_glue(func)) == [2, 4]
    assert 2 * 4 <= MAX_UNROLL
    # a prime row longer than the group: nothing to split evenly, left as it is
    func, _, _ = _requant_func((1, 2, 3, 31))
    assert _unrolled_extents(schedule_glue(func)) == []


def test_reductions_and_dense_rows():
    # a reduction (pooling) keeps its loops; a 2-d (N, K) row is split like a spatial one
    x = te.placeholder((1, 4, 16, 16), "int32", "x")
    rh, rw = te.reduce_axis((0, 16), "rh"), te.reduce_axis((0, 16), "rw")
    s = te.compute((1, 4), lambda n, c: te.sum(x[n, c, rh, rw], axis=[rh, rw]), name="pool")
    func = te.create_prim_func([x, s])
    assert _unrolled_extents(schedule_glue(func)) == []
    dense, args, ref = _requant_func((1, 256))
    scheduled = schedule_glue(dense)
    assert _unrolled_extents(scheduled) == [8]
    np.testing.assert_array_equal(_run_host(scheduled, args, ref.shape), ref)
