"""Every kernel variant compiles for every RISC-V profile (Linux and bare metal) and the host;
with Zbb the bit-serial kernel uses the cpop instruction."""

from __future__ import annotations

import re

import pytest
import tvm

from tvm_mpq.schedules import Conv2dWorkload, make_kernel, variants
from tvm_mpq.schedules.build import kernel_module
from tvm_mpq.targets import get_profile

WL = Conv2dWorkload.make((1, 20, 6, 6), (8, 20, 3, 3), 1, 1)


def _asm(kd, target) -> str:
    lib = tvm.compile(kernel_module(kd), target=target)
    return lib.mod.inspect_source("s")


@pytest.mark.parametrize("profile", ["rv64gc", "rv64gc_zbb", "rv64gcv", "rv32imc"])
@pytest.mark.parametrize("os_", ["linux", "baremetal"])
def test_all_variants_compile(profile, os_):
    prof = get_profile(profile)
    if prof.xlen == 32 and os_ == "linux":
        pytest.skip("no riscv32 Linux target")
    for v in variants():
        kd = make_kernel(WL, v, 2, 2, word_bits=prof.word_bits)
        asm = _asm(kd, prof.target(os_))
        assert "kernel" in asm


def test_zbb_bitserial_uses_cpop():
    kd = make_kernel(WL, "bitserial", 2, 2)
    with_zbb = _asm(kd, get_profile("rv64gc_zbb").target("linux"))
    without = _asm(kd, get_profile("rv64gc").target("linux"))
    assert re.search(r"\bcpop\b", with_zbb)
    assert not re.search(r"\bcpop\b", without)


def test_riscv_profiles_use_an_in_order_scheduling_model_without_extra_features():
    """The CPU name only picks LLVM's scheduling model: the ISA stays the profile's mattr."""
    for name in ("rv64gc", "rv64gc_zbb", "rv64gcv", "rv32imc"):
        prof = get_profile(name)
        d = prof.target_dict("baremetal")
        assert d["mcpu"] == ("rocket-rv64" if prof.xlen == 64 else "rocket-rv32")
        assert d["mattr"] == list(prof.mattr)


def test_riscv_profiles_compile_without_load_clustering():
    """Every RISC-V profile passes RISCV_LLVM_OPTIONS to codegen (TVM's cl-opt), and LLVM
    accepts them; the host keeps its own options."""
    from tvm_mpq.targets import RISCV_LLVM_OPTIONS

    for name in ("rv64gc", "rv64gc_zbb", "rv64gcv", "rv32imc"):
        tgt = get_profile(name).target("baremetal")
        assert [str(o) for o in tgt.attrs["cl-opt"]] == list(RISCV_LLVM_OPTIONS)
    assert "-misched-cluster:bool=false" not in get_profile("host").target_dict().get("cl-opt", [])
    kd = make_kernel(WL, "int8", 8, 8, word_bits=32)
    assert tvm.compile(kd.prim_func("k"), target=get_profile("rv32imc").target("baremetal"))


@pytest.mark.parametrize("alias, name", [("riscv", "rv64gc_zbb"), ("RISCV64-ZBB", "rv64gc_zbb"),
                                         ("riscv64", "rv64gc"), ("riscv64-v", "rv64gcv"),
                                         ("riscv32", "rv32imc"), ("llvm", "host")])
def test_aliases_are_accepted_wherever_a_target_is(alias, name):
    """One alias table (targets.TARGET_ALIASES): compile(target="riscv") works as tune's does."""
    assert get_profile(alias) is get_profile(name)


def test_unknown_target_names_the_choices():
    with pytest.raises(ValueError, match="unknown target profile 'riscv128'.*riscv64-zbb.*rv64gc_zbb"):
        get_profile("riscv128")


def test_compile_takes_an_alias():
    import torch

    import tvm_mpq

    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    cm = tvm_mpq.compile(m, (torch.randn(1, 1, 6, 6),), tvm_mpq.QuantPlan.fp32(m), target="riscv",
                         calib_data=torch.randn(4, 1, 6, 6))
    assert cm.profile.name == "rv64gc_zbb"
