"""``tvm-mpq rpc build-runtime``: the riscv64 Linux runtime + ``tvm_rpc`` server for boards.

Fast tests: error messages (missing cross compiler names the apt package, bad ``--tvm-src``,
old cmake), the generated Makefile's source selection, our replacement support headers (host
self-test of their behaviour and wire format; the heaviest runtime sources cross-compile with
them). The slow test builds the whole runtime (cached in ``default_build_dir()``), runs
``tvm_rpc`` under ``qemu-riscv64`` registered with a tracker, and does an upload / load / run /
time_evaluator round trip of a riscv64 kernel checked against numpy, then runs a Relax VM
executable in a second session. QEMU wall times are not board latencies: only their presence
is checked.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tvm_mpq.cli import rpc as cli_rpc
from tvm_mpq.rpc import build_runtime as BR

sys.path.insert(0, os.path.dirname(__file__))
from test_rpc import assert_outside_refused  # noqa: E402

HAVE_CROSS = shutil.which(BR.DEFAULT_CXX) is not None
HAVE_QEMU = shutil.which("qemu-riscv64") is not None and Path("/usr/riscv64-linux-gnu/lib").is_dir()
needs_cross = pytest.mark.skipif(not HAVE_CROSS, reason=f"{BR.DEFAULT_CXX} not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- error messages
def test_missing_cross_compiler_names_apt_package():
    with pytest.raises(BR.BuildError, match="g\\+\\+-riscv64-linux-gnu") as err:
        BR.build_runtime(cxx="riscv64-nonexistent-linux-gnu-g++", build_dir="/nonexistent/never-made")
    assert "riscv64-nonexistent-linux-gnu-g++" in str(err.value)
    assert not Path("/nonexistent/never-made").exists()


def test_cli_reports_build_error(capsys):
    rc = cli_rpc.main(["build-runtime", "--cxx", "riscv64-nonexistent-g++", "--build-dir", "/nonexistent/x"])
    assert rc == 2
    assert "apt-get install -y g++-riscv64-linux-gnu" in capsys.readouterr().err


def test_bad_tvm_src_missing_dir(tmp_path):
    with pytest.raises(BR.BuildError, match="does not exist.*git clone --recursive"):
        BR.build_runtime(tvm_src=str(tmp_path / "nope"))


def test_bad_tvm_src_not_a_tree(tmp_path):
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    with pytest.raises(BR.BuildError) as err:
        BR.build_runtime(tvm_src=str(tmp_path))
    msg = str(err.value)
    assert "not a usable TVM source tree" in msg
    assert "apps/cpp_rpc/main.cc" in msg and "3rdparty/tvm-ffi" in msg
    assert "; CMakeLists.txt (" not in msg and ": CMakeLists.txt (" not in msg  # present: not listed


def _fake_tree(root: Path, version: str, ffi_cmake_min: str = "3.26") -> Path:
    for rel in ("src/runtime/rpc/rpc_endpoint.cc", "apps/cpp_rpc/main.cc"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    (root / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.18)\n")
    (root / "3rdparty/tvm-ffi").mkdir(parents=True)
    ffi_cmake = f"cmake_minimum_required(VERSION {ffi_cmake_min})\n"
    (root / "3rdparty/tvm-ffi/CMakeLists.txt").write_text(ffi_cmake)
    (root / "python/tvm").mkdir(parents=True)
    (root / "python/tvm/libinfo.py").write_text(f'__version__ = "{version}"\n')
    return root


def test_bad_tvm_src_version_mismatch(tmp_path):
    _fake_tree(tmp_path, "0.19.0")
    with pytest.raises(BR.BuildError, match="is TVM 0.19.0 but the installed wheel is"):
        BR.check_tvm_src(tmp_path)


def test_matching_tree_passes_check_and_cmake_requirement_is_read(tmp_path):
    _fake_tree(tmp_path, BR._base_version(), ffi_cmake_min="99.1")
    assert BR.check_tvm_src(tmp_path) == tmp_path.resolve()
    assert BR.cmake_required(tmp_path) == (99, 1)
    if shutil.which("cmake"):
        with pytest.raises(BR.BuildError, match="older than the 99.1"):
            BR.check_cmake(tmp_path)


def test_cmake_commands_are_runtime_only(tmp_path):
    tc = BR.write_toolchain_file(tmp_path / "tc.cmake")
    assert "CMAKE_CXX_COMPILER riscv64-linux-gnu-g++" in tc.read_text()
    assert "CMAKE_C_COMPILER riscv64-linux-gnu-gcc" in tc.read_text()
    configure, build = BR.cmake_commands("/src", tmp_path, tc)
    assert "-DUSE_LLVM=OFF" in configure and "-DUSE_CPP_RPC=ON" in configure
    assert "tvm_runtime" in build and "tvm_rpc" in build


# ---------------------------------------------------------------------------- wheel route pieces
def test_support_dir_covers_what_the_compiled_sources_need():
    covers = BR.support_covers()
    prefixes = ("include/tvm/support/io.h", "include/tvm/support/serializer.h", "src/support/",
                "apps/cpp_rpc")
    needed = [k for k in covers if k.startswith(prefixes)]
    assert needed, "wheel_route_missing() found nothing: did the wheel layout change?"
    missing = [k for k in needed if covers[k] is None and "pipe.h" not in k]
    assert not missing, f"not supplied by runtime_support: {missing}"


def test_wheel_sources_selection():
    srcs = BR.wheel_sources()
    rt = {p.name for p in srcs["runtime"]}
    for need in ("rpc_endpoint.cc", "rpc_socket_impl.cc", "rpc_server_env.cc", "rpc_module.cc",
                 "rpc_local_session.cc", "cpu_device_api.cc", "tensor.cc", "thread_pool.cc", "vm.cc"):
        assert need in rt
    assert "rpc_pipe_impl.cc" not in rt and "paged_kv_cache.cc" not in rt
    assert not any("cuda" in p.parts or "minrpc" in p.parts for p in srcs["runtime"])
    ffi = {p.name for p in srcs["ffi"]}
    assert {"object.cc", "function.cc", "library_module_dynamic_lib.cc"} <= ffi
    assert "testing.cc" not in ffi and "backtrace_win.cc" not in ffi


def test_makefile_lists_every_source_and_the_server(tmp_path):
    mf = BR.write_makefile(tmp_path).read_text()
    srcs = BR.wheel_sources()
    for p in srcs["ffi"] + srcs["runtime"]:
        assert p.name in mf, p
    assert "rpc_server.cc" in mf and "-Wl,--no-undefined" in mf and "$$ORIGIN" in mf
    assert (tmp_path / "tree/src/support/ring_buffer.h").exists()
    assert (tmp_path / "tree/include/tvm/support/serializer.h").exists()
    # regenerating an unchanged Makefile keeps its mtime (make would rebuild everything)
    before = (tmp_path / "Makefile").stat().st_mtime_ns
    time.sleep(0.01)
    BR.write_makefile(tmp_path)
    assert (tmp_path / "Makefile").stat().st_mtime_ns == before


def test_default_build_dir_is_versioned(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = BR.default_build_dir()
    assert d.parent == tmp_path / "tvm-mpq"
    assert d.name == f"runtime-{BR.wheel_version()}-riscv64-linux-gnu"


def test_elf_machine(tmp_path):
    import sys

    assert BR.elf_machine(sys.executable) in (62, 183)  # x86-64 / aarch64 host
    (tmp_path / "t").write_bytes(b"not elf")
    assert BR.elf_machine(tmp_path / "t") is None


@pytest.mark.skipif(shutil.which("g++") is None, reason="host g++ not installed")
def test_support_headers_behaviour_and_wire_format(tmp_path):
    """Host build of runtime_support/selftest.cc: serializer/base64/ring buffer/arena checks,
    and the serializer's bytes equal TVM's format built here with struct."""
    import tvm_ffi

    ffi = Path(tvm_ffi.__file__).parent
    exe = tmp_path / "selftest"
    sup = BR.SUPPORT_DIR
    cmd = ["g++", "-std=c++17", "-O1", f"-I{sup / 'include'}", f"-I{sup / 'src'}", f"-I{ffi / 'include'}",
           f"-I{ffi / '3rdparty/dlpack/include'}", str(sup / "selftest.cc"), "-o", str(exe),
           f"-L{ffi / 'lib'}", "-ltvm_ffi", f"-Wl,-rpath,{ffi / 'lib'}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and "OK " in r.stdout
    wire = bytes.fromhex(r.stdout.split("WIRE ")[1].split()[0])
    expect = b"".join([
        struct.pack("<i", -2), struct.pack("<Q", 7), struct.pack("<d", 1.5),
        struct.pack("<Q", 2) + b"ab", struct.pack("<Q", 2) + struct.pack("<hh", 1, -1),
        struct.pack("<BBH", 2, 32, 1), struct.pack("<ii", 1, 3),
        struct.pack("<Q", 2) + struct.pack("<Q", 1) + b"x" + struct.pack("<Q", 2) + b"yz",
    ])
    assert wire == expect


@needs_cross
@pytest.mark.parametrize("rel", ["rpc/rpc_endpoint.cc", "rpc/rpc_socket_impl.cc", "tensor.cc"])
def test_replacement_headers_cross_compile_runtime_sources(tmp_path, rel):
    tree = BR.stage_tree(tmp_path)
    src = tree / "src" / "runtime" / rel
    r = subprocess.run([BR.DEFAULT_CXX, *BR.compile_flags(tree), "-fsyntax-only", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@needs_cross
def test_rpc_server_cross_compiles(tmp_path):
    tree = BR.stage_tree(tmp_path)
    r = subprocess.run([BR.DEFAULT_CXX, *BR.compile_flags(tree), "-Wall", "-c",
                        str(BR.SUPPORT_DIR / "rpc_server.cc"), "-o", str(tmp_path / "s.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert BR.elf_machine(tmp_path / "s.o") == 243
    assert "warning" not in r.stderr, r.stderr[-2000:]


# ---------------------------------------------------------------------------- full build + qemu
@pytest.fixture(scope="module")
def built_runtime() -> Path:
    if not HAVE_CROSS:
        pytest.skip(f"{BR.DEFAULT_CXX} not installed")
    return BR.build_runtime(jobs=int(os.environ.get("TVM_MPQ_JOBS", "2")))


def _riscv_add_lib(path: Path, n: int) -> str:
    import tvm
    from tvm import te
    from tvm.support import cc

    from tvm_mpq.targets import get_profile

    a = te.placeholder((n,), name="A", dtype="int32")
    b = te.placeholder((n,), name="B", dtype="int32")
    c = te.compute((n,), lambda i: a[i] * 3 + b[i], name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "axpb")
    mod = tvm.build(func, target=get_profile("rv64gc").target("linux"))
    mod.export_library(str(path), fcompile=cc.cross_compiler(BR.DEFAULT_CXX))
    return "axpb"


def _riscv_relax_lib(path: Path) -> None:
    """A Relax VM executable (matmul + relu) for riscv64 Linux."""
    import tvm
    from tvm.script import relax as R
    from tvm.support import cc

    from tvm_mpq.targets import get_profile

    @tvm.script.ir_module
    class Mlp:
        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 3), "float32")):
            with R.dataflow():
                z = R.nn.relu(R.matmul(x, w))
                R.output(z)
            return z

    ex = tvm.compile(Mlp, target=get_profile("rv64gc").target("linux"))
    ex.export_library(str(path), fcompile=cc.cross_compiler(BR.DEFAULT_CXX))


def _check_run_remote(tracker: str, key: str) -> None:
    """tvm_mpq.rpc.run_remote: a mixed w8a8 / w4a4 plan (integer glue) compiled for rv64gc,
    exported, run through the Relax VM on the board: the host build's output, and the wall
    time flagged as QEMU's."""
    import torch

    import tvm_mpq
    from tvm_mpq.rpc.remote import run_remote

    sys.path.insert(0, os.path.dirname(__file__))
    from test_compile import SmallNet

    torch.manual_seed(0)
    m, x = SmallNet().eval(), torch.randn(16, 1, 12, 12)
    plan = tvm_mpq.QuantPlan.uniform(m, w_bits=8, a_bits=8)
    plan.set(plan.layers()[1], w_bits=4, a_bits=4)
    cm = tvm_mpq.compile(m, x[:1], plan, "rv64gc", calib_data=x)
    run = run_remote(cm, x[:1].numpy(), tracker=tracker, key=key, number=1, repeat=2,
                     qemu_user=True)
    assert run.max_abs_diff is not None and run.max_abs_diff <= 1e-5 * np.abs(run.output).max()
    assert run.seconds > 0 and run.under_qemu and "not hardware latency" in run.describe()


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_CROSS and HAVE_QEMU), reason="needs riscv64-linux-gnu-g++ and qemu-user")
def test_qemu_tracker_round_trip(built_runtime, tmp_path):
    import tvm
    from tvm import relax, rpc

    from tvm_mpq.rpc.client import measure_on_board
    from tvm_mpq.rpc.tracker import start_tracker, stop_tracker, tracker_status

    for name in BR.DEPLOY_FILES:
        assert BR.elf_machine(built_runtime.parent / name) == 243, name
    n = 777
    lib = tmp_path / "axpb_rv64.so"
    fname = _riscv_add_lib(lib, n)
    assert BR.elf_machine(lib) == 243
    key = "board-rv64gc"
    tracker = start_tracker(port=_free_port())
    work = tmp_path / "work"
    work.mkdir()
    cmd, env = BR.qemu_user_command(built_runtime, f"127.0.0.1:{tracker.port}", key, port=_free_port(),
                                    extra=[f"--work-dir={work}"])
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 -- closed in finally
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while tracker_status("127.0.0.1", tracker.port).keys.get(key) is None:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() < deadline, "server never registered with the tracker"
            time.sleep(0.3)
        rng = np.random.default_rng(0)
        a = rng.integers(-1000, 1000, n, dtype=np.int32)
        b = rng.integers(-1000, 1000, n, dtype=np.int32)
        sess = rpc.connect_tracker("127.0.0.1", tracker.port).request(key, session_timeout=120)
        out = measure_on_board(sess, str(lib), fname, [a, b, np.zeros(n, np.int32)],
                               number=2, repeat=2, return_outputs=True)
        np.testing.assert_array_equal(out["outputs"][2], a * 3 + b)
        assert out["status"] == "ok" and len(out["results"]) == 2
        assert all(t > 0 for t in out["results"])  # QEMU wall time: presence only, not latency
        del sess
        # second session (the server re-registered): a Relax VM executable on the board
        vm_lib = tmp_path / "mlp_rv64.so"
        _riscv_relax_lib(vm_lib)
        sess = rpc.connect_tracker("127.0.0.1", tracker.port).request(key, session_timeout=120)
        sess.upload(str(vm_lib))
        dev = sess.cpu(0)
        vm = relax.VirtualMachine(sess.load_module(vm_lib.name), dev)
        x = rng.standard_normal((4, 8)).astype("float32")
        w = rng.standard_normal((8, 3)).astype("float32")
        y = vm["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev)).numpy()
        np.testing.assert_allclose(y, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-5)
        # file operations stay inside the session's work directory
        outside = tmp_path / "outside.txt"
        outside.write_text("keep")
        for bad in (str(outside), "../../outside.txt", "../x.bin"):
            assert_outside_refused(sess, bad)
        assert outside.read_text() == "keep" and not (work / "x.bin").exists()
        del vm, sess
        # third session: a mixed-precision model compiled by tvm_mpq, run through the board
        _check_run_remote(f"127.0.0.1:{tracker.port}", key)
        lines = (tmp_path / "server.log").read_text().splitlines()
        starts = [ln for ln in lines if "] session from" in ln and not ln.endswith("finished")]
        assert len(starts) == 3 and sum("load_module" in ln for ln in lines) == 3, lines
        server.terminate()  # SIGTERM: ends a session still open, removes its work dir, exits 0
        assert server.wait(timeout=20) == 0
        assert "stopped" in (tmp_path / "server.log").read_text()
        assert list(work.iterdir()) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        log.close()
        stop_tracker(tracker)


@contextmanager
def _qemu_boards(runtime: Path, log_dir: Path, key: str, n: int
                 ) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A tracker on loopback and ``n`` qemu-riscv64 board servers registered under ``key``
    (waits until all are); yields ``("127.0.0.1:PORT", servers)``, then kills what is left."""
    from tvm_mpq.rpc.tracker import start_tracker, stop_tracker, tracker_status

    tracker = start_tracker(port=_free_port())
    servers, logs = [], []
    try:
        for i in range(n):
            cmd, env = BR.qemu_user_command(runtime, f"127.0.0.1:{tracker.port}", key,
                                            port=_free_port())
            logs.append(open(log_dir / f"server{i}.log", "w"))  # noqa: SIM115 -- closed below
            servers.append(subprocess.Popen(cmd, env=env, stdout=logs[-1],
                                            stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        while (ks := tracker_status("127.0.0.1", tracker.port).keys.get(key)) is None \
                or ks.total < n:
            assert all(s.poll() is None for s in servers) and time.time() < deadline
            time.sleep(0.3)
        yield f"127.0.0.1:{tracker.port}", servers
    finally:
        for s in servers:
            if s.poll() is None:
                s.kill()
                s.wait(timeout=10)
        for f in logs:
            f.close()
        stop_tracker(tracker)


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_CROSS and HAVE_QEMU), reason="needs riscv64-linux-gnu-g++ and qemu-user")
def test_tune_by_wall_time_on_a_qemu_board(built_runtime, tmp_path):
    """tune(backend="rpc") with a board key: every kernel cross-compiled, uploaded, checked
    and timed on the (qemu-riscv64) board server; the chosen plan and baselines run there
    whole, and its compiled accuracy is computed from the board's outputs; the report says
    the seconds are QEMU's."""
    import torch

    import tvm_mpq
    from tvm_mpq.measure.database import MeasurementDB

    sys.path.insert(0, os.path.dirname(__file__))
    from test_compile import SmallNet

    key = "qemu-board-rv64gc"
    with _qemu_boards(built_runtime, tmp_path, key, 1) as (tracker, _):
        torch.manual_seed(0)
        m, x = SmallNet().eval(), torch.randn(32, 1, 12, 12)
        y = m(x).argmax(1)
        res = tvm_mpq.tune(m, target="riscv64", calib_data=x, eval_data=(x, y), backend="rpc",
                           tracker=tracker, key=key, bits=[(8, 8), (4, 4)],
                           variants=["int8"], pop_size=8, generations=3, active_rounds=0,
                           repair_plans=0, workdir=str(tmp_path / "wd"),
                           progress=False)
        assert res.cost_unit == "seconds" and "not hardware latency" in res.message
        db = MeasurementDB(tmp_path / "wd" / "measurements.sqlite")
        recs = db.records("rv64gc", key)
        assert recs and all(r.ok and r.seconds > 0 for r in recs), [r.message for r in recs]
        assert all(r.extra["board"]["under_qemu"] and "spread" in r.extra for r in recs)
        dev = recs[0].extra["device"]  # reported by the board server itself
        assert dev["machine"] == "riscv64" and dev["tvm_version"].startswith("0.27")
        assert res.best is not None and res.best.model_cost and res.best.model_cost > 0
        assert res.baselines["fp32"].model_cost > 0
        # the chosen plan's accuracy through the board's own outputs
        from tvm_mpq.rpc.remote import RemoteModel

        cm = res.compile()
        with RemoteModel(cm, tracker, key) as board:
            assert board.under_qemu
            got = board.predict(x[:6].numpy())
        np.testing.assert_allclose(got, cm.predict(x[:6].numpy()), rtol=1e-5, atol=1e-5)
        # tune()'s compiled accuracy came from the board's outputs, equal to the host's
        assert "compiled accuracy through the board" in res.best.notes
        host_acc = float((cm.predict(x.numpy()).argmax(1) == y.numpy()).mean())
        assert res.best.compiled_accuracy == pytest.approx(host_acc)


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_CROSS and HAVE_QEMU), reason="needs riscv64-linux-gnu-g++ and qemu-user")
def test_board_kernels_fan_out_over_two_boards(built_runtime, tmp_path):
    """Two qemu-riscv64 board servers under one key: a campaign's kernels are timed on both
    (each record names its board), every output checked; a board killed mid-campaign loses
    nothing: its kernel is retried on the other."""
    from tvm_mpq.measure.campaign import measure_many
    from tvm_mpq.rpc.board_runner import BoardRunner
    from tvm_mpq.schedules import Conv2dWorkload

    key = "qemu-board-rv64gc"
    with _qemu_boards(built_runtime, tmp_path, key, 2) as (tracker, servers):
        reqs = [(Conv2dWorkload.make((1, c, 6, 6), (8, c, 3, 3), 1, 1), v, 8, 8)
                for c in (4, 8, 12) for v in ("int8", "swar")]
        runner = BoardRunner(tracker, key, number=2, repeat=2)
        recs = measure_many(reqs, "rv64gc", runner, db=tmp_path / "m.sqlite", progress=False)
        assert all(r.ok and r.seconds > 0 for r in recs), [r.message for r in recs]
        boards = {r.extra["rpc"]["server"] for r in recs}
        assert len(boards) == 2, boards  # both boards measured
        assert all(r.extra["device"]["machine"] == "riscv64" for r in recs)
        # one board gone: the next campaign still completes on the other
        servers[0].kill()
        servers[0].wait(timeout=10)
        more = [(Conv2dWorkload.make((1, 16, 5, 5), (4, 16, 3, 3), 1, 1), "int8", 8, 8)]
        recs = measure_many(more, "rv64gc", runner, db=tmp_path / "m.sqlite", progress=False)
        assert recs[0].ok, recs[0].message
