"""RPC fan-out: tracker, simulator-host servers, RPCMeasurer retries, CLI status, board path.

One tracker and five servers are shared by the module (process start-up dominates: each imports
TVM): two real measurement servers (spike, rv64gc) and three plumbing self-test servers whose
``tvm_mpq.measure_json`` just sleeps, so a kill can be placed mid-measurement reliably.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import numpy as np
import pytest

from tvm_mpq.cli import rpc as cli_rpc
from tvm_mpq.rpc import server as S
from tvm_mpq.rpc import tracker as T
from tvm_mpq.rpc.client import RPCMeasurer, measure_on_board

REAL_KEY = "spike-rv64gc"
TEST_KEY = "selftest-rv64gc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spike_available() -> bool:
    try:
        from tvm_mpq.measure import toolchain

        toolchain.find_spike()
        toolchain.find_dtc()
        toolchain.find_gcc()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def cluster():
    base = random.randint(20000, 50000)
    tr = T.start_tracker("127.0.0.1", base, base + 50)
    addr = ("127.0.0.1", tr.port)
    groups: dict[str, S.ServerGroup] = {}
    errors: list[BaseException] = []

    def start(key: str, n: int, impl: str) -> None:
        try:
            groups[key] = S.start_servers(key, "rv64gc", n, tracker=addr, port=base + 100,
                                          port_end=base + 200, impl=impl)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=start, args=(REAL_KEY, 2, S.DEFAULT_IMPL)),
               threading.Thread(target=start, args=(TEST_KEY, 3, "selftest"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        S.wait_for_servers(addr, REAL_KEY, 2)
        S.wait_for_servers(addr, TEST_KEY, 3)
        yield tr, groups
    finally:
        for g in groups.values():
            g.stop()
        T.stop_tracker(tr)


def test_tracker_status_lists_servers(cluster):
    tr, groups = cluster
    st = T.tracker_status("127.0.0.1", tr.port)
    assert st.keys[REAL_KEY].total == 2
    assert sorted(st.keys[REAL_KEY].servers) == sorted(f"127.0.0.1:{p}" for p in groups[REAL_KEY].ports)
    assert st.keys[TEST_KEY].total == 3


def test_cli_status_table(cluster, capsys):
    tr, _ = cluster
    assert cli_rpc.main(["status", "--tracker", f"127.0.0.1:{tr.port}"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(REAL_KEY))
    assert line.split()[1] == "2"  # total
    assert cli_rpc.main(["status", "--tracker", f"127.0.0.1:{tr.port}", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["keys"][TEST_KEY]["total"] == 3


def test_unreachable_tracker_message(capsys):
    port = _free_port()
    with pytest.raises(T.TrackerUnreachableError) as ei:
        T.tracker_status("127.0.0.1", port)
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "tvm-mpq rpc tracker" in msg
    with pytest.raises(T.TrackerUnreachableError):
        RPCMeasurer("127.0.0.1", port, REAL_KEY).measure_many([{"sleep_s": 0}])
    assert cli_rpc.main(["status", "--tracker", f"127.0.0.1:{port}"]) == 2
    assert "tvm-mpq rpc tracker" in capsys.readouterr().err
    from tvm_mpq import cli  # the `rpc` subcommand is plugged into the main CLI

    assert cli.main(["rpc", "status", "--tracker", f"127.0.0.1:{port}"]) == 2
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.skipif(not _spike_available(), reason="spike / riscv64-unknown-elf-gcc not installed")
def test_two_servers_measure_in_parallel(cluster):
    tr, groups = cluster
    from tvm_mpq.schedules.workload import DenseWorkload

    reqs = [{"workload": DenseWorkload(1, 64, n).to_dict(), "variant": "int8", "w_bits": 8,
             "a_bits": 8} for n in (8, 8, 16, 16)]
    seen: list[int] = []
    m = RPCMeasurer("127.0.0.1", tr.port, REAL_KEY, profile="rv64gc", backend="spike",
                    on_record=lambda i, r: seen.append(i))
    recs = m.measure_many(reqs)
    assert sorted(seen) == [0, 1, 2, 3]
    for r in recs:
        assert r["status"] == "ok", r["message"]
        assert isinstance(r["instructions"], int) and r["instructions"] > 0
        assert r["profile"] == "rv64gc" and r["backend"] == "spike"
    # deterministic counts, whichever server measured
    assert recs[0]["instructions"] == recs[1]["instructions"]
    assert recs[2]["instructions"] == recs[3]["instructions"] > recs[0]["instructions"]
    used = {r["extra"]["rpc"]["server"] for r in recs}
    assert used == {f"127.0.0.1:{p}" for p in groups[REAL_KEY].ports}


@pytest.mark.skipif(not _spike_available(), reason="spike / riscv64-unknown-elf-gcc not installed")
def test_rpc_runner_in_measure_many(cluster, tmp_path):
    """measure_many through the tracker: the same records and caching as a local campaign."""
    from tvm_mpq.measure.campaign import measure_many
    from tvm_mpq.measure.database import MeasurementDB
    from tvm_mpq.rpc.runner import RPCRunner
    from tvm_mpq.schedules.workload import DenseWorkload

    tr, groups = cluster
    reqs = [(DenseWorkload(1, 64, 8), "int8", 8, 8), (DenseWorkload(1, 64, 16), "unpack", 4, 8)]
    db = MeasurementDB(tmp_path / "m.sqlite")
    runner = RPCRunner(f"127.0.0.1:{tr.port}", REAL_KEY)
    assert runner.backend == "spike" and runner.unit == "instructions"
    recs = measure_many(reqs, "rv64gc", runner, db=db, progress=False)
    assert all(r.ok for r in recs), [r.message for r in recs]
    assert {r.extra["rpc"]["server"] for r in recs} <= {f"127.0.0.1:{p}" for p in groups[REAL_KEY].ports}
    assert db.count("rv64gc", "spike") == 2
    local = measure_many(reqs, "rv64gc", "spike", progress=False)
    assert [r.instructions for r in recs] == [r.instructions for r in local]
    # cached records come back without asking the tracker (this one does not answer)
    dead = RPCRunner(f"127.0.0.1:{_free_port()}", REAL_KEY)
    assert measure_many(reqs, "rv64gc", dead, db=db, progress=False) == recs
    with pytest.raises(T.TrackerUnreachableError):
        measure_many(reqs, "rv64gc", dead, db=db, force=True, progress=False)
    with pytest.raises(ValueError, match="backend"):
        RPCRunner(f"127.0.0.1:{tr.port}", "board-rv64gc")


def test_bad_request_is_a_failed_record(cluster):
    tr, _ = cluster
    r = RPCMeasurer("127.0.0.1", tr.port, REAL_KEY).measure({"variant": "int8"})
    assert r["status"] == "run_error" and "lacks" in r["message"]
    assert r["instructions"] is None


def test_parallel_fan_out_and_wrong_profile(cluster):
    tr, _ = cluster
    m = RPCMeasurer("127.0.0.1", tr.port, TEST_KEY)
    t0 = time.monotonic()
    recs = m.measure_many([{"sleep_s": 1.0, "i": i} for i in range(6)])
    # 6 x 1 s over 3 servers: about 2 s when parallel, 6 s when not
    assert time.monotonic() - t0 < 5.0
    assert [r["echo"]["i"] for r in recs] == list(range(6))
    assert len({r["extra"]["rpc"]["server"] for r in recs}) == 3
    bad = m.measure({"profile": "rv64gcv"})
    assert bad["status"] == "run_error" and "rv64gc" in bad["message"]


def _kill_when_busy(tracker_port: int, key: str, group: S.ServerGroup, i: int,
                    delay: float = 0.5) -> threading.Thread:
    """Kill server ``i`` ``delay`` s after the tracker has handed out every server of ``key``
    (a fixed delay from the start raced session set-up on a loaded machine)."""
    def run() -> None:
        deadline = time.monotonic() + 30
        while (T.tracker_status("127.0.0.1", tracker_port).keys[key].free > 0
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(delay)
        group.kill(i)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_killed_server_is_retried_then_recorded(cluster):
    tr, groups = cluster
    g = groups[TEST_KEY]
    m = RPCMeasurer("127.0.0.1", tr.port, TEST_KEY, max_retries=1)
    # 3 servers, 3 requests: each server holds one when server 0 dies
    killer = _kill_when_busy(tr.port, TEST_KEY, g, 0)
    recs = m.measure_many([{"sleep_s": 2.5, "i": i} for i in range(3)])
    killer.join()
    assert [r["status"] for r in recs] == ["selftest"] * 3
    lost = f"127.0.0.1:{g.ports[0]}"
    retried = [r for r in recs if r["extra"]["rpc"].get("lost_servers")]
    assert len(retried) == 1 and retried[0]["extra"]["rpc"]["lost_servers"] == [lost]
    assert retried[0]["extra"]["rpc"]["server"] != lost

    # no retries left: the request is recorded as failed, naming the lost server; the campaign
    # finishes on the surviving server
    m.max_retries = 0
    killer = _kill_when_busy(tr.port, TEST_KEY, g, 1)
    recs = m.measure_many([{"sleep_s": 2.5, "i": i} for i in range(2)])
    killer.join()
    statuses = sorted(r["status"] for r in recs)
    assert statuses == ["run_error", "selftest"]
    failed = next(r for r in recs if r["status"] == "run_error")
    assert f"lost server 127.0.0.1:{g.ports[1]}" in failed["message"]
    assert failed["instructions"] is None and failed["cycles"] is None


def test_no_server_for_key(cluster):
    tr, _ = cluster
    m = RPCMeasurer("127.0.0.1", tr.port, "spike-nosuchkey", queue_timeout_s=1.0)
    t0 = time.monotonic()
    recs = m.measure_many([{"sleep_s": 0}] * 3)
    assert time.monotonic() - t0 < 10
    assert all(r["status"] == "run_error" and "spike-nosuchkey" in r["message"] for r in recs)


def test_measure_on_board_over_loopback(cluster, tmp_path):
    """The board path against a standard TVM RPC server (our simulator host serves it too):
    upload a host-compiled library, load_module, time_evaluator, check the outputs."""
    import tvm
    from tvm import te

    tr, _ = cluster
    n = 1024
    a = te.placeholder((n,), "float32", name="a")
    b = te.placeholder((n,), "float32", name="b")
    c = te.compute((n,), lambda i: a[i] + b[i], name="c")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "vadd")
    lib = tvm.compile(tvm.IRModule({"vadd": func}), target="llvm")
    path = str(tmp_path / "vadd.so")
    lib.export_library(path)

    sess = tvm.rpc.connect_tracker("127.0.0.1", tr.port).request(REAL_KEY)
    x, y = np.arange(n, dtype="float32"), np.ones(n, dtype="float32")
    res = measure_on_board(sess, path, "vadd", [x, y, np.zeros(n, "float32")], number=5, repeat=3,
                           return_outputs=True)
    assert res["status"] == "ok" and len(res["results"]) == 3
    assert res["seconds_min"] <= res["seconds"] <= res["seconds_max"] and res["seconds"] > 0
    np.testing.assert_array_equal(res["outputs"][2], x + y)


def assert_outside_refused(sess, bad: str) -> None:
    """upload, download and remove of ``bad`` are refused as outside the work directory."""
    for op in ("upload", "download", "remove"):
        args = (bytearray(b"evil"), bad) if op == "upload" else (bad,)
        with pytest.raises(Exception, match="outside this server's work directory"):
            getattr(sess, op)(*args)


def test_file_operations_are_confined_to_the_work_directory(cluster, tmp_path):
    """A client can upload, download and remove files in its session's work directory,
    and nothing outside it: absolute paths and ``..`` are refused, the outside file stays."""
    import tvm

    tr, _ = cluster
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    sess = tvm.rpc.connect_tracker("127.0.0.1", tr.port).request(TEST_KEY)
    sess.upload(bytearray(b"data"), "inside.bin")
    assert bytes(sess.download("inside.bin")) == b"data"
    sess.remove("inside.bin")
    for bad in (str(outside), "../" * 12 + str(outside).lstrip("/"), "../x.bin"):
        assert_outside_refused(sess, bad)
    with pytest.raises(Exception, match="outside this server's work directory"):
        sess.load_module(str(outside))
    assert outside.read_text() == "keep"
    assert not (tmp_path.parent / "x.bin").exists()


def test_confine_path(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert S.confine_path(str(root), "a/b.so") == str(root / "a" / "b.so")
    for bad in ("/etc/passwd", "../x", "a/../../x", "link/x"):
        with pytest.raises(ValueError, match="outside"):
            S.confine_path(str(root), bad)


@pytest.mark.slow
def test_cli_tracker_and_serve_processes(tmp_path):
    """`tvm-mpq rpc tracker` and `rpc serve -n 2` as processes; status; clean SIGTERM stop."""
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    srv_port = random.randint(20000, 50000)
    py = [sys.executable, "-m", "tvm_mpq.cli.rpc"]
    tr = subprocess.Popen(py + ["tracker", "--port", str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    srv = None
    try:
        for _ in range(5):  # TVM logs "bind to" first
            line = tr.stdout.readline()
            if "listening on 127.0.0.1" in line or not line:
                break
        assert "listening on 127.0.0.1" in line, line
        srv = subprocess.Popen(py + ["serve", "--profile", "rv64gc", "-n", "2", "--tracker",
                                     f"127.0.0.1:{port}", "--port", str(srv_port),
                                     "--log-dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
        seen = []  # the servers' own TVM log lines ("bind to ...") may come first
        while len(seen) < 6 and not any("RPC server(s)" in ln for ln in seen):
            seen.append(srv.stdout.readline())
            if not seen[-1]:
                break
        assert any("2 RPC server(s) for key 'spike-rv64gc'" in ln for ln in seen), seen
        S.wait_for_servers(("127.0.0.1", port), "spike-rv64gc", 2, timeout=60)
        out = subprocess.run(py + ["status", "--tracker", f"127.0.0.1:{port}"], capture_output=True,
                             text=True, timeout=120).stdout
        assert any(ln.split()[:2] == ["spike-rv64gc", "2"] for ln in out.splitlines())
    finally:
        for p in (srv, tr):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    assert srv.returncode == 0 and tr.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _spike_available(), reason="spike / riscv64-unknown-elf-gcc not installed")
def test_server_killed_during_real_measurement():
    """A real spike measurement whose server is killed is re-run on the other server."""
    from tvm_mpq.schedules.workload import Conv2dWorkload

    base = random.randint(20000, 50000)
    tr = T.start_tracker("127.0.0.1", base, base + 50)
    try:
        with S.start_servers(REAL_KEY, "rv64gc", 2, tracker=("127.0.0.1", tr.port), port=base + 100,
                             port_end=base + 200) as g:
            S.wait_for_servers(("127.0.0.1", tr.port), REAL_KEY, 2)
            # ~5e8 instructions: seconds of Spike, so the kill lands mid-run on an idle machine too
            wl = Conv2dWorkload.make((1, 64, 56, 56), (64, 64, 3, 3), 1, 1)
            req = {"workload": wl.to_dict(), "variant": "int8", "w_bits": 8, "a_bits": 8}
            m = RPCMeasurer("127.0.0.1", tr.port, REAL_KEY, max_retries=1)
            def kill_when_busy() -> None:  # both servers handed out, then 1 s into the run
                while T.tracker_status("127.0.0.1", tr.port).keys[REAL_KEY].free > 0:
                    time.sleep(0.1)
                time.sleep(1.0)
                killed.append(time.monotonic())
                g.kill(0)

            killed: list[float] = []
            killer = threading.Thread(target=kill_when_busy)
            killer.start()
            recs = m.measure_many([req, req])
            killer.join()
            assert all(r["status"] == "ok" for r in recs), [r["message"] for r in recs]
            assert recs[0]["instructions"] == recs[1]["instructions"]
            retried = [r for r in recs if r["extra"]["rpc"].get("lost_servers")]
            assert len(retried) == 1
            assert retried[0]["extra"]["rpc"]["server"] == f"127.0.0.1:{g.ports[1]}"
    finally:
        T.stop_tracker(tr)


def test_tune_through_the_tracker_equals_local_spike(cluster, tmp_path):
    """tune(backend="rpc", tracker=, key=) measures every kernel on the key's two simulator
    hosts and gives exactly the measurements and the plan of backend="spike" here; a key
    without servers and a tracker that does not answer are refused before any stage."""
    import os
    import sys

    import torch

    import tvm_mpq
    from tvm_mpq.measure.database import MeasurementDB

    sys.path.insert(0, os.path.dirname(__file__))
    from test_compile import SmallNet

    tr, groups = cluster
    torch.manual_seed(0)
    m, x = SmallNet().eval(), torch.randn(32, 1, 12, 12)
    y = m(x).argmax(1)
    kw = dict(calib_data=x, eval_data=(x, y), bits=[(8, 8), (4, 4)], variants=["int8", "swar"],
              pop_size=8, generations=3, active_rounds=0, final_measure=False, progress=False)
    tracker = f"127.0.0.1:{tr.port}"
    remote = tvm_mpq.tune(m, target="riscv64", backend="rpc", tracker=tracker, key=REAL_KEY,
                          workdir=str(tmp_path / "rpc"), **kw)
    local = tvm_mpq.tune(m, target="riscv64", workdir=str(tmp_path / "local"), **kw)
    rdb = MeasurementDB(tmp_path / "rpc" / "measurements.sqlite")
    ldb = MeasurementDB(tmp_path / "local" / "measurements.sqlite")
    r_costs = rdb.kernel_costs("rv64gc", "spike", "instructions")
    assert r_costs and r_costs == ldb.kernel_costs("rv64gc", "spike", "instructions")
    servers = {f"127.0.0.1:{p}" for p in groups[REAL_KEY].ports}
    used = {r.extra["rpc"]["server"] for r in rdb.records("rv64gc", "spike")}
    assert used and used <= servers
    assert remote.best.plan.to_dict() == local.best.plan.to_dict()
    assert remote.best.cost == local.best.cost
    assert remote.settings["backend"] == "rpc" and remote.settings["key"] == REAL_KEY
    for bad, err, msg in ((dict(key="spike-rv64gcv"), ValueError,
                           "no server is registered under key 'spike-rv64gcv'"),
                          (dict(key="board-rv64gc"), ValueError,
                           "no board server is registered under key 'board-rv64gc'"),
                          (dict(tracker=f"127.0.0.1:{_free_port()}"), T.TrackerUnreachableError, ""),
                          (dict(tracker=None), ValueError, "backend='rpc' needs tracker")):
        args = dict(backend="rpc", tracker=tracker, key=REAL_KEY) | bad
        with pytest.raises(err, match=msg):
            tvm_mpq.tune(m, target="riscv64", workdir=str(tmp_path / "bad"), **(kw | args))
        assert not (tmp_path / "bad").exists()
