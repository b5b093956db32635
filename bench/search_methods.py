"""Search methods side by side: NSGA-II, NSGA-II + LSQ beacons, DNAS, Free Bits hybrid.

For one bundled model and one target, runs ``tvm-mpq tune`` (the README command) once per
method. The first method's workdir measures the kernels; each next one starts from a copy
of the previous one's workdir (same database, same costs; ``tune()``'s stage fingerprints
recompute what the method changes), so they differ only from the search on. Per method it
prints the best plan's whole-model retired instructions (standalone artifact on the
simulator) against ``best_uniform`` (the cheaper of uniform fp32 and uniform w8a8 on the
fastest kernels, measured in the same run), its accuracy drop on test images the search
never saw (``--unseen`` images after the first ``--eval`` that the search uses; the torch
integer-only reference, bit-exact to the compiled model, of the plan as chosen: QAT-fine-
tuned when it was) and on the search's images, each ± its standard error (per-image
outcomes paired with fp32's), the hypervolume of the measured front in (cost / best_uniform, drop on
the search images) with reference point (1.2, 0.05), and the wall time of the method's own
stages (search to final) on this machine; the shared front end (import, sensitivity,
measurement) is printed once.

    python bench/search_methods.py --target riscv64-zbb --out runs/cmp_zbb
    python bench/search_methods.py --model resnet8 --target rv32imc --methods nsga2 dnas
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: method name -> extra ``tvm-mpq tune`` options
METHODS: dict[str, list[str]] = {
    "nsga2": ["--search", "nsga2"],
    "nsga2-lsq": ["--search", "nsga2", "--qat-beacons", "3", "--qat", "lsq"],
    "dnas": ["--search", "dnas"],
    "hybrid": ["--search", "hybrid", "--dnas-cost", "measured"],
    "hybrid-bitops": ["--search", "hybrid", "--dnas-cost", "bitops"],
}
#: the stages every method shares (the front end, printed once)
SHARED = ("import", "sensitivity", "measure")
HV_REF = (1.2, 0.05)


def seed_workdir(src: str, dst: str) -> None:
    """A fresh ``dst`` from a copy of ``src``'s checkpoints, measurement database and caches
    (not its result and artifacts): ``tune()``'s fingerprints then recompute exactly the
    stages the method changes (e.g. only beacons and final for LSQ beacons over the same
    front), and a hybrid run reuses a dnas run's supernets (same settings and data)."""
    if os.path.exists(os.path.join(dst, "stages", "manifest.json")):
        return  # resumed: dst has its own checkpoints
    shutil.copytree(src, dst, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("result", "standalone", "*.stale",
                                                  "measurements.sqlite*"))
    with sqlite3.connect(os.path.join(src, "measurements.sqlite")) as a, \
            sqlite3.connect(os.path.join(dst, "measurements.sqlite")) as b:
        a.backup(b)


def unseen_drop(res: Any, args: argparse.Namespace) -> tuple[float, float, float]:
    """``(fp32 accuracy, drop in points, its standard error in points)`` of the best plan on
    the unseen test images (the error from the per-image outcomes paired with fp32's)."""
    import torch

    from tvm_mpq.quant.qparams_cache import QParamsCache
    from tvm_mpq.tuner.plans import full_plan
    from tvm_mpq.tuner.stages.beacons import load_qat
    from tvm_mpq.zoo.fashion_mnist import (
        calib_subset,
        correct_predictions,
        load_fashion_mnist,
        paired_drop_se,
    )
    from tvm_mpq.zoo.models import load_pretrained

    torch.set_num_threads(2)
    model, _ = load_pretrained(args.model)
    x, y = load_fashion_mnist("test", args.eval + args.unseen)
    x, y = x[args.eval:], y[args.eval:]
    cache = QParamsCache(model, calib_subset(256, seed=0)[0])
    plan = full_plan(res.best.plan, model)
    ft, qp = load_qat(res.best.qat_dir) if res.best.qat_dir else (None, None)
    fwd = cache.forward(plan, ft, qp, integer_only=res.glue == "integer")
    ref = correct_predictions(model.eval(), x, y, batch_size=256)
    ok = correct_predictions(fwd, x, y, batch_size=256, pad_last=True)
    return float(ref.mean()), 100 * float(ref.mean() - ok.mean()), 100 * paired_drop_se(ref, ok)


def row(method: str, out: str, args: argparse.Namespace) -> dict[str, Any]:
    """One method's figures from its saved result."""
    import numpy as np

    from tvm_mpq.search.front import hypervolume
    from tvm_mpq.tuner.result import load_result

    res = load_result(os.path.join(out, method))
    base = res.baselines["best_uniform"].measured_cost
    pts = np.asarray([[p.measured_cost / base, p.drop] for p in res.pareto
                      if p.measured_cost is not None and p.drop is not None], dtype=np.float64)
    own = sum(v for k, v in res.timings.items() if k not in ("import", "sensitivity", "measure"))
    r = {"method": method, "best_uniform": base, "hv": hypervolume(pts, HV_REF),
         "wall_s": own, "timings": res.timings}
    if res.best is None or res.best.measured_cost is None:
        return {**r, "best": None, "ratio": None, "drop_unseen": None, "drop_search": None}
    fp32, drop, se = unseen_drop(res, args)
    whole, whole_base = res.best.model_cost, res.baselines["best_uniform"].model_cost
    if whole is None or whole_base is None:  # no end-to-end run: the kernel sums
        whole, whole_base = res.best.measured_cost, base
    return {**r, "best": whole, "ratio": whole / whole_base, "best_uniform_model": whole_base,
            "drop_unseen": drop, "drop_unseen_se": se, "drop_search": 100 * res.best.drop,
            "drop_search_se": None if res.best.drop_se is None else 100 * res.best.drop_se,
            "fp32_unseen": fp32,
            "bits": res.best.plan.summary()}


def main(argv: list[str] | None = None) -> None:
    """Run every method (resumable) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--target", default="riscv64-zbb")
    ap.add_argument("--backend", default="spike")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", default="runs/search_methods")
    ap.add_argument("--eval", type=int, default=1000, help="test images the search uses")
    ap.add_argument("--unseen", type=int, default=5000, help="test images after those")
    ap.add_argument("--report-only", action="store_true", help="print saved results only")
    args = ap.parse_args(argv)
    exe = str(Path(sys.executable).parent / "tvm-mpq")
    os.makedirs(args.out, exist_ok=True)  # the first method's log sits beside its workdir
    prev = None
    for m in args.methods:
        wd = os.path.join(args.out, m)
        if args.report_only:
            continue
        if prev is not None:
            seed_workdir(prev, wd)
        prev = wd
        cmd = [exe, "tune", "--model", args.model, "--dataset", "fashion-mnist", "--target",
               args.target, "--backend", args.backend, "--eval", str(args.eval), "--out", wd,
               *METHODS[m]]
        print("+", " ".join(cmd), flush=True)
        with open(wd + ".log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    rows = [row(m, args.out, args) for m in args.methods]
    with open(os.path.join(args.out, "search_methods.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    t0 = rows[0]["timings"]
    shared = sum(t0.get(k, 0.0) for k in SHARED)
    bu = next((r["best_uniform_model"] for r in rows if r.get("best_uniform_model")),
              rows[0]["best_uniform"])
    print(f"\n{args.model} on {args.target} ({args.backend}); whole-model instructions of the "
          f"standalone artifact; best_uniform {bu:,.0f}; shared front end {shared:.0f} s")
    print("| method | best plan | best / best_uniform | drop (unseen) | drop (search) | "
          "HV | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["best"] is None:
            print(f"| {r['method']} | none within budget | | | | {r['hv']:.4f} | "
                  f"{r['wall_s']:.0f} |")
            continue
        print(f"| {r['method']} | {r['best']:,.0f} | {r['ratio']:.3f} | "
              f"{_pm(r['drop_unseen'], r['drop_unseen_se'])} | "
              f"{_pm(r['drop_search'], r.get('drop_search_se'))} | {r['hv']:.4f} | "
              f"{r['wall_s']:.0f} |")


def _pm(v: float, se: float | None) -> str:
    """A drop in points with its standard error where known."""
    return f"{v:.2f} pt" if se is None else f"{v:.2f} ± {se:.2f} pt"


if __name__ == "__main__":
    main()
