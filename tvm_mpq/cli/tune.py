"""``tvm-mpq tune``: the end-to-end search on a bundled model and dataset.

    tvm-mpq tune --model mobilenet_v2 --dataset fashion-mnist --target riscv64-zbb \\
        --backend spike --out runs/mbv2_zbb

Plans are compiled with integer-only inference (``--glue integer``, the default);
``--glue float`` prices, evaluates and compiles them with the float quantize/dequantize
glue instead, for comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from tvm_mpq.measure.runner import BACKENDS

DATASETS = ("fashion-mnist",)
#: as ``tvm_mpq.tuner.config.GLUES`` (not imported: the CLI parser loads no torch)
GLUES = ("integer", "float")
#: as ``tvm_mpq.quant.qat.QAT_METHODS`` (not imported, for the same reason)
QAT_METHODS = ("fixed", "lsq")
#: as ``tvm_mpq.tuner.config.SEARCHES`` and ``tvm_mpq.search.dnas.DNAS_COSTS``
SEARCHES = ("nsga2", "dnas", "hybrid")
DNAS_COSTS = ("measured", "bitops")


def _bits_list(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            w, a = part.lstrip("w").split("a")
            pair = (int(w), int(a))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bits must look like w8a8,w4a4,w2a2; got {part!r}") from None
        if pair[0] not in (1, 2, 4, 8) or pair[1] not in (1, 2, 4, 8):
            raise argparse.ArgumentTypeError(f"bits {part!r}: each of w, a must be 1, 2, 4 or 8")
        out.append(pair)
    return out


def add_search_options(p: argparse.ArgumentParser) -> None:
    """The search and fine-tuning options of ``tune``."""
    p.add_argument("--pop-size", type=int, default=32)
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--active-rounds", type=int, default=1)
    p.add_argument("--qat-beacons", type=int, default=0,
                   help="MOHAQ beacons: front plans fine-tuned with QAT (CPU-heavy; 0 = PTQ only)")
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--qat", default="fixed", choices=QAT_METHODS,
                   help="beacon fine-tuning: fixed calibrated scales, or lsq (learned step size)")
    p.add_argument("--search", choices=SEARCHES, default="nsga2",
                   help="nsga2 (NSGA-II over post-training plans), dnas (differentiable "
                        "supernet search on the measured costs) or hybrid (Free Bits: DNAS, "
                        "free bits up / costly bits down on measured costs, LSQ fine-tuning)")
    p.add_argument("--dnas-cost", choices=DNAS_COSTS, default=None,
                   help="the supernet's cost term: measured kernel costs or bit operations "
                        "(default: bitops for hybrid, as in Free Bits; measured for dnas)")
    p.add_argument("--dnas-steps", type=int, default=120,
                   help="supernet training steps per cost weight (--search dnas / hybrid)")
    p.add_argument("--dnas-cost-weights", type=float, nargs="+",
                   default=[0.005, 0.01, 0.02, 0.05, 0.1],
                   help="the cost weights of the DNAS sweep, one plan each")


def add_parser(sub: Any) -> None:
    """Register the ``tune`` subcommand."""
    p = sub.add_parser("tune", help="search per-layer bit-widths for a RISC-V target",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2",
                   help="a bundled trained model (tvm_mpq.zoo.models.load_pretrained), "
                        "package.module:factory (with --weights), a torch.export.save file "
                        "(.pt2), or a torch.save(model) file")
    p.add_argument("--weights", default=None, help="state dict for --model package.module:factory")
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--data", default=None,
                   help=".npz with calib, eval_x and eval_y (or eval_x and --metric), or an "
                        "ImageFolder directory (DIR/<class>/<image>, or DIR/train + DIR/val), "
                        "instead of --dataset; the input shape comes from the data")
    p.add_argument("--metric", default=None,
                   help="package.module:function, function(forward, eval_x) -> float (higher "
                        "is better unless --metric-mode min) for --data without eval_y")
    p.add_argument("--metric-mode", default="max", choices=("max", "min"),
                   help="min: --metric returns an error or a loss (lower is better)")
    p.add_argument("--target", default="riscv64-zbb",
                   help="riscv64-zbb (rv64gc_zbb), riscv64 (rv64gc), riscv64-v, riscv32, host, "
                        "or a profile name")
    p.add_argument("--backend", default="spike", choices=(*BACKENDS, "rpc"),
                   help="rpc: measure every kernel on the simulator hosts of --tracker / --key")
    p.add_argument("--tracker", default=None, help="HOST:PORT of the TVM RPC tracker (--backend rpc)")
    p.add_argument("--key", default=None,
                   help="key of the servers at the tracker, e.g. spike-rv64gc_zbb (--backend rpc)")
    p.add_argument("--out", "--workdir", dest="out", default="runs/tune",
                   help="work/result directory (re-running resumes)")
    p.add_argument("--bits", type=_bits_list, default=[(8, 8), (4, 8), (4, 4), (2, 4), (2, 2)],
                   help="candidate per-layer bits, e.g. w8a8,w4a4,w2a2 (fp32 always allowed)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0,
                   help="in accuracy points (hundredths of --metric's value)")
    p.add_argument("--latency-budget", type=float, default=None)
    p.add_argument("--size-budget", type=float, default=None, help="weight bytes")
    p.add_argument("--ram-budget", type=float, default=None,
                   help="RAM bytes of the chosen plan's standalone artifact (data + bss + arena "
                        "+ measured stack; exact: built and run on the bare-metal backend)")
    p.add_argument("--flash-budget", type=float, default=None,
                   help="flash bytes of the chosen plan's standalone artifact (text + rodata "
                        "+ data)")
    p.add_argument("--calib", type=int, default=256, help="calibration images (train split)")
    p.add_argument("--eval", type=int, default=1000, help="held-out test images for accuracy")
    p.add_argument("--sens-samples", type=int, default=512,
                   help="held-out images for per-layer sensitivity (as tune()'s default)")
    add_search_options(p)
    p.add_argument("--measure-budget", type=int, default=None,
                   help="kernels in the initial measurement design (default: every distinct "
                        "workload at every variant and bits); the cost model predicts the rest")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="MetaSchedule trials per measured kernel, the same for every kernel and "
                        "baseline (0: default schedules); compiles use the tuned schedules")
    p.add_argument("--retry-failed", action="store_true",
                   help="measure again every kernel whose record in --out's database failed "
                        "(a run that failed for good stays failed on resume otherwise)")
    p.add_argument("--prior-workloads", type=int, default=0,
                   help="also measure this many generic layer shapes for the cost model")
    p.add_argument("--repair-plans", type=int, default=8,
                   help="near-miss front plans whose bits are raised into the accuracy budget (0: off)")
    p.add_argument("--train", type=int, default=10000,
                   help="training images for QAT and DNAS (train split; only with --qat-beacons "
                        "or --search dnas / hybrid)")
    p.add_argument("--no-final", action="store_true",
                   help="skip the end-to-end standalone measurement and compiled-model accuracy")
    p.add_argument("--glue", choices=GLUES, default="integer",
                   help="what the compiled plans compute between layers: integer (integer-only "
                        "inference, the default) or float (float quantize/dequantize around "
                        "every layer, for comparison); pricing, accuracy and compiles follow it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show third-party warnings (torch, TVM), hidden by default")
    p.set_defaults(func=run)


def quiet_third_party_warnings() -> None:
    """Hide warnings raised outside tvm_mpq (e.g. torch.export's ``FutureWarning ...
    LeafSpec`` on every run): the console keeps ours."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        if "tvm_mpq" in filename.replace(os.sep, "/"):
            original(message, category, filename, lineno, file, line)

    original = warnings.showwarning
    warnings.showwarning = show


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~tvm_mpq.tuner.config.TuneConfig` of the command's options."""
    from tvm_mpq.tuner.config import TuneConfig

    return TuneConfig.from_kwargs(
        max_accuracy_drop=args.max_accuracy_drop, latency_budget=args.latency_budget,
        size_budget=args.size_budget, ram_budget=args.ram_budget,
        flash_budget=args.flash_budget, backend=args.backend, tracker=args.tracker,
        key=args.key, bits=args.bits,
        pop_size=args.pop_size, generations=args.generations, active_rounds=args.active_rounds,
        sensitivity_samples=args.sens_samples, final_measure=not args.no_final,
        qat_beacons=args.qat_beacons, qat_steps=args.qat_steps, qat=args.qat,
        repair_plans=args.repair_plans,
        prior_workloads=args.prior_workloads, measure_budget=args.measure_budget,
        tune_trials=args.tune_trials, search=args.search, dnas_cost=args.dnas_cost,
        dnas_steps=args.dnas_steps, dnas_cost_weights=args.dnas_cost_weights,
        seed=args.seed, glue=args.glue,
        metric_mode=args.metric_mode)


def inputs_from_args(args: argparse.Namespace) -> Any:
    """Model, data and metric of the command (:mod:`tvm_mpq.cli.user_inputs`)."""
    from tvm_mpq.cli.user_inputs import UserInputs, load_data, load_model

    model, info = load_model(args.model, args.weights)
    if args.data and (args.qat_beacons or args.search != "nsga2"):
        raise ValueError("--qat-beacons and --search dnas / hybrid need training data: use "
                         "the Python API's train_data")
    if args.data:
        calib, eval_data, eval_fn = load_data(args.data, args.metric, args.calib, args.eval,
                                              args.seed)
        return UserInputs(model, info, calib, eval_data, eval_fn, calib[:1],
                          f"{args.data} ({'its labels' if eval_data else args.metric})")
    if args.metric:
        raise ValueError("--metric goes with --data (the bundled dataset has labels)")
    if args.metric_mode != "max":
        raise ValueError("--metric-mode min goes with --data and --metric (top-1 accuracy is "
                         "maximised)")
    from tvm_mpq.zoo.fashion_mnist import calib_subset, load_fashion_mnist

    calib, _ = calib_subset(args.calib, seed=args.seed)
    x_test, y_test = load_fashion_mnist("test", limit=args.eval)
    return UserInputs(model, info, calib, (x_test, y_test), None, x_test[:1],
                      f"the first {args.eval} {args.dataset} test images")


def forget_failed_records(workdir: str) -> None:
    """--retry-failed: drop the failed records of the workdir's database, and the
    checkpoints of the measure stage and of every stage after it (they were built on those
    records), so the kernels are measured again and the search runs on the new numbers."""
    from tvm_mpq.tuner.checkpoint import Manifest
    from tvm_mpq.tuner.costs import open_db
    from tvm_mpq.tuner.stages import default_stages

    if not os.path.exists(os.path.join(workdir, "measurements.sqlite")):
        return
    n = open_db(workdir).forget_failed()
    print(f"[tvm-mpq] --retry-failed: {n} failed record(s) will be measured again")
    if n:
        names = [s.name for s in default_stages()]
        Manifest(workdir).forget(names[names.index("measure"):])


def run(args: argparse.Namespace) -> int:
    import torch

    import tvm_mpq

    if not args.verbose:
        quiet_third_party_warnings()
    torch.manual_seed(args.seed)
    from tvm_mpq.frontend.importer import UnsupportedOperatorError
    from tvm_mpq.measure.toolchain import ToolchainError

    try:
        ui = inputs_from_args(args)
        config = config_from_args(args)
    except ValueError as e:
        print(f"tvm-mpq tune: error: {e}", file=sys.stderr)
        return 2
    train = None
    if args.qat_beacons or args.search != "nsga2":
        from tvm_mpq.zoo.fashion_mnist import calib_subset

        train = calib_subset(args.train, seed=args.seed + 1)
    if args.retry_failed:
        forget_failed_records(args.out)
    t0 = time.time()
    try:
        res = tvm_mpq.tune(ui.model, ui.example, args.target, calib_data=ui.calib,
                           eval_data=ui.eval_data, eval_fn=ui.eval_fn, train_data=train,
                           workdir=args.out, config=config)
    except (ValueError, ConnectionError, ToolchainError, UnsupportedOperatorError) as e:
        if args.verbose:
            raise
        print(f"tvm-mpq tune: error: {e} (-v shows where)", file=sys.stderr)
        return 2
    print()
    print(f"model {args.model} (fp32 test accuracy {ui.info.get('test_acc')}); accuracies "
          f"below on {ui.source}")
    print(f"target {res.profile}, backend {res.backend}, {res.glue} glue, cost in "
          f"{res.cost_unit}; search wall time {time.time() - t0:.0f} s")
    print(res.message)
    print()
    print(res.table())
    print()
    print(f"cost model: {res.costmodel_report.get('summary', res.costmodel_report)}")
    print(f"result and report: {os.path.join(args.out, 'result')} (summary.md, pareto.png, bits.png)")
    return 0
