"""Property tests: every kernel variant is bit-exact against the numpy integer reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tvm_mpq.schedules import (
    A_BITS,
    W_BITS,
    conv2d_ref,
    dense_ref,
    run_conv2d,
    run_dense,
    variants,
)
from tvm_mpq.schedules.packing import (
    pack_bitplanes,
    pack_subbyte,
    unpack_subbyte,
    weight_code,
)
from tvm_mpq.schedules.reference import weight_range
from tvm_mpq.schedules.workload import Conv2dWorkload

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def rand_weights(rng: np.random.Generator, shape, w_bits: int) -> np.ndarray:
    lo, hi = weight_range(w_bits)
    if w_bits == 1:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(lo, hi + 1, size=shape)


def rand_acts(rng: np.random.Generator, shape, a_bits: int) -> np.ndarray:
    return rng.integers(0, 1 << a_bits, size=shape)


@st.composite
def conv_cases(draw):
    groups_kind = draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    if groups_kind == "depthwise":
        c = draw(st.integers(1, 12))
        groups, k = c, c * draw(st.integers(1, 2))
    elif groups_kind == "grouped":
        groups = draw(st.integers(2, 4))
        c = groups * draw(st.integers(1, 20))
        k = groups * draw(st.integers(1, 3))
    else:
        groups, c, k = 1, draw(st.integers(1, 80)), draw(st.integers(1, 9))
    kh = draw(st.sampled_from([1, 3, 5]))
    kw = draw(st.sampled_from([kh, 1, 3]))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, kh - pad[0] - pad[2]), 9))
    w = draw(st.integers(max(1, kw - pad[1] - pad[3]), 9))
    n = draw(st.integers(1, 2))
    return dict(shape=(n, c, h, w), wshape=(k, c // groups, kh, kw), stride=stride, padding=pad,
                groups=groups, w_bits=draw(st.sampled_from(W_BITS)),
                a_bits=draw(st.sampled_from(A_BITS)), seed=draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("variant", variants())
@SETTINGS
@given(case=conv_cases())
def test_conv2d_matches_reference(variant, case):
    rng = np.random.default_rng(case["seed"])
    x = rand_acts(rng, case["shape"], case["a_bits"])
    w = rand_weights(rng, case["wshape"], case["w_bits"])
    kw = dict(stride=case["stride"], padding=case["padding"], groups=case["groups"])
    wl = Conv2dWorkload.make(x.shape, w.shape, **kw)
    if variant == "fp32":  # exact only below 2^24 (it refuses larger: test_fp32_refuses_inexact)
        assume(np.abs(x).max() * np.abs(w).reshape(len(w), -1).sum(1).max() < 2**24)
    got = run_conv2d(x, w, w_bits=case["w_bits"], a_bits=case["a_bits"], variant=variant, **kw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, conv2d_ref(x, w, wl))


@pytest.mark.parametrize("variant", variants())
@SETTINGS
@given(m=st.integers(1, 4), d=st.integers(1, 200), n=st.integers(1, 12),
       w_bits=st.sampled_from(W_BITS), a_bits=st.sampled_from(A_BITS),
       seed=st.integers(0, 2**31))
@example(m=4, d=17, n=9, w_bits=1, a_bits=1, seed=0)  # host LLVM SLP bug (targets.py)
def test_dense_matches_reference(variant, m, d, n, w_bits, a_bits, seed):
    rng = np.random.default_rng(seed)
    x = rand_acts(rng, (m, d), a_bits)
    w = rand_weights(rng, (n, d), w_bits)
    if variant == "fp32":
        assume(np.abs(x).max() * np.abs(w).sum(1).max() < 2**24)
    got = run_dense(x, w, w_bits=w_bits, a_bits=a_bits, variant=variant)
    np.testing.assert_array_equal(got, dense_ref(x, w))


# Edge cases named by the spec: C=1, 3, odd channel counts, 1x1 and 5x5, stride 2, depthwise,
# and extreme values (all-max activations against the most negative weights).
EDGE = [
    dict(shape=(1, 1, 6, 6), wshape=(3, 1, 3, 3), stride=1, padding=1, groups=1),
    dict(shape=(1, 3, 8, 8), wshape=(4, 3, 3, 3), stride=2, padding=1, groups=1),
    dict(shape=(1, 67, 5, 5), wshape=(5, 67, 1, 1), stride=1, padding=0, groups=1),
    dict(shape=(1, 129, 4, 4), wshape=(3, 129, 3, 3), stride=1, padding=1, groups=1),
    dict(shape=(1, 5, 9, 9), wshape=(2, 5, 5, 5), stride=2, padding=2, groups=1),
    dict(shape=(1, 16, 7, 7), wshape=(16, 1, 3, 3), stride=2, padding=1, groups=16),
    dict(shape=(1, 6, 5, 5), wshape=(12, 1, 3, 3), stride=1, padding=1, groups=6),
]


@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("case", EDGE, ids=lambda c: "x".join(map(str, c["wshape"])))
@pytest.mark.parametrize("bits", [(1, 1), (2, 2), (4, 4), (8, 8), (2, 8)])
def test_conv2d_edge_cases(variant, case, bits):
    w_bits, a_bits = bits
    rng = np.random.default_rng(7)
    kw = {k: case[k] for k in ("stride", "padding", "groups")}
    wl = Conv2dWorkload.make(case["shape"], case["wshape"], **kw)
    for x, w in [
        (rand_acts(rng, case["shape"], a_bits), rand_weights(rng, case["wshape"], w_bits)),
        (np.full(case["shape"], (1 << a_bits) - 1), np.full(case["wshape"], weight_range(w_bits)[0])),
    ]:
        if variant == "fp32" and np.abs(x).max() * np.abs(w).reshape(len(w), -1).sum(1).max() >= 2**24:
            continue  # beyond float32's exact-integer range; covered by test_fp32_refuses_inexact
        got = run_conv2d(x, w, w_bits=w_bits, a_bits=a_bits, variant=variant, **kw)
        np.testing.assert_array_equal(got, conv2d_ref(x, w, wl))


def test_pad_value_is_zero_point():
    rng = np.random.default_rng(3)
    x = rand_acts(rng, (1, 9, 5, 5), 4)
    w = rand_weights(rng, (4, 9, 3, 3), 2)
    wl = Conv2dWorkload.make(x.shape, w.shape, 1, 1)
    ref = conv2d_ref(x, w, wl, pad_value=7)
    for v in variants():
        got = run_conv2d(x, w, padding=1, w_bits=2, a_bits=4, variant=v, pad_value=7)
        np.testing.assert_array_equal(got, ref)


def test_fp32_refuses_inexact():
    x = np.full((1, 64, 3, 3), 255)
    w = np.full((1, 64, 3, 3), -128)
    with pytest.raises(ValueError, match="2\\^24"):
        run_conv2d(x, w, padding=1, w_bits=8, a_bits=8, variant="fp32")
    assert run_conv2d(x, w, padding=1, w_bits=8, a_bits=8, variant="int8").min() == 255 * -128 * 576


@pytest.mark.parametrize("kwargs,match", [
    (dict(w_bits=3, a_bits=2, variant="int8"), "w_bits=3"),
    (dict(w_bits=2, a_bits=5, variant="int8"), "a_bits=5"),
    (dict(w_bits=2, a_bits=2, variant="nope"), "unknown variant"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_conv2d(np.zeros((1, 3, 4, 4), int), np.zeros((2, 3, 3, 3), int), **kwargs)


def test_bad_values_and_shapes():
    x, w = np.zeros((1, 3, 4, 4), int), np.zeros((2, 3, 3, 3), int)
    with pytest.raises(ValueError, match="activation values out of range"):
        run_conv2d(x + 4, w, w_bits=2, a_bits=2, variant="int8")
    with pytest.raises(ValueError, match="activation values out of range"):
        run_conv2d(x - 1, w, w_bits=2, a_bits=2, variant="int8")
    with pytest.raises(ValueError, match="weight values out of range"):
        run_conv2d(x, w + 2, w_bits=2, a_bits=2, variant="int8")
    with pytest.raises(ValueError, match="-1 or \\+1"):
        run_conv2d(x, w, w_bits=1, a_bits=2, variant="bitserial")
    with pytest.raises(ValueError, match="shape mismatch"):
        run_conv2d(x, np.zeros((2, 2, 3, 3), int), w_bits=2, a_bits=2, variant="int8")
    with pytest.raises(ValueError, match="shape mismatch"):
        run_dense(np.zeros((2, 5), int), np.zeros((3, 4), int), w_bits=2, a_bits=2, variant="int8")
    with pytest.raises(ValueError, match="integer array"):
        run_dense(np.zeros((2, 5)), np.zeros((3, 5), int), w_bits=2, a_bits=2, variant="int8")
    with pytest.raises(ValueError, match="groups"):
        run_conv2d(x, np.zeros((2, 1, 3, 3), int), groups=2, w_bits=2, a_bits=2, variant="int8")


@settings(max_examples=50, deadline=None)
@given(bits=st.sampled_from(W_BITS), rows=st.integers(1, 5), length=st.integers(1, 150),
       seed=st.integers(0, 2**31))
def test_subbyte_roundtrip(bits, rows, length, seed):
    w = rand_weights(np.random.default_rng(seed), (rows, length), bits)
    p = pack_subbyte(w, bits)
    assert p.shape[-1] == -(-length * bits // 8)
    np.testing.assert_array_equal(unpack_subbyte(p, bits, length), w)


@settings(max_examples=50, deadline=None)
@given(bits=st.sampled_from(W_BITS), length=st.integers(1, 150),
       word_bits=st.sampled_from([8, 32, 64]), seed=st.integers(0, 2**31))
def test_bitplanes_reconstruct(bits, length, word_bits, seed):
    w = rand_weights(np.random.default_rng(seed), (3, length), bits)
    planes = pack_bitplanes(weight_code(w, bits), bits, axis=1, word_bits=word_bits)
    assert planes.shape == (3, bits, -(-length // word_bits))
    # unpack: bit j of word q of plane b is bit b of element q*word_bits + j
    rebuilt = np.zeros((3, planes.shape[2] * word_bits), np.int64)
    for b in range(bits):
        for j in range(word_bits):
            bit = (planes[:, b, :].astype(np.uint64) >> np.uint64(j)) & np.uint64(1)
            rebuilt[:, j::word_bits] |= bit.astype(np.int64) << b
    np.testing.assert_array_equal(rebuilt[:, :length], weight_code(w, bits).astype(np.int64))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 600), st.sampled_from([1, 3, 5]), st.sampled_from([1, 2, 4, 8]),
       st.sampled_from([1, 2, 4, 8]))
def test_swar_lanes_never_carry(cg, kh, w_bits, a_bits):
    """The lane choice keeps a whole output's biased packed sum inside its lane, and one more
    lane would not fit."""
    from tvm_mpq.schedules.swar import swar_lanes

    wl = Conv2dWorkload.make((1, cg, kh + 2, kh + 2), (2, cg, kh, kh), 1, 0)
    p, s = swar_lanes(wl, w_bits, a_bits)
    assert 1 <= p <= 8 and p * s <= 64
    span = ((1 << a_bits) - 1) * (2 if w_bits == 1 else (1 << w_bits) - 1)  # max a (max-min w)
    t = kh * kh * -(-cg // p)
    assert p == 1 or t * p * span < (1 << s)
    if p < 8:
        s2 = 64 // (p + 1)
        t2 = kh * kh * -(-cg // (p + 1))
        assert t2 * (p + 1) * span >= (1 << s2)


def _packed_dot(a: list[int], w: list[int], p: int, s: int, word_bits: int, beta: int) -> int:
    """The channel-lane arithmetic in Python integers: a's lanes (shifted to end at the top
    bit) times w's reversed signed lanes, summed modulo the word, biased, top lane - beta."""
    base = word_bits - p * s
    mod = 1 << word_bits
    acc = 0
    for j in range(0, len(a), p):
        aw = sum(v << (base + i * s) for i, v in enumerate(a[j:j + p]))
        ww = sum(v << (s * (p - 1 - i)) for i, v in enumerate(w[j:j + p]))
        acc = (acc + aw * ww) % mod
    bias = sum(beta << (base + q * s) for q in range(p)) % mod
    return ((acc + bias) % mod >> (base + s * (p - 1))) - beta


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 300), st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4, 8]),
       st.sampled_from([32, 64]), st.sampled_from(["max", "min", "alternate", "random"]),
       st.integers(0, 2**32 - 1))
def test_channel_lanes_exact_at_the_extremes(cg, w_bits, a_bits, word_bits, pattern, seed):
    """Signed channel lanes with their bias read back the exact dot product for the largest
    positive and negative sums the bits allow (pointwise: one word column per output)."""
    from tvm_mpq.schedules.swar import channel_lane_bias, swar_lanes

    wl = Conv2dWorkload.make((1, cg, 1, 1), (1, cg, 1, 1), 1, 0)
    p, s = swar_lanes(wl, w_bits, a_bits, word_bits)
    if p == 1:  # one lane: the word sum is the int32 sum itself
        return
    beta = channel_lane_bias(wl, w_bits, a_bits, word_bits)
    rng = np.random.default_rng(seed)
    amax = (1 << a_bits) - 1
    wlo, whi = (-1, 1) if w_bits == 1 else (-(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1)
    a = [amax] * cg if pattern != "random" else rng.integers(0, amax + 1, cg).tolist()
    if pattern == "max":
        w = [whi] * cg
    elif pattern == "min":
        w = [wlo] * cg
    elif pattern == "alternate":
        w = [wlo if i % 2 else whi for i in range(cg)]
    else:
        w = rng.choice([wlo, whi], cg).tolist()
    assert _packed_dot(a, w, p, s, word_bits, beta) == sum(x * y for x, y in zip(a, w, strict=True))
