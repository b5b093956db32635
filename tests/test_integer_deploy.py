"""Integer-only standalone artifacts (issue 11): ``integer_io=True`` models export with a
``uint8_t`` entry point, link no soft-float routine on rv32imc, and give on Spike / QEMU the
output codes of ``fake_quant(..., integer_only=True, integer_io=True)`` bit for bit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import tvm_mpq
from tvm_mpq.deploy import export_standalone, load_standalone, run_standalone
from tvm_mpq.deploy.memory import undefined_symbols
from tvm_mpq.deploy.run import entry_input, parse_output
from tvm_mpq.measure import toolchain
from tvm_mpq.measure.toolchain import ToolchainError
from tvm_mpq.quant.calibration import calibrate
from tvm_mpq.quant.folding import fold_bn
from tvm_mpq.quant.plan import QuantPlan

try:
    toolchain.find_gcc()
    toolchain.find_picolibc()
    toolchain.find_spike()
    toolchain.find_qemu(32)
    toolchain.find_qemu(64)
    HAVE_BM = True
except ToolchainError:
    HAVE_BM = False
NM = shutil.which("riscv64-unknown-elf-nm") or shutil.which("riscv64-linux-gnu-nm")
HAVE_LINUX = all(shutil.which(t) for t in ("riscv64-linux-gnu-gcc", "qemu-riscv64"))

needs_bm = pytest.mark.skipif(not HAVE_BM, reason="bare-metal toolchain / simulators missing")
needs_nm = pytest.mark.skipif(not (HAVE_BM and NM), reason="bare-metal toolchain or nm missing")

#: libgcc's soft-float routines (IEEE single / double / quad / half arithmetic, comparisons,
#: conversions: __addsf3, __muldf3, __eqsf2, __extendsfdf2, __fixsfsi, __fixunsdfdi,
#: __floatsisf, __floatunsidf, __powisf2, __mulsc3, ...)
SOFT_FLOAT = re.compile(r"^__(?:[a-z]+[hsdtx]f(?:[hsdtx]f|[sdt]i)?[23]?|[a-z]+[sdt]i[hsdtx]f"
                        r"|(?:mul|div)[sdtx]c3)$")
#: libm's float and double functions (lrintf, roundevenf, nearbyintf, expf, floor, ...)
LIBM_FLOAT = re.compile(r"^(?:l?l?rint|nearbyint|roundeven|l?l?round|floor|ceil|trunc|fabs|sqrt"
                        r"|cbrt|exp(?:2|10|m1)?|log(?:2|10|1p)?|pow|hypot|fmod|remainder|fmin"
                        r"|fmax|fma|copysign|frexp|ldexp|modf|a?(?:sin|cos|tan)h?|atan2|erfc?"
                        r"|tgamma|lgamma)[fl]?$")


def test_float_symbol_patterns():
    """The patterns catch every routine the issue names, and no integer helper."""
    for s in ("__addsf3", "__subsf3", "__mulsf3", "__divsf3", "__floatsisf", "__floatunsisf",
              "__fixsfsi", "__fixunssfsi", "__eqsf2", "__ltsf2", "__gtsf2", "__gesf2", "__lesf2",
              "__nesf2", "__unordsf2", "__extendsfdf2", "__truncdfsf2", "__adddf3", "__muldf3",
              "__fixdfsi", "__floatsidf", "__floatundidf", "__fixunsdfdi", "__powisf2",
              "__mulsc3", "__negsf2", "__cmpdf2"):
        assert SOFT_FLOAT.match(s), s
    for s in ("lrintf", "roundevenf", "nearbyintf", "expf", "floor", "tanhf", "sqrtf"):
        assert LIBM_FLOAT.match(s), s
    for s in ("__muldi3", "__divdi3", "__udivdi3", "__ashldi3", "__lshrdi3", "__clzsi2",
              "__ffssi2", "__bswapsi2", "__tvm_ffi_mpq_op0_qk_int8_w8a8_c1", "memset",
              "mpq_model_run", "TVMBackendAllocWorkspace", "rint_codes", "truncate"):
        assert not SOFT_FLOAT.match(s) and not LIBM_FLOAT.match(s), s


class ResNetlet(nn.Module):
    """conv+relu, depthwise stride 2 + relu, pointwise + residual add, global average pool,
    linear head; odd channel counts."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 11, 3, padding=1)
        self.dw = nn.Conv2d(11, 11, 3, stride=2, padding=1, groups=11)
        self.pw = nn.Conv2d(11, 11, 1)
        self.fc = nn.Linear(11, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        y = torch.relu(self.dw(x))
        y = y + torch.relu(self.pw(y))
        return self.fc(y.mean((2, 3)))


def _model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    m = ResNetlet().eval()
    calib = torch.randn(32, 3, 10, 10)
    return m, calib[:1].clone(), calib


def _plan(m: nn.Module, kind: str) -> QuantPlan:
    if kind == "mixed":  # every layer a different bit pair, none fp32
        plan = QuantPlan.uniform(m, w_bits=8, a_bits=8)
        for name, (w, a) in zip(plan.layers(), [(8, 8), (4, 8), (2, 4), (8, 2)], strict=True):
            plan.set(name, w_bits=w, a_bits=a)
        return plan
    b = int(kind[1:])
    return QuantPlan.uniform(m, w_bits=b, a_bits=b)


def _compile(kind: str, profile: str, **kw):
    m, x, calib = _model()
    plan = _plan(m, kind)
    assert plan.quantized_layers() == plan.layers()  # no fp32 layer
    qp = calibrate(fold_bn(m).eval(), plan, calib)
    cm = tvm_mpq.compile(m, x, plan, profile, qparams=qp, **kw)
    ref = tvm_mpq.fake_quant(m, plan, qparams=qp, integer_only=True,
                             integer_io=kw.get("integer_io", False))
    return cm, ref, x


def _codes(cm, x: torch.Tensor, seed: int) -> np.ndarray:
    """Input codes: the example input quantized as docs/standalone.md says, then random ones
    over the whole uint8 range."""
    s, z = cm.input_quant
    if seed == 0:
        q = np.rint(x.numpy().astype(np.float32) / np.float32(s)) + z
        return np.clip(q, 0, 255).astype(np.uint8)
    return np.random.default_rng(seed).integers(0, 256, tuple(x.shape), dtype=np.uint8)


def _symbols(path: Path, undefined_only: bool) -> set[str]:
    args = [NM, "-u"] if undefined_only else [NM]
    p = subprocess.run([*args, str(path)], capture_output=True, text=True, check=True)
    return {ln.split()[-1] for ln in p.stdout.splitlines() if ln.strip()}


def _float_routines(art_dir: str) -> dict[str, set[str]]:
    """Every object of the artifact (the kernel object, each build's objects: references)
    and every linked ELF (all its symbols) -> the float routines named there."""
    d = Path(art_dir)
    files = sorted(d.glob("*.o")) + sorted(d.glob("build/*/*.o")) + sorted(d.glob("build/*/*.elf"))
    out = {}
    for f in files:
        syms = _symbols(f, undefined_only=f.suffix == ".o")
        out[str(f.relative_to(d))] = {s for s in syms if SOFT_FLOAT.match(s) or LIBM_FLOAT.match(s)}
    return out


@pytest.fixture(scope="module")
def rv32_w8(tmp_path_factory):
    cm, ref, x = _compile("w8", "rv32imc", integer_io=True)
    art = export_standalone(cm, str(tmp_path_factory.mktemp("int_rv32")))
    return cm, ref, x, art


def test_integer_io_entry_point_and_buffers(rv32_w8):
    """uint8 in / uint8 out: model.h, the manifest, input.bin and the artifact agree, and the
    input / output buffers are 1 byte per element (a quarter of the float model's)."""
    cm, _, x, art = rv32_w8
    entry = "int mpq_model_run(const uint8_t *input, uint8_t *output)"
    m = json.loads(Path(art.directory, "manifest.json").read_text())
    assert m["entry"] == entry and m["integer_io"] and art.integer_io
    n_in, n_out = int(np.prod(x.shape)), 7
    assert m["input"]["dtype"] == m["output"]["dtype"] == "uint8"
    assert (m["input"]["bytes"], m["output"]["bytes"]) == (n_in, n_out)
    assert os.path.getsize(os.path.join(art.directory, "input.bin")) == n_in
    s, z = cm.input_quant
    assert m["input"]["quant"] == {"scale": s, "zero_point": z, "bits": 8}
    assert art.input_quant == cm.input_quant and art.output_quant == cm.output_quant
    assert load_standalone(art.directory).output_dtype == "uint8"
    h = Path(art.directory, "model.h").read_text()
    assert entry + ";" in h and "#define MPQ_INTEGER_IO 1" in h
    assert f"#define MPQ_INPUT_BYTES {n_in}u" in h and f"#define MPQ_OUTPUT_BYTES {n_out}u" in h
    assert "typedef uint8_t mpq_input_t;" in h and "typedef uint8_t mpq_output_t;" in h
    assert f"#define MPQ_INPUT_ZERO_POINT {z}\n" in h
    assert float(re.search(r"MPQ_INPUT_SCALE (\S+)f", h).group(1)) == s
    assert entry + " {" in Path(art.directory, "model.c").read_text()
    assert not m["float_shims"]  # the kernels call no roundevenf: the shim is left out


@needs_nm
def test_rv32imc_integer_io_links_no_float(rv32_w8, tmp_path):
    """Issue 11, must show 2: a plan without fp32 layers, compiled for rv32imc with
    integer_io=True, references no soft-float routine (nor a libm float function) in any
    object of its artifact, and its linked ELF contains none. The control: the same model
    with float IO (quantize at entry, dequantize at exit), and with the float glue, does."""
    cm, _, x, art = rv32_w8
    assert cm.plan.quantized_layers() == cm.plan.layers() and not cm.fp32_sites
    q = _codes(cm, x, 0)  # build (and run) every bare-metal variant: Spike, QEMU, per-op counts
    for backend, ops in (("spike", False), ("qemu", False), ("spike", True)):
        assert run_standalone(art, q, backend, profile_ops=ops).status == "ok"
    found = _float_routines(art.directory)
    for b in ("spike", "virt", "spike_ops"):
        assert {f"build/{b}/{f}" for f in ("crt0.o", "htif.o", "tvm_rt_stubs.o", "model.o",
                                            "standalone_main.o", "weights.o", "input.o",
                                            "model.elf")} <= set(found)
    assert "kernels_rv32imc.o" in found
    assert all(not v for v in found.values()), {k: v for k, v in found.items() if v}
    # the project's own ELF reader agrees with nm on the kernel object's references
    kobj = Path(art.directory, "kernels_rv32imc.o")
    assert undefined_symbols(kobj) == _symbols(kobj, undefined_only=True)
    for i, kw in enumerate(({}, {"glue": "float"})):  # the controls: the test can fail
        cmf, _, _ = _compile("w8", "rv32imc", **kw)
        af = export_standalone(cmf, str(tmp_path / f"float{i}"))
        ff = _float_routines(af.directory)
        assert {"__mulsf3", "__floatsisf"} <= ff["kernels_rv32imc.o"], ff["kernels_rv32imc.o"]
        assert {"__addsf3", "__mulsf3"} <= ff["build/spike/model.elf"]


@needs_bm
def test_rv32imc_integer_io_bit_exact_on_spike(rv32_w8):
    """The artifact's output codes on Spike equal the integer reference's and the host
    CompiledModel's, for the quantized example input and random codes."""
    cm, ref, x, art = rv32_w8
    for seed in (0, 1, 2):
        q = _codes(cm, x, seed)
        want = ref(torch.from_numpy(q)).detach().numpy()
        r = run_standalone(art, q, "spike")
        assert r.status == "ok", r.message
        assert r.output.dtype == np.uint8 and r.output.shape == want.shape
        np.testing.assert_array_equal(r.output, want)
        np.testing.assert_array_equal(r.output, cm(q))
        assert r.instructions > 0
    # integer IO takes codes: no silent rounding or wrapping of float / out-of-range input
    with pytest.raises(ValueError, match="input_quant"):
        run_standalone(art, x, "spike")
    with pytest.raises(ValueError, match="range"):
        run_standalone(art, np.full(x.shape, 256, np.int32), "spike")


def test_parse_and_input_by_dtype(rv32_w8):
    """The driver's @@O words hold one element each: a float's bits, or a code."""
    _, _, x, art = rv32_w8
    text = "@@R rc=0\n@@O 0 00000001 000000ff 00000000\n@@DONE\n"
    _, out, _ = parse_output(text, 3, "uint8")
    assert out.dtype == np.uint8 and out.tolist() == [1, 255, 0]
    _, out, _ = parse_output("@@O 0 3f800000\n", 1, "float32")
    assert out.dtype == np.float32 and out.tolist() == [1.0]
    _, out, msg = parse_output("@@O 0 00000100\n", 1, "uint8")
    assert out is None and "wider" in msg
    q = entry_input(torch.zeros(x.shape, dtype=torch.uint8), art)
    assert q.dtype == np.uint8 and q.nbytes == art.manifest["input"]["bytes"]


@pytest.mark.slow
@needs_bm
@pytest.mark.parametrize("profile", ["rv32imc", "rv64gc_zbb"])
@pytest.mark.parametrize("kind", ["w8", "w4", "mixed"])
def test_integer_io_bit_exact_matrix(kind, profile, tmp_path):
    """Spike, QEMU (and qemu-user on rv64) give the integer reference's codes for uniform and
    mixed plans; rv32imc's artifacts never reference a float routine."""
    cm, ref, x = _compile(kind, profile, integer_io=True)
    art = export_standalone(cm, str(tmp_path))
    backends = ["spike", "qemu"] + (["qemu-user"] if art.linux and HAVE_LINUX else [])
    for seed in (0, 1):
        q = _codes(cm, x, seed)
        want = ref(torch.from_numpy(q)).detach().numpy()
        rs = [run_standalone(art, q, b) for b in backends]
        for r in rs:
            assert r.status == "ok", f"{r.backend}: {r.message}"
            np.testing.assert_array_equal(r.output, want)
        assert rs[0].instructions == rs[1].instructions
    if profile == "rv32imc" and NM:
        found = _float_routines(art.directory)
        assert all(not v for v in found.values()), {k: v for k, v in found.items() if v}


def test_float_io_and_integer_io_agree_within_an_output_step():
    """docs/standalone.md's conversions: on the codes ``clamp(rint(x / s) + z, 0, 255)`` of a
    float input, the integer-IO model's output codes, dequantized as
    ``float32(q - z_out) * s_out``, are within half an output step of the float-IO model's
    output (whose last layer dequantizes its accumulator instead of rounding it to a code)."""
    cmi, _, x = _compile("w8", "host", integer_io=True)
    cmf, _, _ = _compile("w8", "host")
    so, zo = cmi.output_quant
    for seed in (0, 3):
        xs = x if seed == 0 else torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        q = _codes(cmi, xs, 0)
        deq = (cmi(q).astype(np.int32) - zo).astype(np.float32) * np.float32(so)
        err = np.abs(cmf(xs) - deq)
        assert err.max() <= so / 2 * (1 + 1e-5), (err.max(), so)
