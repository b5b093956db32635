"""costmodel.prior.generic_workloads: the model-independent shapes measured for the cost model."""

from __future__ import annotations

import pytest

from tvm_mpq.costmodel.prior import generic_workloads
from tvm_mpq.schedules import Conv2dWorkload, DenseWorkload


def test_deterministic_distinct_capped_and_varied():
    a = generic_workloads(24, seed=0)
    assert [w.key() for w in a] == [w.key() for w in generic_workloads(24, seed=0)]
    assert [w.key() for w in a] != [w.key() for w in generic_workloads(24, seed=1)]
    assert len(a) == 24 and len({w.key() for w in a}) == 24
    assert all(w.macs <= 4_000_000 for w in a)
    convs = [w for w in a if isinstance(w, Conv2dWorkload)]
    assert any(isinstance(w, DenseWorkload) for w in a)
    assert any(w.groups > 1 and w.groups == w.c for w in convs)  # depthwise
    assert any(w.kh == 3 and w.groups == 1 for w in convs)  # regular 3x3
    assert any(w.kh == 1 for w in convs)  # pointwise
    assert any(w.stride == (2, 2) for w in convs)
    # small and large feature maps both covered
    assert min(w.h for w in convs) <= 2 and max(w.h for w in convs) >= 14


def test_caps_and_bad_n():
    small = generic_workloads(12, max_hw=7, max_macs=100_000)
    assert all(w.macs <= 100_000 for w in small)
    assert all(w.h <= 7 for w in small if isinstance(w, Conv2dWorkload))
    assert generic_workloads(0) == []
    with pytest.raises(ValueError, match="n must be"):
        generic_workloads(-1)
