"""Bare-metal measurement backend: Spike / QEMU instruction counts of TVM kernels."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tvm
from tvm import te, topi

from tvm_mpq.measure import toolchain
from tvm_mpq.measure.baremetal import KernelCase, run_kernels
from tvm_mpq.measure.toolchain import ToolchainError

try:
    toolchain.find_gcc()
    toolchain.find_picolibc()
    toolchain.find_spike()
    toolchain.find_qemu(64)
    HAVE_TOOLS = True
except ToolchainError:
    HAVE_TOOLS = False

needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="bare-metal toolchain not installed")


# ---- cases -----------------------------------------------------------------------------------


def conv2d_case(name: str = "conv") -> KernelCase:
    """int8 conv2d NCHW 1x16x16x16, 16 3x3 filters, pad 1, int32 out."""
    rng = np.random.default_rng(0)
    n, c, h, w, k, r = 1, 16, 16, 16, 16, 3
    data = te.placeholder((n, c, h, w), "int8", name="data")
    weight = te.placeholder((k, c, r, r), "int8", name="weight")
    out = topi.nn.conv2d_nchw(data, weight, stride=1, padding=1, dilation=1, out_dtype="int32")
    a = rng.integers(-128, 128, (n, c, h, w), dtype=np.int8)
    b = rng.integers(-128, 128, (k, c, r, r), dtype=np.int8)
    ap = np.pad(a.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((n, k, h, w), np.int64)
    for kh in range(r):
        for kw in range(r):
            ref += np.einsum("nchw,kc->nkhw", ap[:, :, kh:kh + h, kw:kw + w],
                             b[:, :, kh, kw].astype(np.int64))
    ref = ref.astype(np.int32)
    func = te.create_prim_func([data, weight, out])
    return KernelCase(name, func, [a, b, np.zeros_like(ref)], {2: ref})


def matmul_case(name: str = "mm", n: int = 32, seed: int = 1) -> KernelCase:
    """int8 x int8 -> int32 matmul n x n x n."""
    rng = np.random.default_rng(seed)
    A = te.placeholder((n, n), "int8", name="A")
    B = te.placeholder((n, n), "int8", name="B")
    k = te.reduce_axis((0, n), name="k")
    C = te.compute((n, n), lambda i, j: te.sum(A[i, k].astype("int32") * B[k, j].astype("int32"),
                                               axis=k), name="C")
    a = rng.integers(-128, 128, (n, n), dtype=np.int8)
    b = rng.integers(-128, 128, (n, n), dtype=np.int8)
    ref = a.astype(np.int32) @ b.astype(np.int32)
    return KernelCase(name, te.create_prim_func([A, B, C]), [a, b, np.zeros_like(ref)], {2: ref})


def _elementwise(fn, n: int = 4, dtype: str = "int32"):
    A = te.placeholder((n,), dtype, name="A")
    B = te.compute((n,), fn(A), name="B")
    return te.create_prim_func([A, B])


def popcount_case(name: str = "popcnt") -> KernelCase:
    a = np.random.default_rng(2).integers(0, 2**63, 64, dtype=np.uint64)
    ref = np.array([bin(int(x)).count("1") for x in a], np.int32)
    f = _elementwise(lambda A: lambda i: tvm.tirx.popcount(A[i]).astype("int32"), 64, "uint64")
    return KernelCase(name, f, [a, np.zeros(64, np.int32)], {1: ref})


# ---- the main int8 cases, measured once on Spike and reused --------------------------------


@pytest.fixture(scope="module")
def spike_runs():
    if not HAVE_TOOLS:
        pytest.skip("bare-metal toolchain not installed")
    return run_kernels([conv2d_case(), matmul_case()], "rv64gc", "spike")


@needs_tools
def test_conv2d_and_matmul_on_spike(spike_runs):
    conv, mm = spike_runs
    assert conv.status == "ok", conv.message
    assert mm.status == "ok", mm.message
    assert conv.message == "" and mm.message == ""
    # 1*16*16*16*16*9 = 589,824 MACs; untuned scalar code needs a few instructions per MAC
    assert 589_824 < conv.instructions < 20 * 589_824
    assert 32**3 < mm.instructions < 20 * 32**3
    assert conv.cycles >= conv.instructions  # Spike: mcycle == minstret (+ counter reads)


@needs_tools
def test_qemu_gives_identical_counts(spike_runs):
    runs = run_kernels([conv2d_case(), matmul_case()], "rv64gc", "qemu")
    assert [(r.status, r.instructions) for r in runs] == [
        (r.status, r.instructions) for r in spike_runs
    ]


@needs_tools
def test_repeated_runs_identical(spike_runs, tmp_path):
    again = run_kernels([conv2d_case(), matmul_case()], "rv64gc", "spike", workdir=str(tmp_path))
    assert [r.instructions for r in again] == [r.instructions for r in spike_runs]
    assert (tmp_path / "run0" / "run.elf").is_file()  # workdir is kept when given


# ---- failure reporting ---------------------------------------------------------------------


@needs_tools
def test_wrong_expected_is_wrong_result():
    bad = matmul_case("mm_bad", 8)
    bad.expected = {2: bad.expected[2] + 1}
    good = matmul_case("mm_good", 8)
    r_bad, r_good = run_kernels([bad, good], "rv64gc")
    assert r_bad.status == "wrong_result"
    assert r_bad.instructions is None and "64 mismatching" in r_bad.message
    assert r_good.status == "ok"


@needs_tools
def test_unwritten_output_is_caught():
    from tvm.script import tirx as T

    @T.prim_func
    def partial(A: T.Buffer((8,), "int32"), B: T.Buffer((8,), "int32")):
        for i in range(4):  # leaves B[4:] untouched
            B[i] = A[i]

    x = np.arange(1, 9, dtype=np.int32)
    exp = np.where(np.arange(8) < 4, x, 0).astype(np.int32)
    # B starts as zeros here, which would already match exp[4:]: only the on-target garbage
    # prefill of outputs exposes the unwritten tail
    (r,) = run_kernels([KernelCase("partial", partial, [x, np.zeros(8, np.int32)], {1: exp})],
                       "rv64gc")
    assert r.status == "wrong_result" and r.message.startswith("4 mismatching")
    assert "flat index 4" in r.message


@needs_tools
def test_unbuildable_case_does_not_lose_others():
    sch = tvm.s_tir.Schedule(_elementwise(lambda A: lambda i: A[i], 4, "float32"))
    sch.bind(sch.get_loops(sch.get_sblock("B"))[0], "threadIdx.x")  # GPU binding on a CPU
    nolink = _elementwise(
        lambda A: lambda i: tvm.tirx.call_pure_extern("float32", "no_such_fn", A[i]), 4, "float32"
    )
    x = np.ones(4, np.float32)
    cases = [
        matmul_case("mm_a", 8),
        KernelCase("gpu_bound", sch.mod["main"], [x, np.zeros(4, np.float32)], {1: x}),
        KernelCase("undefined_sym", nolink, [x, np.zeros(4, np.float32)], {1: x}),
        KernelCase("too_few_args", nolink, [x], {}),
        matmul_case("mm_b", 8),
    ]
    runs = run_kernels(cases, "rv64gc")
    status = {r.name: r.status for r in runs}
    assert status == {"mm_a": "ok", "gpu_bound": "build_error", "undefined_sym": "build_error",
                      "too_few_args": "build_error", "mm_b": "ok"}
    assert "no_such_fn" in runs[2].message
    assert runs[0].instructions == runs[4].instructions  # same shapes, same code


@needs_tools
@pytest.mark.parametrize("backend", ["spike", "qemu"])
def test_trap_timeout_and_kernel_error(backend):
    trap = _elementwise(lambda A: lambda i: A[i + 2**30])  # 4 GiB past the buffer: unmapped
    A = te.placeholder((4,), "int32", name="A")
    r1, r2 = te.reduce_axis((0, 10**5), "r1"), te.reduce_axis((0, 10**4), "r2")
    spin = te.create_prim_func(
        [A, te.compute((4,), lambda i: te.sum(A[(r1 + i) % 4] * r2, axis=[r1, r2]), name="B")]
    )
    x = np.arange(4, dtype=np.int32)
    wrong_dtype = matmul_case("wrong_dtype", 8)
    wrong_dtype.args[0] = wrong_dtype.args[0].astype(np.int32)  # kernel expects int8
    cases = [
        matmul_case("first", 8),
        wrong_dtype,
        KernelCase("trap", trap, [x, np.zeros(4, np.int32)], {1: x}),
        matmul_case("after_trap", 8),
        KernelCase("spin", spin, [x, np.zeros(4, np.int32)], {1: x}),
        matmul_case("after_spin", 8),
    ]
    runs = {r.name: r for r in run_kernels(cases, "rv64gc", backend, max_instructions=10**7)}
    assert runs["first"].status == "ok"
    assert runs["wrong_dtype"].status == "run_error" and "dtype" in runs["wrong_dtype"].message
    assert runs["trap"].status == "run_error" and "load access fault" in runs["trap"].message
    assert runs["spin"].status == "timeout" and runs["spin"].instructions is None
    # kernels after a crash are measured in a fresh run
    assert runs["after_trap"].status == "ok" and runs["after_spin"].status == "ok"
    assert runs["after_trap"].instructions == runs["first"].instructions


@needs_tools
def test_float_output_with_tolerance():
    x = np.linspace(-2, 2, 16).astype(np.float32)
    f = _elementwise(lambda A: lambda i: te.exp(A[i]) * 0.5, 16, "float32")
    ok = KernelCase("fexp", f, [x, np.zeros(16, np.float32)], {1: np.exp(x) * 0.5})
    off = KernelCase("fexp_off", f, [x, np.zeros(16, np.float32)], {1: np.exp(x) * 0.5 + 1e-3})
    r_ok, r_off = run_kernels([ok, off], "rv64gc")
    assert r_ok.status == "ok", r_ok.message
    assert r_off.status == "wrong_result"


def test_bad_names_rejected():
    if not HAVE_TOOLS:
        pytest.skip("bare-metal toolchain not installed")
    with pytest.raises(ValueError, match="duplicate"):
        run_kernels([matmul_case("x", 4), matmul_case("x", 4)], "rv64gc")
    with pytest.raises(ValueError, match="identifiers"):
        run_kernels([matmul_case("not-ok", 4)], "rv64gc")
    with pytest.raises(ValueError, match="backend"):
        run_kernels([matmul_case("a", 4)], "rv64gc", backend="fpga")


# ---- other profiles ------------------------------------------------------------------------


@needs_tools
def test_zbb_uses_cpop():
    base, zbb = (run_kernels([popcount_case()], p)[0] for p in ("rv64gc", "rv64gc_zbb"))
    assert base.status == "ok" and zbb.status == "ok", (base.message, zbb.message)
    assert zbb.instructions < base.instructions  # one cpop vs. a bit-twiddling sequence
    (q,) = run_kernels([popcount_case()], "rv64gc_zbb", "qemu")
    assert q.instructions == zbb.instructions


@needs_tools
def test_zbb_code_traps_without_zbb():
    import dataclasses

    from tvm_mpq.targets import get_profile

    p = dataclasses.replace(get_profile("rv64gc_zbb"), spike_isa="rv64gc",
                            qemu_cpu=get_profile("rv64gc").qemu_cpu)
    for backend in ("spike", "qemu"):
        (r,) = run_kernels([popcount_case()], p, backend)
        assert r.status == "run_error" and "illegal instruction" in r.message, backend


@needs_tools
@pytest.mark.parametrize("profile", ["rv32imc", "rv64gcv"])
def test_other_profiles_spike_equals_qemu(profile):
    cases = [matmul_case("mm16", 16), popcount_case()]
    spike = run_kernels(cases, profile, "spike")
    qemu = run_kernels(cases, profile, "qemu")
    assert all(r.status == "ok" for r in spike + qemu), [r.message for r in spike + qemu]
    assert [r.instructions for r in spike] == [r.instructions for r in qemu]


@needs_tools
@pytest.mark.slow
def test_conv2d_rv64gcv_fewer_instructions(spike_runs):
    (v,) = run_kernels([conv2d_case()], "rv64gcv", "spike")
    assert v.status == "ok"
    assert v.instructions < spike_runs[0].instructions


# ---- missing tools -------------------------------------------------------------------------


def test_missing_compiler_message(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match=r"riscv64-unknown-elf-gcc.*scripts/setup\.sh"):
        run_kernels([matmul_case("a", 4)], "rv64gc")
    assert issubclass(ToolchainError, RuntimeError)


def test_missing_simulator_messages(monkeypatch, tmp_path):
    # keep only the compiler visible
    gcc = toolchain.find_gcc() if HAVE_TOOLS else None
    if gcc is None:
        pytest.skip("compiler not installed")
    os.symlink(gcc, tmp_path / "riscv64-unknown-elf-gcc")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="qemu-system-riscv64.*qemu-system-misc"):
        run_kernels([matmul_case("a", 4)], "rv64gc", backend="qemu")
    with pytest.raises(ToolchainError, match="dtc.*device-tree-compiler"):
        run_kernels([matmul_case("a", 4)], "rv64gc", backend="spike")


# ---- MetaSchedule --------------------------------------------------------------------------


@needs_tools
@pytest.mark.slow
def test_metaschedule_tunes_matmul_for_instructions(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from tvm_mpq.measure.ms_runner import (
        BareMetalRunner,
        bare_metal_builder,
        ms_target,
        reference_from_primfunc,
    )
    from tvm_mpq.schedules.ms_tune import prepare_ms_logger

    case = matmul_case("mm", 32)
    mod = tvm.IRModule({"main": case.func})
    runner = BareMetalRunner("rv64gc", reference=reference_from_primfunc(case.func))
    target = ms_target("rv64gc")
    # a handler another test left on MetaSchedule's logger (pytest's, unnamed) crashes its
    # dictConfig; tvm_mpq's tune_kernel detaches those, this direct tune_tir call must too
    prepare_ms_logger()
    db = ms.tune_tir(mod, target, str(tmp_path), max_trials_global=8, num_trials_per_iter=8,
                     builder=bare_metal_builder(), runner=runner, num_tuning_cores=1)
    measured = [r for r in runner.history if r.status == "ok"]
    assert len(measured) >= 4
    sch = ms.tir_integration.compile_tir(db, mod, target)
    assert sch is not None
    tuned = KernelCase("tuned", sch.mod["main"], case.args, case.expected)
    base, best = run_kernels([case, tuned], "rv64gc")
    assert best.status == "ok", best.message  # re-validated outside MetaSchedule
    assert best.instructions == min(r.instructions for r in measured)
