"""tvm_mpq.tune() end to end on a tiny net (real Spike measurements), resume and reload."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

import tvm_mpq

sys.path.insert(0, os.path.dirname(__file__))
from test_compile import SmallNet  # noqa: E402


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    torch.manual_seed(0)
    m = SmallNet().eval()
    x = torch.randn(96, 1, 12, 12)
    y = m(x).argmax(1)  # labels: the float model's own predictions (fp32 accuracy 100%)
    wd = str(tmp_path_factory.mktemp("tune"))
    kw = dict(calib_data=x[:32], eval_data=(x, y), workdir=wd, bits=[(8, 8), (2, 2)],
              variants=["int8", "bitserial"], pop_size=8, generations=4, active_rounds=1,
              prior_workloads=2, progress=False)
    res = tvm_mpq.tune(m, x[:1], "riscv", **kw)
    return m, x, kw, res


def test_result_is_measured(tuned):
    _, x, _, res = tuned
    assert res.profile == "rv64gc_zbb" and res.cost_unit == "instructions"
    assert res.pareto, "empty front"
    for p in [*res.pareto, *res.baselines.values()]:
        assert p.measured_cost is not None and p.measured_cost > 0  # from real Spike runs
        assert 0.0 <= p.accuracy <= 1.0
    # fp32 keeps the float model's predictions exactly
    assert res.baselines["fp32"].accuracy == 1.0
    # the end-to-end standalone artifact was run on Spike for the baselines
    assert res.baselines["int8"].model_cost > res.baselines["int8"].measured_cost
    assert res.baselines["int8"].compiled_accuracy is not None
    for p in res.baselines.values():  # and its exact memory figures recorded
        mem = p.memory
        assert mem["arena_bytes"] >= mem["arena_lower_bound"] > 0 and mem["stack_bytes"] > 0
        assert p.ram_bytes == mem["ram_bytes"] >= mem["arena_bytes"] + mem["stack_bytes"]
        assert p.flash_bytes == mem["flash_bytes"] >= mem["code_bytes"] + mem["weight_bytes"]
        assert mem["weight_bytes"] >= p.size_bytes  # the search's size is a lower bound
    assert "RAM (KiB)" in res.table() and f"| {res.baselines['w8a8'].memory['ram_bytes']:,} |" \
        in __import__("tvm_mpq.tuner.report", fromlist=["x"]).memory_table(res)
    # the drop's standard error from per-image outcomes: fp32 is right on every image (the
    # labels are its predictions), so for compiled accuracy a it is sqrt(a (1 - a) / (n - 1))
    for p in res.baselines.values():
        a, n = p.compiled_accuracy, len(x)
        assert p.drop_se == pytest.approx(np.sqrt(a * (1 - a) / (n - 1)), abs=1e-12)
    # "w8a8" takes each layer's fastest measured 8-bit kernel, so it can only beat the int8 one
    assert res.baselines["w8a8"].measured_cost <= res.baselines["int8"].measured_cost
    if res.best is not None:
        assert res.best.meets_constraints and res.best.drop * 100 <= 1.0 + 1e-9
        bu = res.baselines["best_uniform"]
        src = min(("fp32", "w8a8"), key=lambda k: res.baselines[k].model_cost)
        assert bu.plan == res.baselines[src].plan and bu.model_cost == res.baselines[src].model_cost
        ratios = [res.best.model_cost / res.baselines[k].model_cost for k in ("best_uniform", "int8")]
        assert (f"whole model {res.best.model_cost:.4g} instructions ({ratios[0]:.3f}x best "
                f"uniform = {src}, {ratios[1]:.3f}x uniform int8") in res.message
    else:
        assert "no plan meets" in res.message


def test_prior_workloads_are_measured(tuned):
    """prior_workloads: generic shapes measured next to the model's own, for the cost model."""
    from tvm_mpq.costmodel.prior import generic_workloads
    from tvm_mpq.measure.database import MeasurementDB

    _, _, kw, _ = tuned
    db = MeasurementDB(os.path.join(kw["workdir"], "measurements.sqlite"))
    keys = {r.workload_key for r in db.records("rv64gc_zbb", "spike", status="ok")}
    assert {w.key() for w in generic_workloads(2, seed=0)} <= keys


def test_layer_passes_are_measured(tuned):
    """Every layer pays the passes the compiler adds around its kernel with the run's glue
    (integer by default): the requantize epilogue when quantized, the bias pass and the float
    boundaries when fp32 (measured on Spike in the layer's graph context, cached in the
    workdir per glue)."""
    from tvm_mpq.frontend.importer import import_model
    from tvm_mpq.measure.overhead import FP32_SUFFIX
    from tvm_mpq.schedules.workload import workload_from_layer
    from tvm_mpq.tuner.contexts import layer_contexts

    m, x, kw, res = tuned
    assert res.settings["glue"] == "integer" and res.glue == "integer"
    with open(os.path.join(kw["workdir"], "stages", "measure.json")) as f:
        overhead = json.load(f)["overhead"]
    with open(os.path.join(kw["workdir"], "qdq_overhead.json")) as f:
        costs = json.load(f)["costs"]
    assert set(costs) == {"integer"}  # the float glue was never asked for
    cached = costs["integer"]
    table = import_model(tvm_mpq.fold_bn(m), x[:1], warn=False).table
    ctx = layer_contexts(m, x[:1])
    for r in table:
        key = workload_from_layer(r).key()
        assert overhead[key] > 0
        assert overhead[key + FP32_SUFFIX] == cached[f"{key}{FP32_SUFFIX}@{ctx[r.name].tag()}"]
    with open(os.path.join(kw["workdir"], "result", "summary.md")) as f:
        assert "**integer** glue" in f.read()


def test_resume_uses_database_and_checkpoints(tuned, monkeypatch):
    m, x, kw, res = tuned
    import tvm_mpq.measure.baremetal as bm

    def boom(*a, **k):
        raise AssertionError("re-run measured a kernel again instead of using the database")

    monkeypatch.setattr(bm, "run_kernels", boom)
    res2 = tvm_mpq.tune(m, x[:1], "riscv", **{**kw, "final_measure": False})
    assert [p.plan for p in res2.pareto] == [p.plan for p in res.pareto]


def test_memory_budgets_choose_a_plan_that_fits(tuned, tmp_path):
    """ram_budget / flash_budget: candidates are built and run, cheapest first, until one
    fits; the figures are the artifact's own. Resumed from a copy of the run (only the
    choice and the final stage run again)."""
    m, x, kw, res = tuned
    wd = str(tmp_path / "wd")
    shutil.copytree(kw["workdir"], wd)
    feasible = sorted([p for p in res.pareto if p.meets_constraints], key=lambda p: p.cost)
    if len(feasible) < 2:
        pytest.skip("needs two front plans within the accuracy budget")
    base = {**kw, "workdir": wd, "compiled_eval": False}
    loose = tvm_mpq.tune(m, x[:1], "riscv", **base, ram_budget=1e9)
    assert loose.best.plan == res.best.plan and loose.best.ram_bytes > 0
    checked = [p for p in loose.pareto if p.memory]
    assert [p.plan for p in checked] == [res.best.plan]  # only the chosen one was built
    # a RAM budget one byte under the cheapest plan's: the next plan that fits is chosen
    first = checked[0]
    tight = tvm_mpq.tune(m, x[:1], "riscv", **base, ram_budget=first.ram_bytes - 1)
    rejected = next(p for p in tight.pareto if p.plan == first.plan)
    assert not rejected.meets_constraints and "does not fit: RAM" in rejected.notes
    if tight.best is not None:
        assert tight.best.plan != first.plan and tight.best.ram_bytes < first.ram_bytes
        assert tight.best.cost >= first.cost
    else:
        assert "RAM <=" in tight.message
    # a flash budget below any plan's weights: the search already knows none fits
    none = tvm_mpq.tune(m, x[:1], "riscv", **base, flash_budget=64)
    assert none.best is None and "flash <= 64 B" in none.message


def test_save_load_report(tuned, tmp_path):
    _, _, kw, res = tuned
    # (the workdir's result.json may be a later resumed run's, without the final measurement)
    res.save(str(tmp_path / "saved"))
    loaded = tvm_mpq.load_result(str(tmp_path / "saved"))
    assert loaded.message == res.message
    assert loaded.best == res.best and loaded.baselines == res.baselines
    assert [p.plan for p in tvm_mpq.load_result(kw["workdir"]).pareto] == [p.plan for p in res.pareto]
    assert [p.plan for p in loaded.pareto] == [p.plan for p in res.pareto]
    summary = loaded.report(str(tmp_path))
    assert os.path.exists(os.path.join(tmp_path, "pareto.png"))
    text = open(summary).read()
    assert "| int8 |" in text and "| fp32 |" in text
    with open(os.path.join(kw["workdir"], "result", "result.json")) as f:
        assert json.load(f)["profile"] == "rv64gc_zbb"
    cm = loaded.compile(loaded.pareto[0].plan, "host")
    assert cm(torch.randn(1, 1, 12, 12)).shape == (1, 10)
    # the firmware form (codes in, codes out) equals its torch reference bit for bit
    w8 = loaded.baselines["int8"].plan
    cmi = loaded.compile(w8, "host", integer_io=True)
    assert cmi.integer_io and cmi.glue == "integer"
    codes = np.random.default_rng(0).integers(0, 256, (1, 1, 12, 12), dtype=np.uint8)
    with torch.no_grad():
        want = loaded.reference(cmi)(torch.from_numpy(codes)).numpy()
    np.testing.assert_array_equal(cmi(codes), want)
    with pytest.raises(ValueError, match="needs glue='integer'"):
        loaded.compile(w8, "host", glue="float", integer_io=True)


def test_stale_cost_model_checkpoint_is_refitted(tuned, tmp_path):
    """A workdir from an older version (cost model of another feature schema) resumes: the
    model is refitted from the database instead of failing the load."""
    m, x, kw, _ = tuned
    wd = str(tmp_path / "wd")
    shutil.copytree(kw["workdir"], wd)
    cm_path = os.path.join(wd, "search", "round0", "costmodel.json")
    with open(cm_path) as f:
        saved = json.load(f)
    saved["feature_schema_version"] -= 1
    with open(cm_path, "w") as f:
        json.dump(saved, f)
    # and a sensitivity table computed on another subset is recomputed (the old one kept)
    sens_path = os.path.join(wd, "sensitivity.json")
    with open(sens_path) as f:
        sens = json.load(f)
    n_eval = sens["meta"]["n_eval"]
    sens["meta"]["n_eval"] = n_eval // 2
    with open(sens_path, "w") as f:
        json.dump(sens, f)
    res = tvm_mpq.tune(m, x[:1], "riscv", **{**kw, "workdir": wd, "final_measure": False})
    assert res.pareto
    assert os.path.exists(sens_path + ".old")
    with open(sens_path) as f:
        assert json.load(f)["meta"]["n_eval"] == n_eval
    with open(cm_path) as f:
        assert json.load(f)["feature_schema_version"] == saved["feature_schema_version"] + 1


def test_workdir_of_older_kernel_revision_starts_over(tuned, tmp_path):
    """A workdir measured with other kernel definitions: its database and search checkpoints
    are kept aside (nothing lost) and the campaign runs again with the current kernels."""
    import sqlite3

    from tvm_mpq.schedules import KERNELS_REVISION

    m, x, kw, _ = tuned
    wd = str(tmp_path / "wd")
    shutil.copytree(kw["workdir"], wd)
    db = os.path.join(wd, "measurements.sqlite")
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value=? WHERE name='kernels_revision'", (str(KERNELS_REVISION - 1),))
    con.commit()
    con.close()
    res = tvm_mpq.tune(m, x[:1], "riscv", **{**kw, "workdir": wd, "final_measure": False})
    assert res.pareto
    old = f"{db}.rev{KERNELS_REVISION - 1}"
    assert os.path.exists(old) and os.path.isdir(os.path.join(wd, f"search.rev{KERNELS_REVISION - 1}"))
    from tvm_mpq.measure.database import MeasurementDB

    assert MeasurementDB(db).count() > 0  # measured again, current revision


def test_bad_target_and_missing_eval():
    m = SmallNet().eval()
    with pytest.raises(ValueError, match="unknown target"):
        tvm_mpq.tune(m, torch.randn(1, 1, 12, 12), "arm", calib_data=torch.randn(4, 1, 12, 12),
                     eval_data=(torch.randn(4, 1, 12, 12), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="eval_data"):
        tvm_mpq.tune(m, torch.randn(1, 1, 12, 12), "riscv", calib_data=torch.randn(4, 1, 12, 12))


def test_failed_kernel_is_never_picked(tmp_path):
    """A kernel whose measurement failed (here: a wrong result) costs FAILED_COST in the
    search, so the problem picks another variant for that bit-width."""
    from tvm_mpq.costmodel.query import CostQuery
    from tvm_mpq.measure.database import MeasurementDB, MeasureRecord
    from tvm_mpq.schedules import Conv2dWorkload
    from tvm_mpq.tuner.costs import FAILED_COST, MeasuredFirst

    wl = Conv2dWorkload.make((1, 8, 1, 1), (48, 8, 3, 3), 1, 1)
    db = MeasurementDB(str(tmp_path / "m.sqlite"))
    base = dict(profile="rv64gc", backend="spike", workload_key=wl.key(), w_bits=8, a_bits=8,
                schedule="default", workload=wl.to_dict(), macs=wl.macs)
    db.put(MeasureRecord(**base, variant="swar", status="wrong_result",
                         message="48 mismatching elements"))
    db.put(MeasureRecord(**base, variant="int8", status="ok", instructions=50_000, cycles=50_000))
    measured = db.kernel_costs("rv64gc", "spike", "instructions")
    qs = [CostQuery(wl, v, 8, 8, "rv64gc") for v in ("swar", "int8")]
    assert measured[qs[0].key()] == float("inf") and measured[qs[1].key()] == 50_000

    def model(queries):  # a cost model that would pick swar
        return np.asarray([1_000.0 if q.variant == "swar" else 9e9 for q in queries])

    cost = MeasuredFirst(model, measured, {})(qs)
    assert cost.tolist() == [FAILED_COST, 50_000]


# ---------------------------------------------------------------------- stages: resume, invalidation
STAGE_NAMES = ["import", "sensitivity", "measure", "search", "cost model report", "refine",
               "repair", "price", "beacons", "final"]


def _count_runs(monkeypatch, fail: str | None = None) -> list[str]:
    """Record the stages that run (instead of loading); ``fail``: that stage raises."""
    from tvm_mpq.tuner.stages import STAGES

    ran: list[str] = []
    for cls in STAGES:
        def run(self, state, _orig=cls.run):
            ran.append(self.name)
            if self.name == fail:
                raise RuntimeError(f"killed in {fail}")
            return _orig(self, state)

        monkeypatch.setattr(cls, "run", run)
    return ran


def _same(a, b) -> None:
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("timings")
    assert da == db


@pytest.fixture(scope="module")
def finished(tuned, tmp_path_factory):
    """A workdir whose every stage checkpoint is valid for ``kw`` (no final measurement)."""
    m, x, kw, _ = tuned
    wd = str(tmp_path_factory.mktemp("finished"))
    shutil.copytree(kw["workdir"], wd, dirs_exist_ok=True)
    kw = {**kw, "workdir": wd, "final_measure": False}
    return m, x, kw, tvm_mpq.tune(m, x[:1], "riscv", **kw)


def _copy(finished, tmp_path) -> dict:
    _, _, kw, _ = finished
    wd = str(tmp_path / "wd")
    shutil.copytree(kw["workdir"], wd)
    return {**kw, "workdir": wd}


def test_finished_run_loads_every_stage(finished, tmp_path, monkeypatch):
    """Nothing is recomputed on a finished workdir, also when the same settings come as a
    TuneConfig; the result records the whole config."""
    m, x, _, res = finished
    kw = _copy(finished, tmp_path)
    ran = _count_runs(monkeypatch)
    settings = {k: v for k, v in kw.items() if k not in ("calib_data", "eval_data", "workdir",
                                                          "progress")}
    cfg = tvm_mpq.TuneConfig.from_kwargs(**settings)
    res2 = tvm_mpq.tune(m, x[:1], "riscv", calib_data=kw["calib_data"], eval_data=kw["eval_data"],
                        workdir=kw["workdir"], progress=False, config=cfg, pop_size=kw["pop_size"])
    assert ran == []
    _same(res, res2)
    # (the result records the defaults made concrete: NSGA-II's dnas_cost is "measured")
    assert res.settings == {**cfg.replace(dnas_cost="measured").to_dict(),
                            "measured_kernels": res.settings["measured_kernels"]}
    with pytest.raises(ValueError, match="pop_size"):
        tvm_mpq.tune(m, x[:1], "riscv", calib_data=kw["calib_data"], eval_data=kw["eval_data"],
                     workdir=kw["workdir"], config=cfg, pop_size=kw["pop_size"] + 1)


@pytest.mark.parametrize("k", range(len(STAGE_NAMES) - 1))
def test_resume_after_each_stage(finished, tmp_path, monkeypatch, k):
    """Killed in stage k+1: the rerun loads stages 0..k, computes the rest, same result."""
    from tvm_mpq.tuner.checkpoint import Manifest

    m, x, _, res = finished
    kw = _copy(finished, tmp_path)
    Manifest(kw["workdir"]).forget(STAGE_NAMES[k + 1:])  # their checkpoints never written
    ran = _count_runs(monkeypatch, fail=STAGE_NAMES[k + 1])
    with pytest.raises(RuntimeError, match="killed"):
        tvm_mpq.tune(m, x[:1], "riscv", **kw)
    assert ran == [STAGE_NAMES[k + 1]]  # stages 0..k were loaded, not recomputed
    monkeypatch.undo()
    ran = _count_runs(monkeypatch)
    _same(res, tvm_mpq.tune(m, x[:1], "riscv", **kw))
    assert ran == STAGE_NAMES[k + 1:]


def test_changed_weights_or_data_invalidate_their_stages(finished, tmp_path, monkeypatch):
    """New weights or evaluation data: the import and the measurements are kept, sensitivity
    and every stage after it recomputed (a stale sensitivity.json used to be reused);
    training data that no stage uses (no QAT) changes nothing."""
    import copy

    m, x, _, res = finished
    kw = _copy(finished, tmp_path)
    ran = _count_runs(monkeypatch)
    tvm_mpq.tune(m, x[:1], "riscv", **{**kw, "train_data": (x, x[:, 0, 0, 0].long())})
    assert ran == []
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        next(m2.parameters()).mul_(1.5)
    sens_before = open(os.path.join(kw["workdir"], "sensitivity.json")).read()
    tvm_mpq.tune(m2, x[:1], "riscv", **kw)
    assert ran == STAGE_NAMES[1:2] + STAGE_NAMES[3:]  # not import, not measure
    assert open(os.path.join(kw["workdir"], "sensitivity.json")).read() != sens_before
    ran.clear()
    ex, ey = kw["eval_data"]
    tvm_mpq.tune(m2, x[:1], "riscv", **{**kw, "eval_data": (ex, (ey + 1) % 10)})
    assert ran == STAGE_NAMES[1:2] + STAGE_NAMES[3:]


def test_retry_failed_measures_again_and_searches_again(finished, tmp_path, monkeypatch):
    """tvm-mpq tune --retry-failed: a kernel that failed for good is measured again, and every
    stage built on the records (measure on) is recomputed; import and sensitivity are kept."""
    from tvm_mpq.cli.tune import forget_failed_records
    from tvm_mpq.measure.database import MeasurementDB, MeasureRecord

    m, x, _, res = finished
    kw = _copy(finished, tmp_path)
    db = MeasurementDB(os.path.join(kw["workdir"], "measurements.sqlite"))
    victim = next(r for r in db.records() if r.ok and r.variant == "int8")
    db.put(MeasureRecord.from_dict({**victim.to_dict(), "status": "run_error",
                                    "message": "trap: illegal instruction", "instructions": None,
                                    "cycles": None}))
    ran = _count_runs(monkeypatch)
    forget_failed_records(kw["workdir"])
    assert db.get(victim.key) is None
    _same(res, tvm_mpq.tune(m, x[:1], "riscv", **kw))
    assert ran == STAGE_NAMES[2:]
    assert db.get(victim.key).instructions == victim.instructions


def test_corrupt_checkpoints_are_set_aside(finished, tmp_path, monkeypatch):
    """An unreadable checkpoint is kept as .corrupt and its stage recomputed (no bare
    JSONDecodeError); the result is unchanged."""
    m, x, _, res = finished
    kw = _copy(finished, tmp_path)
    for path in ("sensitivity.json", "stages/price.json"):
        with open(os.path.join(kw["workdir"], path), "w") as f:
            f.write('{"truncated": ')
    ran = _count_runs(monkeypatch)
    _same(res, tvm_mpq.tune(m, x[:1], "riscv", **kw))
    assert ran == ["sensitivity", "price"]
    assert os.path.exists(os.path.join(kw["workdir"], "stages", "price.json.corrupt"))
    with open(os.path.join(kw["workdir"], "result", "result.json"), "w") as f:
        f.write("not json")
    with pytest.raises(ValueError, match="result.json"):
        tvm_mpq.load_result(kw["workdir"])


def test_layer_contexts_read_the_graph():
    """Which passes an fp32 layer's boundaries cost depends on its neighbours in the graph."""
    from tvm_mpq.measure.overhead import LayerContext
    from tvm_mpq.tuner.contexts import layer_contexts

    ctx = layer_contexts(SmallNet().eval(), torch.randn(1, 1, 12, 12))
    assert ctx == {"stem.0": LayerContext("input", None, "relu"),  # reads the model input
                   "dw.0": LayerContext("layer", "relu", "clip"),  # ReLU6 after it
                   "pw.0": LayerContext("shared"),  # its input also feeds the residual add
                   "fc": LayerContext("codes", output=True)}  # pooled add; the output
    assert ctx["dw.0"].tag() == "layer+relu/clip"

    class Pooled(torch.nn.Module):  # conv -> relu -> global pooling -> linear
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    ctx = layer_contexts(Pooled().eval(), torch.randn(1, 1, 6, 6))
    assert ctx == {"conv": LayerContext("input", None, "relu", pooled=True),
                   "fc": LayerContext("pool", "relu", output=True, pool_in=(1, 4, 4, 4))}
    assert ctx["fc"].tag() == "pool(1,4,4,4)+relu/-/out"


def test_glue_copies_agree():
    """The glue names the config and the CLI repeat (to import no TVM) are the compiler's."""
    from tvm_mpq.cli import tune as cli_tune
    from tvm_mpq.compiler.emit import GLUES
    from tvm_mpq.tuner.config import GLUES as CONFIG_GLUES

    assert CONFIG_GLUES == cli_tune.GLUES == GLUES


def _fingerprints(cfg, model, x):
    from tvm_mpq.measure.runner import create_runner
    from tvm_mpq.targets import get_profile
    from tvm_mpq.tuner.stages import default_stages
    from tvm_mpq.tuner.state import TuneState

    state = TuneState(model, (x[:1],), cfg, get_profile("rv64gc_zbb"), create_runner("spike"),
                      "unused", x[:4], x, x.sum((1, 2, 3)).gt(0).long())
    for stage in default_stages():
        state.fingerprints[stage.name] = stage.fingerprint(state)
    return state.fingerprints


def test_example_batch_is_cut_to_one_sample(tmp_path):
    """Costs are per inference of one sample: an example batch of 4 gives the state (and so
    the imported shapes, the measured kernels and every fingerprint) of its first sample."""
    from tvm_mpq.tuner.stages import default_stages
    from tvm_mpq.tuner.state import TuneState

    torch.manual_seed(0)
    m, x = SmallNet().eval(), torch.randn(8, 1, 12, 12)
    y = torch.zeros(8, dtype=torch.long)
    prints = []
    for ex in (x[:4], x[:1]):
        st = TuneState.create(m, ex, "riscv", tvm_mpq.TuneConfig(), calib_data=x,
                              eval_data=(x, y), workdir=str(tmp_path), progress=False)
        assert st.example_inputs[0].shape == (1, 1, 12, 12)
        for stage in default_stages():
            st.fingerprints[stage.name] = stage.fingerprint(st)
        prints.append(st.fingerprints)
    assert prints[0] == prints[1]


def test_glue_is_in_the_fingerprints():
    """A workdir tuned with the other glue (or before the setting existed) re-prices,
    re-evaluates and re-compiles: every stage from the measurement on; the import and the
    sensitivity proxy (one layer quantized: the same for both glues) are kept."""
    torch.manual_seed(0)
    m, x = SmallNet().eval(), torch.randn(8, 1, 12, 12)
    a = _fingerprints(tvm_mpq.TuneConfig(), m, x)
    b = _fingerprints(tvm_mpq.TuneConfig.from_kwargs(glue="float"), m, x)
    same = {k for k in a if a[k] == b[k]}
    assert same == {"import", "sensitivity"}
    assert {"measure", "search", "refine", "repair", "price", "beacons", "final"} <= set(a) - same
    assert _fingerprints(tvm_mpq.TuneConfig(), m, x) == a  # deterministic


def test_state_reference_follows_the_glue():
    """The torch accuracy of a plan is the glue's reference: the integer-only one for the
    integer glue, the float fake-quant otherwise."""
    from tvm_mpq.measure.runner import create_runner
    from tvm_mpq.quant.fakequant import QuantConv2d
    from tvm_mpq.quant.intref import IntegerReference
    from tvm_mpq.targets import get_profile
    from tvm_mpq.tuner.state import TuneState

    torch.manual_seed(0)
    m, x = SmallNet().eval(), torch.randn(40, 1, 12, 12)
    y = m(x).argmax(1)
    plan = tvm_mpq.QuantPlan.uniform(m, w_bits=8, a_bits=8)
    accs = {}
    for glue in ("integer", "float"):
        st = TuneState(m, (x[:1],), tvm_mpq.TuneConfig.from_kwargs(glue=glue), get_profile("host"),
                       create_runner("host"), "unused", x[:32], x, y)
        ref = st.forward(plan)
        if glue == "integer":
            assert isinstance(ref, IntegerReference)
        else:
            assert any(isinstance(mod, QuantConv2d) for mod in ref.modules())
        accs[glue] = st.plan_accuracy(plan)
        assert 0.5 <= accs[glue] <= 1.0


def test_minimal_call_with_a_custom_metric(tmp_path):
    """tune(model, target=, calib_data=, eval_fn=): no example input (the first calibration
    sample), no labels (label-free KL sensitivity on the calibration inputs), a metric that is
    not a classifier's; the user's model keeps its training mode."""
    torch.manual_seed(0)
    m = SmallNet().train()
    x = torch.randn(64, 1, 12, 12)
    with torch.no_grad():
        ref = m.eval()(x)
    m.train()
    calls = []

    def fidelity(forward) -> float:  # 1 - relative error of the output vs fp32
        with torch.no_grad():
            out = torch.as_tensor(forward(x))
        calls.append(1)
        return float(1 - (out - ref).norm() / ref.norm())

    res = tvm_mpq.tune(m, target="riscv", calib_data=x, eval_fn=fidelity,
                       workdir=str(tmp_path), bits=[(8, 8), (4, 4)], variants=["int8", "swar"],
                       pop_size=8, generations=3, active_rounds=0, max_accuracy_drop=5.0,
                       progress=False)
    assert m.training and calls
    sens = json.load(open(tmp_path / "sensitivity.json"))
    assert sens["meta"]["n_eval"] == 64  # the calibration inputs
    assert all(e["loss_delta"] is None and e["kl"] is not None
               for layer in sens["entries"].values() for e in layer.values())
    assert res.fp32_accuracy == pytest.approx(1.0, abs=1e-6)
    assert res.best is not None and res.best.drop * 100 <= 5.0 + 1e-9
    assert res.best.accuracy == pytest.approx(1 - res.best.drop, abs=1e-6)


class _Regressor(torch.nn.Module):
    """Not a classifier: one value per sample (e.g. a quality score)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_minimal_call_on_a_regression_model_with_a_loss(tmp_path):
    """A regression model tuned by its mean squared error (metric_mode="min"): the
    sensitivity is the relative squared error of the output (KL means nothing for one value
    per sample), the budget is the loss's increase x100, and the scores are minus the loss."""
    torch.manual_seed(0)
    m = _Regressor().eval()
    x = torch.randn(48, 1, 10, 10)
    with torch.no_grad():
        target = m(x) + 0.05 * torch.randn(48, 1)

    def mse(forward) -> float:
        with torch.no_grad():
            return float((torch.as_tensor(forward(x)) - target).pow(2).mean())

    res = tvm_mpq.tune(m, target="riscv", calib_data=x, eval_fn=mse, metric_mode="min",
                       workdir=str(tmp_path), bits=[(8, 8), (4, 4)], variants=["int8"],
                       pop_size=8, generations=3, active_rounds=0, max_accuracy_drop=0.5,
                       progress=False)
    sens = json.load(open(tmp_path / "sensitivity.json"))
    assert sens["meta"]["label_free"] == "rel_mse"
    assert all(e["rel_mse"] > 0 for layer in sens["entries"].values() for e in layer.values())
    assert res.fp32_accuracy == pytest.approx(-mse(m), rel=1e-5)
    assert res.best is not None and res.best.drop * 100 <= 0.5 + 1e-9
    assert res.best.accuracy == pytest.approx(res.fp32_accuracy - res.best.drop, abs=1e-9)
    assert "fp32 metric (eval_fn, lower is better" in open(tmp_path / "result" / "summary.md").read()
    with pytest.raises(ValueError, match="metric_mode='min' is for an eval_fn"):
        tvm_mpq.tune(m, target="riscv", calib_data=x, eval_data=(x, torch.zeros(48).long()),
                     metric_mode="min", workdir=str(tmp_path / "b"), progress=False)


USER_MODULE = '''
import torch.nn as nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def agreement(forward, x):
    """Not a classifier metric: 1 - relative error against the fp32 output."""
    import torch
    ref = make_ref()(x)
    out = torch.as_tensor(forward(x))
    return float(1 - (out - ref).norm() / ref.norm())


def make_ref():
    import torch
    m = make()
    m.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return m.eval().requires_grad_(False)
'''


def test_cli_tunes_a_user_model_on_user_data(tmp_path, monkeypatch, capsys):
    """`tvm-mpq tune --model pkg.mod:factory --weights sd.pt --data d.npz --metric pkg.mod:fn`
    on a 3-channel model of the user's; bad combinations get one message each."""
    from tvm_mpq.cli.app import main

    torch.manual_seed(0)
    weights = tmp_path / "sd.pt"
    (tmp_path / "usermodel_t.py").write_text(USER_MODULE + f"\nWEIGHTS = {str(weights)!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermodel_t

    torch.save(usermodel_t.make().state_dict(), weights)
    x = np.random.default_rng(0).standard_normal((48, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", calib=x[:16], eval_x=x)
    np.savez(tmp_path / "labelled.npz", calib=x[:16], eval_x=x, eval_y=np.zeros(48, np.int64))
    base = ["tune", "--model", "usermodel_t:make", "--weights", str(weights)]
    for extra, msg in ((["--data", str(tmp_path / "d.npz")], "no 'eval_y' labels: give --metric"),
                       (["--data", str(tmp_path / "labelled.npz"), "--metric", "usermodel_t:agreement"],
                        "--metric replaces the labels"),
                       (["--metric", "usermodel_t:agreement"], "--metric goes with --data"),
                       (["--data", str(tmp_path / "d.npz"), "--metric", "usermodel_t:nope"],
                        "has no 'nope'")):
        assert main([*base, *extra, "--out", str(tmp_path / "bad")]) == 2
        assert msg in capsys.readouterr().err
    wd = tmp_path / "run"
    assert main([*base, "--data", str(tmp_path / "d.npz"), "--metric", "usermodel_t:agreement",
                 "--target", "riscv64-zbb", "--bits", "w8a8,w4a4", "--pop-size", "8",
                 "--generations", "3", "--active-rounds", "0", "--repair-plans", "0",
                 "--max-accuracy-drop", "5", "--no-final", "--out", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "usermodel_t:agreement" in out and "best plan" in out
    res = tvm_mpq.load_result(str(wd))
    assert res.best is not None and res.fp32_accuracy == pytest.approx(1.0, abs=1e-6)
    assert tvm_mpq.load_result(str(wd)).settings["bits"] == [[8, 8], [4, 4]]
    # the same model as a torch.export file (no Python class needed), labelled data; the
    # kernels measured above are reused from the workdir's database
    ep = torch.export.export(usermodel_t.make_ref(), (torch.as_tensor(x[:2]),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, tmp_path / "user.pt2")
    assert main(["tune", "--model", str(tmp_path / "user.pt2"), "--data",
                 str(tmp_path / "labelled.npz"), "--bits", "w8a8,w4a4", "--pop-size", "8",
                 "--generations", "3", "--active-rounds", "0", "--repair-plans", "0",
                 "--max-accuracy-drop", "5", "--no-final", "--out", str(wd)]) == 0
    res2 = tvm_mpq.load_result(str(wd))
    assert res2.best is not None and set(res2.best.plan.layers()) == set(res.best.plan.layers())
    assert "user.pt2" in capsys.readouterr().out


@pytest.mark.slow
def test_tune_trials_tune_every_kernel_alike_and_compiles_use_them(tmp_path):
    """tune(tune_trials=N): every measured kernel (the baselines' included) is tuned with the
    same MetaSchedule budget, the search prices the tuned records, and the result compiles
    with the tuned schedules (their output equal to the default-schedule build's)."""
    from tvm_mpq.measure.database import MeasurementDB

    torch.manual_seed(0)
    m, x = SmallNet().eval(), torch.randn(32, 1, 12, 12)
    y = m(x).argmax(1)
    res = tvm_mpq.tune(m, target="host", calib_data=x, eval_data=(x, y), backend="host",
                       bits=[(8, 8)], variants=["int8"], tune_trials=2, pop_size=8,
                       generations=2, active_rounds=0, repair_plans=0,
                       workdir=str(tmp_path), progress=False)
    db = MeasurementDB(tmp_path / "measurements.sqlite")
    recs = db.records("host", "host")
    assert recs and {r.schedule for r in recs} == {"tuned2"}
    assert all(r.ok for r in recs), [r.message for r in recs]
    assert res.settings["tune_trials"] == 2
    cm = res.compile(res.baselines["int8"].plan)
    assert cm.sites and all(s.scheduled for s in cm.sites)
    default = tvm_mpq.compile(m, x[:1], res.baselines["int8"].plan, "host", calib_data=x)
    np.testing.assert_array_equal(cm(x[:1]), default(x[:1]))
