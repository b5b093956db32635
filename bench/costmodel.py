"""Accuracy of the kernel cost model on real measurement databases.

Leave-one-workload-out (every workload of the database held out in turn) metrics --
MAPE, share within +-10 %, Spearman over all held-out predictions, mean Spearman inside
each held-out workload -- overall, per variant, per layer kind and per bits; and, with
``--holdout-model``, a held-out-*model* check: train on every workload of the other
model(s), test on the workloads of that model only (workloads shared between the models
are dropped from the test side, so the check never sees a test workload in training).

Usage::

    python bench/costmodel.py --db runs/mbv2_zbb/measurements.sqlite
    python bench/costmodel.py --db /tmp/cm/mbv2_r8.sqlite --profile rv64gc_zbb \\
        --holdout-model resnet8 --compare
    python bench/costmodel.py --db A.sqlite --db B.sqlite --json out.json
    python bench/costmodel.py --db /tmp/cm/zbb.sqlite --db /tmp/cm/r8_zbb.sqlite \\
        --holdout-model resnet8 --any-revision

Databases are copied to a temporary file first (other processes may be writing them).
``--any-revision`` reads databases of another kernel revision (which ``MeasurementDB``
refuses) straight from SQLite: their numbers come from other kernels, so use it only to
compare cost models with each other on the same old data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvm_mpq.costmodel.holdout import HoldoutReport, evaluate_holdout, metrics  # noqa: E402
from tvm_mpq.measure.database import MeasurementDB  # noqa: E402
from tvm_mpq.schedules.workload import workload_from_dict  # noqa: E402

MODELS = {"mbv2": ("mobilenet_v2", (1, 1, 28, 28)), "resnet8": ("resnet8", (1, 1, 28, 28))}


def load_records(path: str, profile: str | None, backend: str | None,
                 any_revision: bool = False) -> list[dict[str, Any]]:
    """Ok records of one database (read from a private copy). ``any_revision``: read the
    table directly, skipping ``MeasurementDB``'s kernel-revision check."""
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "m.sqlite"
        shutil.copyfile(path, dst)
        for ext in ("-wal", "-shm"):
            if Path(path + ext).exists():
                shutil.copyfile(path + ext, str(dst) + ext)
        if any_revision:
            return _raw_records(dst, profile, backend)
        with MeasurementDB(dst) as db:
            return [r.to_dict() for r in db.records(profile, backend, status="ok")]


def _raw_records(path: Path, profile: str | None, backend: str | None) -> list[dict[str, Any]]:
    """Ok rows of a measurement table as record dicts (workload JSON decoded)."""
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in con.execute("SELECT * FROM measurements WHERE status = 'ok'")]
    finally:
        con.close()
    out = []
    for r in rows:
        if (profile is None or r["profile"] == profile) and \
                (backend is None or r["backend"] == backend):
            r["workload"] = json.loads(r["workload"])
            out.append(r)
    return out


def layer_kind(rec: dict[str, Any]) -> str:
    """dense / depthwise / pointwise / 3x3 (full) / other, from the workload."""
    wl = workload_from_dict(rec["workload"])
    if not hasattr(wl, "kh"):
        return "dense"
    if wl.is_depthwise:
        return "depthwise"
    if wl.kh == 1 and wl.kw == 1:
        return "pointwise"
    return f"{wl.kh}x{wl.kw}"


def bits_of(rec: dict[str, Any]) -> str:
    return "fp32" if rec["variant"] == "fp32" else f"w{rec['w_bits']}a{rec['a_bits']}"


def breakdown(rep: HoldoutReport, key: Callable[[dict[str, Any]], str]) -> dict[str, dict]:
    """Metrics of the held-out predictions grouped by ``key(record)``, with the mean
    within-workload Spearman of each group."""
    labels = [key(r) for r in rep.records]
    out = {}
    for g in sorted(set(labels)):
        sel = np.asarray([lab == g for lab in labels])
        m = metrics(rep.pred[sel], rep.true[sel])
        rhos = []
        wls = [r["workload_key"] for r, s in zip(rep.records, sel, strict=True) if s]
        idx = np.flatnonzero(sel)
        for wk in set(wls):
            j = idx[[w == wk for w in wls]]
            if len(j) > 2 and np.ptp(rep.true[j]) > 0:
                rhos.append(metrics(rep.pred[j], rep.true[j])["spearman"])
        m["spearman_within"] = float(np.mean(rhos)) if rhos else float("nan")
        m["signed_bias"] = float(np.median(np.log(rep.pred[sel] / rep.true[sel])))
        out[g] = m
    return out


def overall(rep: HoldoutReport) -> dict[str, float]:
    return {"mape": rep.mape, "within_10pct": rep.within_10pct, "spearman": rep.spearman,
            "spearman_within": rep.spearman_within, "n": rep.n, "n_folds": rep.n_folds}


def fmt_row(name: str, m: dict[str, float]) -> str:
    return (f"| {name} | {m['n']} | {100 * m['mape']:.1f}% | {100 * m['within_10pct']:.0f}% | "
            f"{m['spearman']:.3f} | {m.get('spearman_within', float('nan')):.3f} |")


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}\n| group | n | MAPE | within +-10% | Spearman | within-group Spearman |")
    print("|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(fmt_row(name, m))


def model_groups(records: Sequence[dict[str, Any]], holdout_model: str) -> dict[str, str]:
    """``workload_key -> "train" / "test" / "shared"``: test = workloads of the held-out
    model only, shared = workloads of both (dropped), train = the rest."""
    import torch

    from tvm_mpq.frontend.importer import import_model
    from tvm_mpq.schedules.workload import workload_from_layer
    from tvm_mpq.zoo.models import load_pretrained

    name, shape = MODELS[holdout_model]
    table = import_model(load_pretrained(name)[0], torch.zeros(*shape)).table
    test = {workload_from_layer(row).key() for row in table}
    others = set()
    for other, (oname, oshape) in MODELS.items():
        if other != holdout_model:
            t = import_model(load_pretrained(oname)[0], torch.zeros(*oshape)).table
            others |= {workload_from_layer(row).key() for row in t}
    out = {}
    for r in records:
        k = r["workload_key"]
        out[k] = "shared" if (k in test and k in others) else "test" if k in test else "train"
    return out


def holdout_model_report(records: list[dict[str, Any]], holdout_model: str,
                         **kw: Any) -> HoldoutReport | None:
    """Train on the other model's workloads, test on ``holdout_model``'s own."""
    grp = model_groups(records, holdout_model)
    recs = [r for r in records if grp[r["workload_key"]] != "shared"]
    if len({grp[r["workload_key"]] for r in recs}) < 2:
        print(f"held-out model {holdout_model}: no test or no train workloads in the DB")
        return None
    # two groups -> two folds; only the fold holding out "test" is the check we want
    rep = evaluate_holdout(recs, lambda r: grp[r["workload_key"]], max_folds=2, **kw)
    sel = [i for i, r in enumerate(rep.records) if grp[r["workload_key"]] == "test"]
    m = metrics(rep.pred[sel], rep.true[sel])
    rhos = []
    test_recs = [rep.records[i] for i in sel]
    for wk in {r["workload_key"] for r in test_recs}:
        j = [i for i in sel if rep.records[i]["workload_key"] == wk]
        if len(j) > 2 and np.ptp(rep.true[j]) > 0:
            rhos.append(metrics(rep.pred[j], rep.true[j])["spearman"])
    return HoldoutReport(m["mape"], m["within_10pct"], m["spearman"],
                         float(np.nanmean(rhos)) if rhos else float("nan"), m["n"], 1,
                         f"model {holdout_model}", [], rep.pred[sel], rep.true[sel], test_recs)


def report(rep: HoldoutReport, title: str, detail: bool) -> dict[str, Any]:
    out = {"overall": overall(rep), "variant": breakdown(rep, lambda r: r["variant"])}
    print_table(f"{title}: {rep.summary()}", {"all": out["overall"], **out["variant"]})
    if detail:
        out["kind"] = breakdown(rep, layer_kind)
        out["variant_kind"] = breakdown(rep, lambda r: f"{r['variant']} {layer_kind(r)}")
        out["bits"] = breakdown(rep, lambda r: f"{r['variant']} {bits_of(r)}")
        print_table(f"{title}, per layer kind", out["kind"])
        print_table(f"{title}, per variant x layer kind", out["variant_kind"])
        print_table(f"{title}, per variant x bits", out["bits"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", action="append", required=True, help="measurement DB (repeatable)")
    ap.add_argument("--profile", default=None, help="only this target profile")
    ap.add_argument("--backend", default="spike")
    ap.add_argument("--folds", type=int, default=0,
                    help="max folds of the workload holdout (0: one per workload)")
    ap.add_argument("--holdout-model", choices=sorted(MODELS), default=None,
                    help="also train on the other model's workloads and test on this one's")
    ap.add_argument("--compare", action="store_true",
                    help="also evaluate the old model (no analytic prior)")
    ap.add_argument("--detail", action="store_true", help="per kind / bits tables")
    ap.add_argument("--rounds", type=int, default=None, help="boosting rounds")
    ap.add_argument("--json", default=None, help="write all metrics here")
    ap.add_argument("--any-revision", action="store_true",
                    help="read databases of another kernel revision (old data, see above)")
    a = ap.parse_args(argv)

    records: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for path in a.db:  # a key measured in several DBs counts once (the first DB's record)
        for r in load_records(path, a.profile, a.backend, a.any_revision):
            key = (r["profile"], r["backend"], r["workload_key"], r["variant"], r["w_bits"],
                   r["a_bits"], r["schedule"])
            if key not in seen:
                seen.add(key)
                records.append(r)
    print(f"{len(records)} ok records, {len({r['workload_key'] for r in records})} workloads, "
          f"profiles {sorted({r['profile'] for r in records})}")
    kw: dict[str, Any] = {} if a.rounds is None else {"num_rounds": a.rounds}
    n_wl = len({r["workload_key"] for r in records})
    folds = a.folds or n_wl
    variants = [("prior+xgb", {"prior": True})]
    if a.compare:
        variants.append(("xgb only (old)", {"prior": False}))
    doc: dict[str, Any] = {"dbs": a.db, "n_records": len(records), "folds": folds}
    for name, extra in variants:
        rep = evaluate_holdout(records, "workload", max_folds=folds, **kw, **extra)
        doc[f"workload_holdout {name}"] = report(rep, f"[{name}] leave-one-workload-out",
                                                 a.detail and extra["prior"])
        if a.holdout_model:
            hm = holdout_model_report(records, a.holdout_model, **kw, **extra)
            if hm is not None:
                doc[f"model_holdout {name}"] = report(
                    hm, f"[{name}] held-out model {a.holdout_model}", a.detail and extra["prior"])
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
