"""tune()'s config, fingerprints, checkpoint files and Pareto filter (no simulator, no TVM)."""

from __future__ import annotations

import copy
import json
import os
import sys

import numpy as np
import pytest
import torch

from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.search.front import non_dominated
from tvm_mpq.tuner import PlanPoint, TuneConfig
from tvm_mpq.tuner.checkpoint import Manifest, data_fingerprint, model_fingerprint, read_json
from tvm_mpq.tuner.config import resolve_config
from tvm_mpq.tuner.result import pareto_points

sys.path.insert(0, os.path.dirname(__file__))
from test_compile import SmallNet  # noqa: E402


def test_config_keywords_round_trip():
    cfg = TuneConfig.from_kwargs(bits=[[8, 8], [2, 2]], pop_size=8, qat_beacons=2, backend="qemu",
                                 latency_budget=1e6)
    assert cfg.search.bits == ((8, 8), (2, 2)) and cfg.qat.beacons == 2
    assert cfg.measure.backend == "qemu" and cfg.budgets.latency_budget == 1e6
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able, flat, keyed by tune() keyword
    assert TuneConfig.from_dict(d) == cfg
    assert set(d) == set(TuneConfig.keywords())
    assert TuneConfig().replace(pop_size=8).search.pop_size == 8
    assert TuneConfig.from_kwargs(qat="lsq").qat.method == "lsq"
    from tvm_mpq.cli import tune as cli_tune
    from tvm_mpq.quant.qat import QAT_METHODS

    assert cli_tune.QAT_METHODS == QAT_METHODS  # the CLI's copy (it loads no torch)
    from tvm_mpq.search.dnas import DNAS_COSTS
    from tvm_mpq.tuner.config import SEARCHES

    assert cli_tune.SEARCHES == SEARCHES and cli_tune.DNAS_COSTS == DNAS_COSTS
    d = TuneConfig.from_kwargs(search="hybrid", dnas_cost_weights=[1, 2]).to_dict()
    assert json.loads(json.dumps(d)) == d and TuneConfig.from_dict(d).search.search == "hybrid"
    for bad in ({"search": "random"}, {"dnas_cost": "flops"}, {"dnas_cost_weights": [-1.0]},
                {"dnas_steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TuneConfig.from_kwargs(**bad)
    with pytest.raises(TypeError, match="popsize"):
        TuneConfig.from_kwargs(popsize=8)


def test_config_and_keywords_must_agree():
    cfg = TuneConfig.from_kwargs(pop_size=8, bits=[(8, 8)])
    assert resolve_config(cfg, {"pop_size": 8, "bits": [[8, 8]]}) is cfg  # same values: fine
    assert resolve_config(None, {"pop_size": 8}).search.pop_size == 8
    with pytest.raises(ValueError, match="generations=3"):
        resolve_config(cfg, {"generations": 3})


def test_fingerprints_see_weights_and_data():
    m = SmallNet()
    m2 = copy.deepcopy(m)
    assert model_fingerprint(m) == model_fingerprint(m2)
    with torch.no_grad():
        next(m2.parameters())[0].add_(1e-3)
    assert model_fingerprint(m) != model_fingerprint(m2)
    # the import depends on the architecture only
    assert model_fingerprint(m, weights=False) == model_fingerprint(m2, weights=False)
    x = torch.randn(8, 3)
    assert data_fingerprint((x, x.argmax(1))) == data_fingerprint((x.clone(), x.argmax(1)))
    y = x.clone()
    y[3, 1] += 1
    assert data_fingerprint(x) != data_fingerprint(y)
    assert data_fingerprint(x) != data_fingerprint(x.double())
    assert data_fingerprint(x.numpy()) == data_fingerprint(x.numpy().copy())


def test_corrupt_json_is_set_aside(tmp_path):
    p = str(tmp_path / "x.json")
    with open(p, "w") as f:
        f.write("{oops")
    assert read_json(p) is None
    assert not os.path.exists(p) and os.path.exists(p + ".corrupt")
    man = Manifest(str(tmp_path))
    man.record("import", "abc")
    assert Manifest(str(tmp_path)).valid("import", "abc")
    with open(man.path, "w") as f:
        f.write("garbage")
    assert not Manifest(str(tmp_path)).valid("import", "abc")  # set aside: nothing is valid


def test_non_dominated_keeps_ties_on_request():
    F = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [0.5, 3.0]])
    assert non_dominated(F).tolist() == [0, 2, 4]
    assert non_dominated(F, unique=False).tolist() == [0, 1, 2, 4]
    rng = np.random.default_rng(0)
    for _ in range(20):  # property: kept rows are exactly those no row dominates
        G = rng.integers(0, 4, size=(12, 3)).astype(float)
        keep = set(non_dominated(G, unique=False).tolist())
        for i in range(len(G)):
            dominated = any(np.all(G[j] <= G[i]) and np.any(G[j] < G[i]) for j in range(len(G)))
            assert (i in keep) == (not dominated)


def test_pareto_points_filters_plan_points():
    m = SmallNet()
    a = QuantPlan.uniform(m, w_bits=8, a_bits=8)
    b = QuantPlan.uniform(m, w_bits=2, a_bits=2)

    def pt(plan, cost, drop, size, measured=True):
        return PlanPoint("front", plan, cost, cost if measured else None, drop=drop, size_bytes=size)

    pts = [pt(a, 10, 0.0, 100), pt(b, 5, 0.02, 40), pt(a, 10, 0.0, 100),  # a twice: once
           pt(b, 12, 0.03, 50), pt(QuantPlan.fp32(m), 5, 0.02, 40)]  # tie with b: both kept
    out = pareto_points(pts)
    assert [p.measured_cost for p in out] == [5, 5, 10]  # cheapest first, dominated one gone
    assert out[0].plan == b and out[1].plan == QuantPlan.fp32(m)


def test_glue_setting_and_cli_option():
    from tvm_mpq.cli import tune as cli_tune
    from tvm_mpq.cli.app import build_parser
    from tvm_mpq.tuner.config import GLUES

    assert GLUES == cli_tune.GLUES == ("integer", "float")
    cfg = TuneConfig()
    assert cfg.measure.glue == "integer" and cfg.to_dict()["glue"] == "integer"
    flt = TuneConfig.from_kwargs(glue="float")
    assert flt.measure.glue == "float" and TuneConfig.from_dict(flt.to_dict()) == flt
    with pytest.raises(ValueError, match="glue"):
        TuneConfig.from_kwargs(glue="fixed")
    parser = build_parser()
    args = parser.parse_args(["tune"])
    assert cli_tune.config_from_args(args).measure.glue == "integer"
    args = parser.parse_args(["tune", "--glue", "float"])
    assert cli_tune.config_from_args(args).measure.glue == "float"
    with pytest.raises(SystemExit):
        parser.parse_args(["tune", "--glue", "fixed"])



def test_search_setting_and_cli_options():
    from tvm_mpq.cli import tune as cli_tune
    from tvm_mpq.cli.app import build_parser

    parser = build_parser()
    d = cli_tune.config_from_args(parser.parse_args(["tune"])).search
    assert (d.search, d.dnas_cost, d.dnas_steps, d.dnas_cost_weights) == (
        "nsga2", None, 120, TuneConfig().search.dnas_cost_weights)  # CLI = API defaults
    cfg = cli_tune.config_from_args(parser.parse_args(
        ["tune", "--search", "hybrid", "--dnas-cost", "bitops", "--dnas-steps", "7",
         "--dnas-cost-weights", "0.1", "1"])).search
    assert (cfg.search, cfg.dnas_cost, cfg.dnas_steps, cfg.dnas_cost_weights) == (
        "hybrid", "bitops", 7, (0.1, 1.0))
    with pytest.raises(SystemExit):
        parser.parse_args(["tune", "--search", "random"])


def test_dnas_cost_default_is_bitops_for_the_hybrid_only():
    from tvm_mpq.tuner.config import resolve_search

    default = TuneConfig()
    assert (default.search.search, default.search.dnas_cost) == ("nsga2", None)

    def resolved(**kw):
        s = resolve_search(default.replace(**kw)).search
        return s.search, s.dnas_cost

    assert resolved() == ("nsga2", "measured")
    assert resolved(search="hybrid") == ("hybrid", "bitops")  # Free Bits' agnostic supernet
    assert resolved(search="dnas") == ("dnas", "measured")  # hardware-aware by measurement
    assert resolved(search="hybrid", dnas_cost="measured") == ("hybrid", "measured")
    cfg = default.replace(search="dnas", dnas_cost="bitops")
    assert resolve_search(cfg) is cfg  # a set value is kept as given


def test_memory_budgets_setting_and_cli_options():
    from tvm_mpq.cli.app import build_parser
    from tvm_mpq.cli.tune import config_from_args

    cfg = TuneConfig.from_kwargs(ram_budget=65536, flash_budget=1 << 20)
    assert cfg.budgets.ram_budget == 65536 and cfg.budgets.flash_budget == 1 << 20
    assert TuneConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (0, -1, "64k", True):
        with pytest.raises(ValueError, match="ram_budget"):
            TuneConfig.from_kwargs(ram_budget=bad)
    with pytest.raises(ValueError, match="flash_budget"):
        TuneConfig.from_kwargs(flash_budget=-5)
    args = build_parser().parse_args(["tune", "--ram-budget", "131072", "--flash-budget", "2e6"])
    b = config_from_args(args).budgets
    assert (b.ram_budget, b.flash_budget) == (131072, 2e6)
    assert config_from_args(build_parser().parse_args(["tune"])).budgets.ram_budget is None


def test_memory_budget_needs_a_bare_metal_backend(tmp_path):
    """The exact figures come from running the artifact: refused up front on the host."""
    import tvm_mpq

    x = torch.randn(8, 1, 12, 12)
    with pytest.raises(ValueError, match="bare-metal backend"):
        tvm_mpq.tune(SmallNet().eval(), x[:1], "host", calib_data=x,
                     eval_data=(x, torch.zeros(8, dtype=torch.long)), backend="host",
                     ram_budget=1e5, workdir=str(tmp_path), progress=False)
    assert not os.listdir(tmp_path)  # nothing started


def _bad_data_cases(x: torch.Tensor, y: torch.Tensor) -> list[tuple[dict, str]]:
    nan = x.clone()
    nan[3, 0, 2, 2] = float("nan")
    inf = x.clone()
    inf[5] = float("inf")
    return [
        (dict(calib_data=nan), r"calib_data: 1 sample\(s\) contain NaN or inf \(first: sample 3, 1 of 144"),
        (dict(calib_data=x[:0]), "calib_data is empty"),
        (dict(calib_data=[]), "calib_data is empty"),
        (dict(calib_data=torch.randn(8, 3, 12, 12)), r"calib_data samples have shape \(3, 12, 12\)"),
        (dict(eval_data=(inf, y)), "eval_data images: 1 sample"),
        (dict(eval_data=(x, y[:5])), "eval_data has 8 images but 5 labels"),
        (dict(max_accuracy_drop=-0.5), "max_accuracy_drop=-0.5"),
        (dict(calib_data=x.long()), "calib_data has dtype torch.int64: the model takes floating"),
        (dict(calib_data=x.double()), "calib_data has dtype torch.float64, the example input"),
        (dict(eval_data=(x, y.float())), "eval_data labels are torch.float32 of shape"),
        (dict(pop_size=1), r"pop_size=1: expected an integer >= 2"),
        (dict(generations=0), "generations=0: expected an integer >= 1"),
        (dict(sensitivity_samples=0), "sensitivity_samples=0"),
        (dict(final_eval_samples=0), r"final_eval_samples=0: expected an integer >= 1 \(or None\)"),
        (dict(measure_budget=-3), "measure_budget=-3"),
        (dict(qat_beacons=-1), "qat_beacons=-1"),
        (dict(qat="lsqq"), r"qat='lsqq': expected one of \('fixed', 'lsq'\)"),
        (dict(bits=[(3, 3)]), "invalid w_bits 3"),
        (dict(variants=["simd"]), "unknown variant 'simd'"),
        (dict(glue="fixed"), "glue='fixed'"),
    ]


def test_model_failing_on_the_example_and_unwritable_workdir(tmp_path):
    """A per-sample shape the model cannot take shows as the model's own error, up front; a
    workdir that cannot be created is named."""
    import tvm_mpq

    x, y = torch.randn(8, 2, 12, 12), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"model fails on example_inputs of shape \(1, 2, 12, "
                       r"12\) \(RuntimeError: "):
        tvm_mpq.tune(SmallNet(), target="host", calib_data=x, eval_data=(x, y),
                     backend="host", workdir=str(tmp_path / "w"), progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot be created or written"):
        tvm_mpq.tune(SmallNet(), target="host", calib_data=torch.randn(8, 1, 12, 12),
                     eval_data=(x[:, :1], y), backend="host", workdir=str(blocker / "w"),
                     progress=False)


def test_bad_data_is_refused_before_any_stage(tmp_path):
    """Each problem gets its own message, before the workdir is even created; the user's
    model keeps its training mode."""
    import tvm_mpq

    x, y = torch.randn(8, 1, 12, 12), torch.zeros(8, dtype=torch.long)
    m = SmallNet().train()
    for i, (kw, msg) in enumerate(_bad_data_cases(x, y)):
        args = dict(calib_data=x, eval_data=(x, y), backend="host",
                    workdir=str(tmp_path / f"w{i}"), progress=False) | kw
        with pytest.raises(ValueError, match=msg):
            tvm_mpq.tune(m, x[:1], "host", **args)
        assert not (tmp_path / f"w{i}").exists()
    assert m.training


def test_cli_hides_third_party_warnings(monkeypatch):
    """`tvm-mpq tune` shows our warnings, not torch's (unless -v)."""
    import warnings

    from tvm_mpq.cli.app import build_parser
    from tvm_mpq.cli.tune import quiet_third_party_warnings

    assert build_parser().parse_args(["tune", "-v"]).verbose
    assert not build_parser().parse_args(["tune"]).verbose
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda m, *a, **k: shown.append(str(m)))
    quiet_third_party_warnings()
    warnings.showwarning("LeafSpec is deprecated", FutureWarning, "/x/torch/utils/_pytree.py", 1)
    warnings.showwarning("our own warning", UserWarning, "/x/tvm_mpq/tuner/state.py", 2)
    err = " ".join(shown)
    assert "our own warning" in err and "LeafSpec" not in err


def test_cli_model_sources(tmp_path):
    """--model: a torch.save(model) file loads as it was saved; a state dict given as --model,
    --weights with a bundled name or a .pt2 file, and a missing .pt2 are refused with the fix."""
    from tvm_mpq.cli.user_inputs import load_model

    m = SmallNet().eval()
    torch.save(m, tmp_path / "whole.pt")
    got, info = load_model(str(tmp_path / "whole.pt"), None)
    x = torch.randn(1, 1, 12, 12)
    assert torch.equal(got(x), m(x)) and info["model"].endswith("whole.pt")
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    (tmp_path / "junk.pt2").write_text("not a zip")
    for spec, weights, msg in ((str(tmp_path / "m.pt2"), None, "m.pt2: no such file"),
                               (str(tmp_path / "m.pt2"), str(tmp_path / "sd.pt"), "holds its weights"),
                               (str(tmp_path / "junk.pt2"), None, "not a torch.export file"),
                               (str(tmp_path / "sd.pt"), None, "not an nn.Module"),
                               ("mobilenet_v2", str(tmp_path / "sd.pt"), "--weights goes with"),
                               ("nomodule_xyz:make", None, "cannot import 'nomodule_xyz'")):
        with pytest.raises(ValueError, match=msg):
            load_model(spec, weights)


def test_cli_image_folder_data(tmp_path):
    """--data DIR: ImageFolder classes in sorted order, floats in [0, 1], calibration and
    evaluation split (or DIR/train + DIR/val); grayscale gives one channel; a size mismatch
    is named."""
    from PIL import Image

    from tvm_mpq.cli.user_inputs import load_data

    rng = np.random.default_rng(0)

    def write(root, cls, n, size=(12, 10), mode="RGB"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                root / cls / f"{i}.png")

    flat = tmp_path / "flat"
    for cls, n in (("cat", 5), ("ant", 4), ("bee", 3)):
        write(flat, cls, n)
    calib, (x, y), fn = load_data(str(flat), None, n_calib=4, n_eval=100)
    assert fn is None and calib.shape == (4, 3, 10, 12) and x.shape == (8, 3, 10, 12)
    assert calib.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert sorted(set(y.tolist())) == [0, 1, 2]  # ant, bee, cat
    split = tmp_path / "split"
    write(split / "train", "a", 3, mode="L")
    write(split / "train", "b", 3, mode="L")
    write(split / "val", "a", 2, mode="L")
    write(split / "val", "b", 1, mode="L")
    calib, (x, y), _ = load_data(str(split), None, n_calib=10, n_eval=10)
    assert calib.shape == (6, 1, 10, 12) and x.shape == (3, 1, 10, 12)
    assert sorted(y.tolist()) == [0, 0, 1]
    write(flat, "ant", 1, size=(8, 8))  # overwrites ant/0.png with another size
    with pytest.raises(ValueError, match="0.png is 8x8, the first image 12x10"):
        load_data(str(flat), None, n_calib=40, n_eval=100)
    with pytest.raises(ValueError, match="no class folders"):
        load_data(str(tmp_path / "flat" / "ant"), None)
