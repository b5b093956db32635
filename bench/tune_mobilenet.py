"""End-to-end benchmark of tvm_mpq.tune() on the bundled Fashion-MNIST MobileNetV2.

For each ISA (rv64gc_zbb and rv64gc without Zbb): fp32, uniform int8, uniform w4a4 and the
chosen mixed-precision plan, with the measured cost (sum of Spike-measured kernels), the
whole-model retired instructions of the standalone artifact, accuracy through the
TVM-compiled model, size and search wall time. Then, on a small net whose plan space
can be enumerated, the hypervolume of the NSGA-II front against the exhaustive front.

    python bench/tune_mobilenet.py                      # both ISAs (long: ~30-60 min on 2 cores)
    python bench/tune_mobilenet.py --targets riscv64-zbb --eval 500
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def tune_model(target: str, args: argparse.Namespace):
    import tvm_mpq
    from tvm_mpq.zoo.fashion_mnist import calib_subset, load_fashion_mnist
    from tvm_mpq.zoo.models import load_pretrained

    model, info = load_pretrained(args.model)
    calib, _ = calib_subset(args.calib, seed=0)
    x, y = load_fashion_mnist("test", limit=args.eval)
    t0 = time.time()
    res = tvm_mpq.tune(model, x[:1], target, calib_data=calib, eval_data=(x, y),
                       backend=args.backend, workdir=os.path.join(args.out, target),
                       generations=args.generations, pop_size=args.pop_size)
    return res, time.time() - t0, info


def unseen_accuracy(res, args: argparse.Namespace) -> str:
    """Accuracy drops on the test images the search never saw (refinement and repair chose
    plans on the first ``--eval`` images): selection bias shows up here."""
    from tvm_mpq.quant.fakequant import fake_quant
    from tvm_mpq.quant.folding import fold_bn
    from tvm_mpq.zoo.fashion_mnist import evaluate, load_fashion_mnist

    x, y = load_fashion_mnist("test")
    x, y = x[args.eval:], y[args.eval:]
    if not len(x):
        return "no unseen test images"
    model, calib = res._model, res._calib
    fp32 = evaluate(fold_bn(model).eval(), x, y, batch_size=500)
    rows = [f"accuracy on the {len(x)} test images the search did not see (fp32 {100 * fp32:.2f}%):"]
    for name, p in [("best", res.best), *res.baselines.items()]:
        if p is None or not p.plan.quantized_layers():
            continue
        acc = evaluate(fake_quant(model, p.plan, calib_data=calib), x, y, batch_size=500)
        rows.append(f"  {name}: {100 * acc:.2f}% (drop {100 * (fp32 - acc):.2f} pt)")
    return "\n".join(rows)


def hypervolume_check(args: argparse.Namespace) -> str:
    """NSGA-II front vs the exhaustive front on ResNet-8's first layers (small space)."""
    from tvm_mpq.costmodel.model import CostModel
    from tvm_mpq.frontend.importer import import_model
    from tvm_mpq.quant.sensitivity import SensitivityTable
    from tvm_mpq.search.front import exhaustive_front, hv_ratio
    from tvm_mpq.search.nsga import run_nsga
    from tvm_mpq.search.problem import MPQProblem
    from tvm_mpq.targets import get_profile
    from tvm_mpq.zoo.models import load_pretrained

    wd = os.path.join(args.out, "riscv64-zbb")
    sens = SensitivityTable.load(os.path.join(wd, "sensitivity.json"))
    from tvm_mpq.measure.database import MeasurementDB

    # refit from the run's measurements (a saved model of another schema version is refused)
    cm = CostModel().fit(MeasurementDB(os.path.join(wd, "measurements.sqlite")).records(
        "rv64gc_zbb", args.backend if hasattr(args, "backend") else "spike", status="ok"))
    model, _ = load_pretrained(args.model)
    table = import_model(model, torch.zeros(1, 1, 28, 28), warn=False).table
    layers = table.quantizable_names()[: args.hv_layers]
    prob = MPQProblem(table, cm, sens, get_profile("riscv64-zbb").name,
                      bits=[(8, 8), (4, 4), (2, 2)], layers=layers, metric="loss")
    _, F_ex = exhaustive_front(prob)
    res = run_nsga(prob, pop_size=24, n_gen=30, seed=1)
    r = hv_ratio(res.F, F_ex)
    return (f"hypervolume of the NSGA-II front / exhaustive front on {len(layers)} layers "
            f"({prob.n_plans} plans, 24 x 30 evaluations): {r:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--targets", nargs="*", default=["riscv64-zbb", "riscv64"])
    ap.add_argument("--backend", default="spike")
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--eval", type=int, default=1000)
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--pop-size", type=int, default=32)
    ap.add_argument("--hv-layers", type=int, default=8)
    ap.add_argument("--out", default="runs/bench_tune")
    args = ap.parse_args()
    for target in args.targets:
        res, wall, info = tune_model(target, args)
        print(f"\n## {args.model} on {res.profile} ({res.backend}); fp32 test accuracy of the "
              f"checkpoint {100 * info['test_acc']:.2f}% (10k); accuracies below on "
              f"{args.eval} test images; search wall time {wall:.0f} s\n")
        print(res.message + "\n")
        print(res.table())
        int8 = res.baselines["int8"]
        if res.best is not None and res.best.model_cost and int8.model_cost:
            print(f"\nwhole-model instructions: best / uniform int8 = "
                  f"{res.best.model_cost / int8.model_cost:.3f}; best / fp32 = "
                  f"{res.best.model_cost / res.baselines['fp32'].model_cost:.3f}")
        print(f"\ncost model: {res.costmodel_report.get('summary')}")
        print(unseen_accuracy(res, args))
    try:
        print("\n" + hypervolume_check(args))
    except (FileNotFoundError, ValueError) as e:
        print(f"\nhypervolume check skipped: {e}")
    np.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
