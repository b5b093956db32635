"""Standalone (TVM-runtime-free) export: C + one kernel object, run bare metal and on Linux."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

from tvm_mpq.compiler.compiled import compile as mpq_compile
from tvm_mpq.deploy import export_standalone, load_standalone, plan_memory, run_standalone
from tvm_mpq.deploy.graph import Storage
from tvm_mpq.measure import toolchain
from tvm_mpq.measure.toolchain import ToolchainError
from tvm_mpq.quant.plan import QuantPlan

try:
    toolchain.find_gcc()
    toolchain.find_picolibc()
    toolchain.find_spike()
    toolchain.find_qemu(64)
    HAVE_BM = True
except ToolchainError:
    HAVE_BM = False
HAVE_LINUX = all(shutil.which(t) for t in ("riscv64-linux-gnu-gcc", "qemu-riscv64"))

needs_bm = pytest.mark.skipif(not HAVE_BM, reason="bare-metal toolchain / simulators missing")
needs_linux = pytest.mark.skipif(not HAVE_LINUX, reason="riscv64-linux-gnu-gcc / qemu-riscv64 missing")

#: standalone vs host CompiledModel: same kernels; float ops compiled for another ISA
RTOL = ATOL = 1e-5


class SmallNet(nn.Module):
    """conv+bn+relu, depthwise stride 2, pointwise, residual add, mean pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.dw(x)))
        y = y + torch.relu(self.pw(y))
        return self.fc(y.mean((2, 3)))


def _net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    m = SmallNet()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        for bn in (m.b1, m.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    m.eval()
    calib = torch.randn(32, 3, 12, 12)
    return m, calib[:1].clone() * 1.3, calib


def _plan(m: nn.Module, kind: str) -> QuantPlan:
    if kind == "fp32":
        return QuantPlan.fp32(m)
    if kind == "mixed":
        plan = QuantPlan.uniform(m, w_bits=8, a_bits=8)
        rng = np.random.default_rng(7)
        for name in plan.layers():
            plan.set(name, w_bits=int(rng.choice([2, 4, 8])), a_bits=int(rng.choice([2, 4, 8])))
        return plan
    b = int(kind[1:])
    return QuantPlan.uniform(m, w_bits=b, a_bits=b)


def _compiled(kind: str, profile: str):
    m, x, calib = _net()
    cm = mpq_compile(m, x, _plan(m, kind), target=profile, calib_data=calib)
    return cm, x


def _agree(out: np.ndarray | None, ref: np.ndarray) -> None:
    assert out is not None
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def w8(tmp_path_factory):
    cm, x = _compiled("w8", "rv64gc")
    art = export_standalone(cm, str(tmp_path_factory.mktemp("sa_w8")))
    return cm, x, art, cm(x.numpy())


# ---- export only (needs TVM, no cross toolchain) ---------------------------------------------


def test_export_writes_artifact_and_manifest(w8):
    cm, x, art, _ = w8
    d = art.directory
    for f in ("model.c", "model.h", "weights.bin", "weights.S", "Makefile", "manifest.json",
              "kernels_rv64gc.o", "kernels_rv64gc_linux.o", "harness/standalone_main.c",
              "include/tvm/ffi/c_api.h", "include/dlpack/dlpack.h"):
        assert os.path.isfile(os.path.join(d, f)), f
    m = json.loads(open(os.path.join(d, "manifest.json")).read())
    assert m["profile"] == "rv64gc" and m["input"]["shape"] == [1, 3, 12, 12]
    assert m["output"]["shape"] == [1, 10]
    # every quantized site's kernel is called once, in graph order, unfused
    assert m["num_kernel_calls"] == len(cm.sites) == 4
    kernel_ops = [op["func"] for op in m["ops"] if op["kernel"]]
    assert kernel_ops == [s.func_name for s in cm.sites]
    assert m["weight_bytes"] == os.path.getsize(os.path.join(d, "weights.bin"))
    assert 0 < art.arena_bytes <= art.naive_bytes
    src = open(os.path.join(d, "model.c")).read()
    assert src.count("__tvm_ffi_mpq_op") >= 2 * art.num_ops  # declared + called
    assert "mpq_model_run" in open(os.path.join(d, "model.h")).read()
    assert load_standalone(d).arena_bytes == art.arena_bytes


def test_arena_plan_never_overlaps_live_buffers(w8):
    _, _, art, _ = w8
    bufs = [b for b in art.manifest["buffers"] if b["kind"] == "arena"]
    for i, a in enumerate(bufs):
        assert a["offset"] % 64 == 0 and a["offset"] + a["bytes"] <= art.arena_bytes
        for b in bufs[i + 1:]:
            live = a["live"][0] <= b["live"][1] and b["live"][0] <= a["live"][1]
            mem = a["offset"] < b["offset"] + b["bytes"] and b["offset"] < a["offset"] + a["bytes"]
            assert not (live and mem), (a, b)


def test_plan_memory_reuses_dead_buffers():
    # a chain a -> b -> c -> d: a and c can share, b and d can share
    ss = [Storage(i, "arena", 1000, first=i, last=i + 1) for i in range(4)]
    top = plan_memory(ss)
    assert top == 2 * 1024
    assert ss[0].offset == ss[2].offset and ss[1].offset == ss[3].offset
    assert ss[0].offset != ss[1].offset


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "int32", "int64", "uint16",
                                   "float16", "float32", "float64", ">f4", "<i2"])
def test_dl_dtype_one_table_for_names_and_numpy(dtype):
    """The DLPack codes of the generated C (TVM dtype names) and of the measurement harness
    (numpy arrays) come from one table and agree."""
    dt = np.dtype(dtype)
    code, bits = toolchain.dl_dtype(dt)
    assert (code, bits) == toolchain.dl_dtype(dt.name)
    assert code == {"i": 0, "u": 1, "f": 2, "b": 6}[dt.kind] and bits == 8 * dt.itemsize


@pytest.mark.parametrize("dtype", ["bfloat16", "complex64", "int", "bool8", np.dtype("U3")])
def test_dl_dtype_rejects_what_has_no_code(dtype):
    with pytest.raises(ValueError, match="DLPack"):
        toolchain.dl_dtype(dtype)


@pytest.mark.parametrize("profile", ["rv64gc", "rv64gc_zbb", "rv32imc"])
def test_makefile_uses_the_measurement_flags(profile):
    """The artifact's Makefile compiles and links with the bare-metal flags the kernel
    measurements use (toolchain's build flags), whatever the include directories."""
    from tvm_mpq.deploy.buildrules import makefile, tool_vars
    from tvm_mpq.targets import get_profile

    prof = get_profile(profile)
    mk = makefile(prof, True, tool_vars(prof))
    base = toolchain.bare_metal_cflags(prof)
    cflags = next(ln for ln in mk.splitlines() if ln.startswith("BM_CFLAGS ?= "))
    assert cflags.split()[2:2 + len(base)] == base
    ld = toolchain.bare_metal_ldflags(prof, "harness/link.ld")
    assert f"BM_LDFLAGS ?= {' '.join(ld)}" in mk
    assert ld[0] == f"-march={prof.march.split('_')[0]}"  # the picolibc multilib name
    assert "-DPLATFORM_VIRT" in toolchain.bare_metal_cflags(prof, platform="virt")
    assert "-DPLATFORM_VIRT" not in toolchain.bare_metal_cflags(prof, platform="spike")


def test_host_profile_rejected(tmp_path):
    m, x, calib = _net()
    cm = mpq_compile(m, x, QuantPlan.fp32(m), target="host")
    with pytest.raises(ValueError, match="RISC-V profile"):
        export_standalone(cm, str(tmp_path))


# ---- runs --------------------------------------------------------------------------------------


@needs_bm
def test_w8_spike_qemu_agree_with_host(w8):
    cm, x, art, ref = w8
    rs = run_standalone(art, x, "spike")
    rq = run_standalone(art, x, "qemu")
    for r in (rs, rq):
        assert r.status == "ok", r.message
        _agree(r.output, ref)
    assert rs.instructions == rq.instructions > 0
    assert abs(rs.cycles - rs.instructions) <= 4  # mcycle == minstret; reads straddle
    # deterministic: the same count again
    assert run_standalone(art, x, "qemu").instructions == rq.instructions


@needs_bm
def test_per_op_instruction_counts(w8):
    """profile_ops: one count per manifest op, same outputs, counts summing to the whole run
    (plus the counter reads the profiling build adds around each call)."""
    cm, x, art, ref = w8
    plain = run_standalone(art, x, "spike")
    r = run_standalone(art, x, "spike", profile_ops=True)
    assert r.status == "ok", r.message
    _agree(r.output, ref)
    names = [op["func"] for op in art.manifest["ops"]]
    assert [(i, n) for i, n, _ in r.op_instructions] == list(enumerate(names))
    per_op = [n for _, _, n in r.op_instructions]
    assert all(n > 0 for n in per_op)
    assert sum(per_op) <= r.instructions <= sum(per_op) + 16 * len(per_op)
    assert abs(r.instructions - plain.instructions) <= 16 * len(per_op)
    # the quantized kernels are the dearest ops of a w8 model of this size
    table = r.op_table()
    assert sum(n for _, _, n in table) == sum(per_op)
    assert {s.func_name for s in cm.sites} <= {k for k, _, _ in table}
    # deterministic, and the same on QEMU icount
    q = run_standalone(art, x, "qemu", profile_ops=True)
    assert q.op_instructions == r.op_instructions
    assert plain.op_instructions is None
    with pytest.raises(ValueError, match="profile_ops"):
        plain.op_table()
    with pytest.raises(ValueError, match="bare-metal"):
        run_standalone(art, x, "qemu-user", profile_ops=True)


@needs_linux
def test_w8_linux_static_under_qemu_user(w8):
    cm, x, art, ref = w8
    r = run_standalone(art, x, "qemu-user")
    assert r.status == "ok", r.message
    assert r.instructions is None
    _agree(r.output, ref)


@needs_bm
def test_wrong_input_shape_and_bad_backend(w8):
    _, x, art, _ = w8
    with pytest.raises(ValueError, match="input shape"):
        run_standalone(art, np.zeros((1, 3, 8, 8), np.float32), "spike")
    with pytest.raises(ValueError, match="backend"):
        run_standalone(art, x, "gem5")


@needs_bm
def test_runner_object_as_backend(w8):
    """A measurement runner is accepted as the backend; one that runs no binaries is not."""
    from tvm_mpq.measure.runner import create_runner

    _, x, art, _ = w8
    by_name = run_standalone(art, x, "qemu")
    by_runner = run_standalone(art, x, create_runner("qemu"))
    assert by_runner.status == "ok" and by_runner.backend == "qemu"
    assert by_runner.instructions == by_name.instructions
    with pytest.raises(ValueError, match="backend 'host'"):
        run_standalone(art, x, "host")


@needs_bm
def test_watchdog_reports_timeout(w8):
    _, x, art, _ = w8
    r = run_standalone(art, x, "qemu", max_instructions=10_000)
    assert r.status == "timeout" and r.output is None and r.instructions is None


def test_missing_toolchain_raises(w8, monkeypatch, tmp_path):
    _, x, art, _ = w8
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(ToolchainError):
        run_standalone(art, x, "qemu")
    with pytest.raises(ToolchainError, match="riscv64-linux-gnu-gcc"):
        run_standalone(art, x, "qemu-user")


@needs_bm
def test_make_builds_the_same_elf(w8, tmp_path):
    """The written Makefile is usable on its own (same rules run_standalone uses)."""
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make missing")
    _, x, art, _ = w8
    d = tmp_path / "copy"
    shutil.copytree(art.directory, d, ignore=shutil.ignore_patterns("build"))
    (d / "in.bin").write_bytes(x.numpy().astype("<f4").tobytes())
    p = subprocess.run(["make", "-s", "run-qemu", "INPUT=in.bin"], cwd=d, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    want = run_standalone(art, x, "qemu").instructions
    assert f"instret={want} " in p.stdout


# ---- the matrix (slow) -------------------------------------------------------------------------


@pytest.mark.slow
@needs_bm
@pytest.mark.parametrize("profile", ["rv64gc", "rv64gc_zbb"])
@pytest.mark.parametrize("kind", ["w8", "w4", "w2", "mixed", "fp32"])
def test_matrix_agreement(kind, profile, tmp_path):
    cm, x = _compiled(kind, profile)
    ref = cm(x.numpy())
    art = export_standalone(cm, str(tmp_path))
    rs, rq = run_standalone(art, x, "spike"), run_standalone(art, x, "qemu")
    for r in (rs, rq):
        assert r.status == "ok", r.message
        _agree(r.output, ref)
    assert rs.instructions == rq.instructions
    if HAVE_LINUX:
        ru = run_standalone(art, x, "qemu-user")
        assert ru.status == "ok", ru.message
        _agree(ru.output, ref)


@pytest.mark.slow
@needs_bm
def test_rv32_and_unfused(tmp_path):
    cm, x = _compiled("w8", "rv32imc")
    ref = cm(x.numpy())
    art = export_standalone(cm, str(tmp_path / "rv32"))
    assert not art.linux
    rs, rq = run_standalone(art, x, "spike"), run_standalone(art, x, "qemu")
    assert rs.status == rq.status == "ok", rs.message + rq.message
    _agree(rs.output, ref)
    assert rs.instructions == rq.instructions
    r = run_standalone(art, x, "qemu-user")
    assert r.status == "build_error"
    # unfused lowering: same output, more packed calls, more instructions
    cm64, x = _compiled("w4", "rv64gc_zbb")
    fused = export_standalone(cm64, str(tmp_path / "fused"))
    plain = export_standalone(cm64, str(tmp_path / "plain"), fuse=False)
    assert plain.num_ops > fused.num_ops
    a, b = run_standalone(fused, x, "qemu"), run_standalone(plain, x, "qemu")
    assert a.status == b.status == "ok"
    _agree(a.output, cm64(x.numpy()))
    _agree(b.output, cm64(x.numpy()))
    assert b.instructions > a.instructions


@pytest.mark.slow
@needs_bm
def test_run_from_compiled_model_in_temp_dir():
    cm, x = _compiled("w8", "rv64gc_zbb")
    r = run_standalone(cm, x, "qemu")
    assert r.status == "ok", r.message
    _agree(r.output, cm(x.numpy()))
