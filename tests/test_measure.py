"""Measurement database, runners, measure/measure_many (cache, failures, resume) and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tvm_mpq import cli
from tvm_mpq.measure import baremetal, toolchain
from tvm_mpq.measure import local_runner as measure_mod
from tvm_mpq.measure.campaign import MeasureRequest, measure, measure_many, measure_request_json
from tvm_mpq.measure.database import (
    CorruptDatabaseError,
    MeasureKey,
    MeasurementDB,
    MeasureRecord,
    failed_record,
    failed_record_dict,
    schedule_tag,
)
from tvm_mpq.measure.key import KernelKey
from tvm_mpq.measure.runner import BACKENDS, Runner, create_runner
from tvm_mpq.measure.toolchain import ToolchainError
from tvm_mpq.schedules import Conv2dWorkload, DenseWorkload

REPO = Path(__file__).resolve().parent.parent

try:
    toolchain.find_gcc()
    toolchain.find_picolibc()
    toolchain.find_spike()
    HAVE_TOOLS = True
except ToolchainError:
    HAVE_TOOLS = False

needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="bare-metal toolchain not installed")

DENSE = DenseWorkload.make((1, 64), (8, 64))
CONV = Conv2dWorkload.make((1, 8, 6, 6), (8, 8, 3, 3), 1, 1)


def _record(**kw) -> MeasureRecord:
    d = dict(profile="rv64gc", backend="spike", workload_key=DENSE.key(), variant="int8",
             w_bits=8, a_bits=8, schedule="default", workload=DENSE.to_dict(), status="ok",
             instructions=1234, cycles=1236, macs=DENSE.macs)
    d.update(kw)
    return MeasureRecord(**d)


_REAL_RUN_KERNELS = baremetal.run_kernels


class _Counter:
    """Wraps baremetal.run_kernels and counts the kernels it is asked to run."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.cases = 0
        self.calls = 0
        real = _REAL_RUN_KERNELS  # not whatever an earlier _Counter installed

        def wrapped(cases, *a, **k):
            self.calls += 1
            self.cases += len(cases)
            if fail:
                raise AssertionError("the simulator must not run")
            return real(cases, *a, **k)

        monkeypatch.setattr(baremetal, "run_kernels", wrapped)


# ---- database ------------------------------------------------------------------------------


def test_db_roundtrip(tmp_path):
    path = tmp_path / "m.sqlite"
    ok = _record()
    bad = _record(variant="bitserial", w_bits=2, a_bits=2, status="wrong_result",
                  instructions=None, cycles=None, message="3 mismatching elements")
    tuned = _record(schedule=schedule_tag(16), tune_trials=16, schedule_trace="b0 = ...",
                    schedule_hash="ab" * 32, extra={"rejected_records": 1})
    with MeasurementDB(path) as db:
        for r in (ok, bad, tuned):
            db.put(r)
        assert db.count() == 3 and len(db) == 3
        assert db.count("rv64gc", "spike", status="ok") == 2
    with MeasurementDB(path) as db:  # a fresh connection sees the committed records
        assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.get(ok.key) == ok
        assert db.get(tuple(vars(bad.key).values())) == bad
        assert db.get(MeasureKey("rv64gc", "spike", DENSE.key(), "int8", 8, 8, "tuned16")) == tuned
        assert db.get(MeasureKey("rv64gc", "qemu", DENSE.key(), "int8", 8, 8)) is None
        assert [r.variant for r in db.records("rv64gc", "spike", status="ok")] == ["int8", "int8"]
        assert db.records(profile="rv64gcv") == []
        db.put(_record(instructions=99, cycles=99))  # same key: replaced
        assert db.get(ok.key).instructions == 99 and db.count() == 3
        assert db.delete(ok.key) and db.get(ok.key) is None
    assert json.loads(json.dumps(bad.to_dict())) == bad.to_dict()
    assert MeasureRecord.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned


def test_failed_record_never_has_a_number(tmp_path):
    with pytest.raises(ValueError, match="must not carry numbers"):
        _record(status="run_error", message="trap")  # instructions still set
    with pytest.raises(ValueError, match="unknown status"):
        _record(status="fine")
    with pytest.raises(ValueError, match="needs instructions or seconds"):
        _record(instructions=None, cycles=None)
    db = MeasurementDB(tmp_path / "m.sqlite")
    db.put(_record(status="timeout", instructions=None, cycles=None, message="watchdog"))
    with pytest.raises(sqlite3.IntegrityError):  # the schema refuses it too
        db._conn.execute("UPDATE measurements SET instructions = 5")


def test_kernel_key_is_part_of_measure_key():
    r = _record(schedule="tuned8", tune_trials=8)
    kernel = KernelKey(DENSE.key(), "int8", 8, 8, "rv64gc")
    assert r.kernel_key == kernel == r.key.kernel
    assert MeasureKey.of(kernel, "spike", "tuned8") == r.key
    # the positional form stored databases and tests use still builds the same key
    assert MeasureKey("rv64gc", "spike", DENSE.key(), "int8", 8, 8, "tuned8") == r.key
    assert MeasureRequest(DENSE, "int8", 8, 8, 8).key("rv64gc", "spike") == r.key


def test_kernel_costs(tmp_path):
    db = MeasurementDB(tmp_path / "m.sqlite")
    ok = _record(instructions=500, cycles=500)
    wrong = _record(variant="unpack", w_bits=4, status="wrong_result", instructions=None,
                    cycles=None, message="1 mismatch")
    slow = _record(variant="bitserial", w_bits=2, a_bits=2, status="timeout", instructions=None,
                   cycles=None, message="watchdog")
    tuned = _record(variant="swar", w_bits=2, a_bits=2, schedule="tuned4", tune_trials=4)
    other = _record(variant="fp32", backend="qemu")
    host = _record(profile="host", backend="host", instructions=None, cycles=None, seconds=2e-6,
                   seconds_std=0.0)
    for r in (ok, wrong, slow, tuned, other, host):
        db.put(r)
    costs = db.kernel_costs("rv64gc", "spike", "instructions")
    # default schedules only; a failure for good costs inf, a timeout is left to retry
    assert costs == {ok.kernel_key: 500.0, wrong.kernel_key: math.inf}
    assert db.kernel_costs("host", "host", "seconds") == {host.kernel_key: 2e-6}
    assert db.kernel_costs("rv64gc", "spike", "seconds") == {wrong.kernel_key: math.inf}
    with pytest.raises(ValueError, match="unit"):
        db.kernel_costs("rv64gc", "spike", "cycles")


def test_corrupt_database_names_the_file(tmp_path):
    path = tmp_path / "measurements.sqlite"
    path.write_bytes(b"this is not sqlite, just bytes " * 100)
    with pytest.raises(CorruptDatabaseError, match=r"measurements\.sqlite is not a valid .*delete or move"):
        MeasurementDB(path)
    # a database damaged after it was opened is reported the same way on read
    good = tmp_path / "good.sqlite"
    with MeasurementDB(good) as db:
        db.put(_record())
        db._conn.execute("UPDATE measurements SET workload = '{broken'")
        with pytest.raises(CorruptDatabaseError, match="good.sqlite"):
            db.records()
    assert issubclass(CorruptDatabaseError, RuntimeError)


def test_failed_record_builder():
    req = {"workload": DENSE.to_dict(), "variant": "int8", "w_bits": 8, "a_bits": 8,
           "profile": "rv64gc", "backend": "spike", "tune_trials": 4, "seed": 3}
    r = failed_record(req, "run_error", "trap")
    assert r.key == MeasureKey("rv64gc", "spike", DENSE.key(), "int8", 8, 8, "tuned4")
    assert r.instructions is None and r.seconds is None and r.seed == 3 and r.macs == DENSE.macs
    assert r.host and r.tvm_version
    with pytest.raises(ValueError, match="failure status"):
        failed_record(req, "ok", "")
    d = failed_record_dict(req, "timeout", "slow", rpc={"server": "h:1"})
    assert MeasureRecord.from_dict(d).status == "timeout" and d["extra"]["rpc"] == {"server": "h:1"}
    # not a measurement request (an RPC self-test): its own fields, no numbers
    d = failed_record_dict({"sleep_s": 1, "instructions": 5}, "run_error", "lost")
    assert d["sleep_s"] == 1 and d["instructions"] is None and d["status"] == "run_error"


def test_runners():
    assert BACKENDS == ("spike", "qemu", "host")
    spike, qemu, host = (create_runner(b) for b in BACKENDS)
    assert (spike.backend, spike.unit, spike.bare_metal, spike.platform) == (
        "spike", "instructions", True, "spike")
    assert (qemu.platform, host.unit, host.bare_metal, host.default_profile) == (
        "virt", "seconds", False, "host")
    assert create_runner(spike) is spike and isinstance(host, Runner)
    assert spike.check_profile("riscv64-zbb").name == "rv64gc_zbb"
    with pytest.raises(ValueError, match="simulates a RISC-V profile"):
        qemu.check_profile("host")
    with pytest.raises(ValueError, match="host profile only"):
        host.check_profile("rv64gc")
    with pytest.raises(ValueError, match="unknown backend"):
        create_runner("verilator")
    with pytest.raises(NotImplementedError):
        host.run_cases([], host.check_profile("host"))


def test_qdq_overhead_cache(tmp_path, caplog):
    from tvm_mpq.measure.overhead import PASSES_REVISION, measure_qdq_overhead
    from tvm_mpq.targets import get_profile

    prof = get_profile("rv64gc")
    path = tmp_path / "qdq_overhead.json"
    path.write_text(json.dumps({"passes_revision": PASSES_REVISION,
                                "costs": {"float": {"k": 12.0}, "integer": {"k": 3.0}}}))
    assert measure_qdq_overhead([], prof, "spike", str(path), glue="float") == {"k": 12.0}
    assert measure_qdq_overhead([], get_profile("host"), "host", str(path)) == {}  # no passes
    with pytest.raises(ValueError, match="glue"):
        measure_qdq_overhead([], prof, "spike", str(path), glue="fixed")
    # a cache of the previous revision (one flat table, float glue) is never reused
    path.write_text(json.dumps({"passes_revision": 2, "costs": {"k": 12.0}}))
    assert measure_qdq_overhead([], prof, "spike", str(path), glue="float") == {}
    path.write_text('{"passes_revision": 3, "costs": {"k": 1')  # a torn write
    with caplog.at_level("WARNING"):
        assert measure_qdq_overhead([], prof, create_runner("spike"), str(path)) == {}
    assert "corrupt" in caplog.text and (tmp_path / "qdq_overhead.json.corrupt").exists()
    assert not path.exists()


def _tiny_table():
    from tvm_mpq.frontend.layers import LayerInfo

    conv = LayerInfo(0, "conv", "conv2d", (1, 4, 6, 6), (8, 4, 3, 3), (1, 8, 6, 6), (1, 1),
                     (1, 1), (1, 1), 1, True)
    dense = LayerInfo(1, "fc", "linear", (1, 8), (10, 8), (1, 10), has_bias=True)
    return [conv, dense]


@needs_tools
@pytest.mark.parametrize("profile", ["rv64gc_zbb", "rv32imc"])
def test_integer_glue_passes_are_measured(tmp_path, monkeypatch, profile):
    """The integer glue's passes: each a real run checked against numpy, the fp32 layer's
    priced in its graph context, cached per glue and context (switching never reuses)."""
    from tvm_mpq.measure.overhead import (
        FP32_SUFFIX,
        PASSES_REVISION,
        LayerContext,
        measure_qdq_overhead,
    )
    from tvm_mpq.schedules.workload import workload_from_layer
    from tvm_mpq.targets import get_profile

    prof, table = get_profile(profile), _tiny_table()
    conv_k, fc_k = (workload_from_layer(r).key() for r in table)
    path = str(tmp_path / "qdq_overhead.json")
    ctx = {"conv": LayerContext("layer", "clip", "clip", pooled=True),
           "fc": LayerContext("pool", "relu", output=True, pool_in=(1, 8, 2, 2))}
    counter = _Counter(monkeypatch)
    got = measure_qdq_overhead(table, prof, "spike", path, glue="integer", contexts=ctx)
    assert set(got) == {conv_k, fc_k, conv_k + FP32_SUFFIX, fc_k + FP32_SUFFIX}
    # requantize: > 4 instructions per output element (load, mul, shift, clamp, store)
    assert got[conv_k] > 4 * 8 * 6 * 6 and got[fc_k] > 0
    # the last layer made fp32 saves its float epilogue; a bias pass stays
    assert got[fc_k + FP32_SUFFIX] > 0
    if profile == "rv32imc":  # no FPU: every float boundary is a soft-float call
        assert got[conv_k + FP32_SUFFIX] > 10 * got[conv_k]
    n_cases = counter.cases
    assert n_cases > 0
    # cached: nothing runs again; another context of the same workload is measured
    assert measure_qdq_overhead(table, prof, "spike", path, glue="integer", contexts=ctx) == got
    assert counter.cases == n_cases
    other = measure_qdq_overhead(table, prof, "spike", path, glue="integer")  # default contexts
    assert counter.cases > n_cases and other[conv_k] == got[conv_k]  # same requantize
    assert other[conv_k + FP32_SUFFIX] != got[conv_k + FP32_SUFFIX]
    # the float glue's passes are its own numbers, measured on their own
    n_cases = counter.cases
    flt = measure_qdq_overhead(table, prof, "spike", path, glue="float")
    assert counter.cases > n_cases and flt[conv_k] != got[conv_k]
    with open(path) as f:
        saved = json.load(f)
    assert saved["passes_revision"] == PASSES_REVISION and set(saved["costs"]) == {"integer", "float"}


# ---- measure -------------------------------------------------------------------------------


@needs_tools
def test_measure_and_cache_hit(tmp_path, monkeypatch):
    db = MeasurementDB(tmp_path / "m.sqlite")
    counter = _Counter(monkeypatch)
    r = measure(DENSE, "bitserial", 2, 2, "rv64gc_zbb", "spike", db=db)
    assert r.ok, r.message
    assert r.instructions > 0 and r.cycles >= r.instructions and r.seconds is None
    assert r.macs == DENSE.macs and r.schedule == "default" and r.tvm_version and r.host
    assert counter.cases == 1
    assert db.get(r.key) == r

    _Counter(monkeypatch, fail=True)  # a second call must not run the simulator
    again = measure(DENSE, "bitserial", 2, 2, "rv64gc_zbb", "spike", db=db)
    assert again == r
    # deterministic: measuring afresh gives the same count
    counter = _Counter(monkeypatch)
    fresh = measure(DENSE, "bitserial", 2, 2, "rv64gc_zbb", "spike", db=db, force=True)
    assert counter.cases == 1 and fresh.instructions == r.instructions


@needs_tools
def test_measure_many_batches_and_keeps_order(tmp_path, monkeypatch):
    db = MeasurementDB(tmp_path / "m.sqlite")
    reqs = [(CONV, "int8", 8, 8), (DENSE, "unpack", 4, 8), (CONV, "bitserial", 1, 1),
            MeasureRequest(DENSE, "fp32", 8, 8), (CONV, "int8", 8, 8)]  # a duplicate
    counter = _Counter(monkeypatch)
    recs = measure_many(reqs, "rv64gc", "spike", db=db, chunk_size=3, progress=False)
    assert counter.calls == 2 and counter.cases == 4  # 4 distinct kernels in chunks of 3
    assert [(r.variant, r.w_bits) for r in recs] == [("int8", 8), ("unpack", 4), ("bitserial", 1),
                                                      ("fp32", 8), ("int8", 8)]
    assert all(r.ok for r in recs), [r.message for r in recs]
    assert recs[0] == recs[4] and db.count() == 4


@needs_tools
def test_wrong_result_recorded_as_failure(tmp_path, monkeypatch):
    db = MeasurementDB(tmp_path / "m.sqlite")
    real_ref = measure_mod.reference_output
    monkeypatch.setattr(measure_mod, "reference_output", lambda kd, x, w: real_ref(kd, x, w) + 1)
    r = measure(DENSE, "int8", 8, 8, "rv64gc", "spike", db=db)
    assert r.status == "wrong_result" and "mismatch" in r.message
    assert r.instructions is None and r.cycles is None and r.seconds is None
    stored = db.get(r.key)
    assert stored.status == "wrong_result" and stored.instructions is None
    monkeypatch.setattr(measure_mod, "reference_output", real_ref)
    _Counter(monkeypatch, fail=True)
    assert measure(DENSE, "int8", 8, 8, "rv64gc", "spike", db=db).status == "wrong_result"
    monkeypatch.undo()
    fixed = measure_many([(DENSE, "int8", 8, 8)], "rv64gc", "spike", db=db, retry_failed=True,
                         progress=False)[0]
    assert fixed.ok and fixed.instructions > 0 and db.get(r.key).ok


def test_unbuildable_kernel_recorded_as_build_error(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("cannot lower this")

    monkeypatch.setattr(measure_mod, "make_kernel", broken)
    db = MeasurementDB(tmp_path / "m.sqlite")
    (r,) = measure_many([(DENSE, "int8", 8, 8)], "host", "host", db=db, progress=False)
    assert r.status == "build_error" and "cannot lower this" in r.message
    assert r.instructions is None and r.seconds is None
    assert db.get(r.key).status == "build_error"


def test_host_backend_wall_time():
    r = measure(DENSE, "int8", 8, 8, "host", "host")
    assert r.ok, r.message
    assert r.seconds > 0 and r.seconds_std is not None and r.instructions is None
    assert r.profile == "host" and r.backend == "host"


def test_bad_requests():
    with pytest.raises(ValueError, match="unknown variant"):
        measure(DENSE, "int3", 8, 8)
    with pytest.raises(ValueError, match="w_bits=3"):
        measure(DENSE, "int8", 3, 8)
    with pytest.raises(ValueError, match="unknown backend"):
        measure(DENSE, "int8", 8, 8, "rv64gc", "verilator")
    with pytest.raises(ValueError, match="host profile only"):
        measure(DENSE, "int8", 8, 8, "rv64gc", "host")
    with pytest.raises(ValueError, match="unknown target profile"):
        measure(DENSE, "int8", 8, 8, "rv128", "spike")
    with pytest.raises(ValueError, match="lacks"):
        measure_request_json(json.dumps({"variant": "int8"}))
    with pytest.raises(ValueError, match="unknown request fields"):
        measure_request_json(json.dumps({"workload": DENSE.to_dict(), "variant": "int8",
                                         "w_bits": 8, "a_bits": 8, "colour": "red"}))
    with pytest.raises(ValueError, match="not valid JSON"):
        measure_request_json("{")


def test_missing_toolchain_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match=r"riscv64-unknown-elf-gcc.*setup\.sh"):
        measure(DENSE, "int8", 8, 8, "rv64gc", "spike", db=MeasurementDB(tmp_path / "m.sqlite"))
    # nothing is stored for an environment problem
    assert MeasurementDB(tmp_path / "m.sqlite").count() == 0


@needs_tools
def test_measure_request_json_roundtrip():
    req = {"workload": DENSE.to_dict(), "variant": "unpack", "w_bits": 2, "a_bits": 8,
           "profile": "rv64gc", "backend": "spike"}
    out = json.loads(measure_request_json(json.dumps(req)))
    assert out["status"] == "ok" and out["instructions"] > 0
    assert out["workload"] == DENSE.to_dict() and out["profile"] == "rv64gc"


# ---- resume after a killed process ---------------------------------------------------------

_CAMPAIGN = textwrap.dedent("""
    import sys
    from tvm_mpq.measure.campaign import measure_many
    from tvm_mpq.schedules import Conv2dWorkload
    reqs = [(Conv2dWorkload.make((1, 8, 6 + i, 6 + i), (8, 8, 3, 3), 1, 1), "int8", 8, 8)
            for i in range(12)]
    measure_many(reqs, "rv64gc", "spike", db=sys.argv[1], chunk_size=1, progress=False)
    print("CAMPAIGN DONE", flush=True)
""")


def _campaign_requests():
    return [(Conv2dWorkload.make((1, 8, 6 + i, 6 + i), (8, 8, 3, 3), 1, 1), "int8", 8, 8)
            for i in range(12)]


@needs_tools
def test_resume_after_killed_process(tmp_path, monkeypatch):
    path = tmp_path / "campaign.sqlite"
    MeasurementDB(path).close()  # create it so we can poll
    proc = subprocess.Popen([sys.executable, "-c", _CAMPAIGN, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        db = MeasurementDB(path)
        while db.count() < 2:  # kill once some, not all, records are in
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "campaign made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    survived = db.records()
    assert 2 <= len(survived) < 12
    assert all(r.ok and r.instructions > 0 for r in survived)

    counter = _Counter(monkeypatch)
    recs = measure_many(_campaign_requests(), "rv64gc", "spike", db=db, chunk_size=4,
                        progress=False)
    assert counter.cases == 12 - len(survived)  # only the missing ones are measured
    assert all(r.ok for r in recs) and db.count() == 12
    before = {r.key: r for r in survived}
    assert all(before[r.key] == r for r in recs if r.key in before)


# ---- CLI -----------------------------------------------------------------------------------


@needs_tools
def test_cli_json_output(tmp_path):
    cmd = [sys.executable, "-m", "tvm_mpq.cli", "measure", "conv2d", "--input", "1x8x6x6",
           "--out-channels", "8", "--kernel", "3", "--stride", "1", "--padding", "1",
           "--groups", "1", "--w-bits", "2", "--a-bits", "2", "--variant", "bitserial",
           "--profile", "rv64gc_zbb", "--backend", "spike", "--json", "--db",
           str(tmp_path / "m.sqlite")]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout)  # stdout is the JSON record only
    assert rec["status"] == "ok" and rec["instructions"] > 0
    assert rec["workload_key"] == CONV.key()
    assert MeasurementDB(tmp_path / "m.sqlite").count() == 1


@needs_tools
def test_cli_readable_line_and_failure_exit_code(tmp_path, monkeypatch, capfd):
    args = ["measure", "dense", "--input", "1x64", "--out-features", "8", "--w-bits", "4",
            "--a-bits", "4", "--variant", "unpack", "--profile", "rv64gc", "--db",
            str(tmp_path / "m.sqlite")]
    assert cli.main(args) == 0
    line = capfd.readouterr().out.strip()
    assert line.startswith(DENSE.key()) and "instructions" in line
    real_ref = measure_mod.reference_output
    monkeypatch.setattr(measure_mod, "reference_output", lambda kd, x, w: real_ref(kd, x, w) - 1)
    assert cli.main([*args, "--force", "--json"]) == 1
    rec = json.loads(capfd.readouterr().out)
    assert rec["status"] == "wrong_result" and rec["instructions"] is None


@pytest.mark.parametrize("argv, problem", [
    (["measure", "conv2d", "--input", "1x64x28", "--out-channels", "64", "--w-bits", "2",
      "--a-bits", "2", "--variant", "bitserial"], "--input: expected 4 positive integers"),
    (["measure", "conv2d", "--input", "1x64x28x28", "--out-channels", "64", "--w-bits", "3",
      "--a-bits", "2", "--variant", "bitserial"], "--w-bits: invalid choice: 3"),
    (["measure", "conv2d", "--input", "1x64x28x28", "--out-channels", "64", "--groups", "3",
      "--w-bits", "2", "--a-bits", "2", "--variant", "bitserial"], "does not divide"),
    (["measure", "conv2d", "--input", "1x8x4x4", "--out-channels", "8", "--kernel", "7",
      "--w-bits", "2", "--a-bits", "2", "--variant", "int8"], "larger than padded input"),
    (["measure", "dense", "--input", "1x256", "--out-features", "10", "--w-bits", "8",
      "--a-bits", "8", "--variant", "fp64"], "--variant: invalid choice"),
    (["measure", "dense", "--input", "1x256", "--out-features", "0", "--w-bits", "8",
      "--a-bits", "8", "--variant", "int8"], "--out-features: expected a positive integer"),
    (["measure", "dense", "--input", "1x256", "--out-features", "10", "--w-bits", "8",
      "--a-bits", "8", "--variant", "int8", "--profile", "rv64gc", "--backend", "host"],
     "host profile only"),
    (["measure", "dense", "--input", "1x256", "--w-bits", "8", "--a-bits", "8", "--variant",
      "int8"], "--out-features"),
    (["measure", "lstm"], "invalid choice: 'lstm'"),
])
def test_cli_bad_args(argv, problem, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert problem in capsys.readouterr().err


def test_cli_commands_and_registry(monkeypatch):
    # the command groups are registered statically, one module each
    assert list(cli.SUBCOMMANDS) == ["measure", "tune", "rpc"]
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == ["measure", "rpc", "tune"]
    calls = []

    def add_parser(sub):
        p = sub.add_parser("hello", help="test extension")
        p.set_defaults(func=lambda args: calls.append(args.command) or 0)

    monkeypatch.setitem(cli.SUBCOMMANDS, "hello", add_parser)
    assert cli.main(["hello"]) == 0 and calls == ["hello"]


# ---- tuning --------------------------------------------------------------------------------


@needs_tools
@pytest.mark.slow
def test_tuned_measurement(tmp_path):
    db = MeasurementDB(tmp_path / "m.sqlite")
    r = measure(DENSE, "bitserial", 2, 2, "rv64gc_zbb", "spike", db=db, tune_trials=4,
                work_dir=str(tmp_path / "tune"))
    assert r.ok, r.message
    assert r.schedule == "tuned4" and r.tune_trials == 4
    assert r.schedule_trace and len(r.schedule_hash) == 64 and r.instructions > 0
    assert db.get(r.key) == r
    default = measure(DENSE, "bitserial", 2, 2, "rv64gc_zbb", "spike", db=db)
    assert default.key != r.key and db.count() == 2


def test_schedule_tag():
    assert schedule_tag(0) == "default" and schedule_tag(64) == "tuned64"
    with pytest.raises(ValueError):
        schedule_tag(-1)


def test_database_refuses_other_kernel_revision(tmp_path):
    from tvm_mpq.schedules import KERNELS_REVISION

    path = tmp_path / "m.sqlite"
    with MeasurementDB(path) as db:
        db.put(_record())
    # the same revision reopens; a database of another revision is refused, not reused
    with MeasurementDB(path) as db:
        assert len(db) == 1
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE name='kernels_revision'", (str(KERNELS_REVISION - 1),))
    con.commit()
    con.close()
    with pytest.raises(RuntimeError, match="kernel revision"):
        MeasurementDB(path)


class _FlakyRunner(Runner):
    """Fails each kernel with ``messages`` (one per campaign), then measures 1000."""

    backend, unit = "spike", "instructions"

    def __init__(self, messages: list[tuple[str, str]]) -> None:
        self.messages, self.calls = list(messages), 0

    def check_tools(self, profile) -> None:
        pass

    def measure(self, requests, profile, settings, done) -> None:
        if not requests:
            return
        self.calls += 1
        recs = []
        for r in requests:
            req = {**r.to_dict(), "profile": profile.name, "backend": self.backend}
            if self.messages:
                status, msg = self.messages[0]
                recs.append(failed_record(req, status, msg))
            else:
                recs.append(MeasureRecord.from_dict({**failed_record(req, "run_error", "x").to_dict(),
                                                     "status": "ok", "message": "",
                                                     "instructions": 1000, "cycles": 1000}))
        if self.messages:
            self.messages.pop(0)
        done(recs)


def test_transient_failures_are_retried_a_bounded_number_of_times(tmp_path):
    """A killed simulator / lost server / wall-clock timeout is not the kernel's fault: it is
    not priced out and a later campaign measures it again, at most TRANSIENT_ATTEMPTS times;
    a failure of the kernel (trap, wrong result) stays."""
    from tvm_mpq.measure.database import TRANSIENT_ATTEMPTS, is_transient

    assert is_transient("run_error", "simulator killed by signal 9: ...")
    assert is_transient("timeout", "wall-clock timeout")
    assert is_transient("run_error", "lost server 127.0.0.1:9001 (key k) during the measurement")
    assert not is_transient("timeout", "instruction watchdog")
    assert not is_transient("run_error", "trap: illegal instruction at 0x80001234")
    assert not is_transient("wrong_result", "3 mismatching elements")
    wl = Conv2dWorkload.make((1, 8, 6, 6), (8, 8, 3, 3), 1, 1)
    req = [(wl, "int8", 8, 8)]
    db = MeasurementDB(tmp_path / "m.sqlite")
    killed = ("run_error", "simulator killed by signal 9: ")
    runner = _FlakyRunner([killed])
    rec = measure_many(req, "rv64gc", runner, db=db, progress=False)[0]
    assert rec.transient and rec.attempts == 1 and runner.calls == 1
    assert rec.kernel_key not in db.kernel_costs("rv64gc", "spike", "instructions")  # not inf
    rec = measure_many(req, "rv64gc", runner, db=db, progress=False)[0]  # resumed: tried again
    assert rec.ok and rec.instructions == 1000 and runner.calls == 2
    # always killed: tried TRANSIENT_ATTEMPTS times in all, then served from the database
    db2 = MeasurementDB(tmp_path / "m2.sqlite")
    runner = _FlakyRunner([killed] * 10)
    for i in range(TRANSIENT_ATTEMPTS + 2):
        rec = measure_many(req, "rv64gc", runner, db=db2, progress=False)[0]
        assert rec.transient and rec.attempts == min(i + 1, TRANSIENT_ATTEMPTS)
    assert runner.calls == TRANSIENT_ATTEMPTS
    # a kernel's own failure is cached and priced out at once
    db3 = MeasurementDB(tmp_path / "m3.sqlite")
    runner = _FlakyRunner([("run_error", "trap: illegal instruction")] * 3)
    for _ in range(2):
        rec = measure_many(req, "rv64gc", runner, db=db3, progress=False)[0]
    assert runner.calls == 1 and not rec.transient
    assert db3.kernel_costs("rv64gc", "spike", "instructions")[rec.kernel_key] == math.inf
    # ... until the user asks for a retry of every failed record (tvm-mpq tune --retry-failed)
    ok = measure_many([(wl, "int8", 4, 4)], "rv64gc", _FlakyRunner([]), db=db3, progress=False)
    assert db3.forget_failed("rv64gc", "spike") == 1 and db3.forget_failed() == 0
    assert [(r.key, r.instructions) for r in db3.records()] == [(ok[0].key, 1000)]
    rec = measure_many(req, "rv64gc", runner, db=db3, progress=False)[0]
    assert runner.calls == 2 and rec.status == "run_error"  # measured again (and trapped again)
