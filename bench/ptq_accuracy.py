"""Post-training quantization accuracy: old (v1) vs current calibration rules.

Prints, per model and uniform bit-width, the fake-quant test accuracy (the
compiled model computes the same numbers, see docs/quantization.md) with the
v1 rules (:data:`tvm_mpq.quant.calibration.LEGACY`) and with the current defaults,
plus any extra named recipes, all in one run on the same data.

    python bench/ptq_accuracy.py                       # both models, default bits
    python bench/ptq_accuracy.py --models mobilenet_v2 --bits w4a4 w2a4 --test 2000 --calib 256
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from tvm_mpq.quant.calibration import LEGACY, calibrate
from tvm_mpq.quant.fakequant import fake_quant
from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.zoo.fashion_mnist import calib_subset, evaluate, load_fashion_mnist
from tvm_mpq.zoo.models import load_pretrained

RECIPES: dict[str, dict[str, Any]] = {
    "v1": dict(LEGACY),
    "new": {},
    "act-out": {"act_method": "output", "weight_clip": "mse", "bias_correction": False},
    "w-out": {"act_method": "legacy", "weight_clip": "output", "bias_correction": False},
    "bc": {"act_method": "legacy", "weight_clip": "mse", "bias_correction": True},
    "ada": {"adaround_iters": 200},
}
"""Named keyword sets for :func:`~tvm_mpq.quant.calibration.calibrate` ("new" = the defaults)."""


def _bits(s: str) -> tuple[int, int]:
    w, a = s.lower().lstrip("w").split("a")
    return int(w), int(a)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every (model, bits, recipe) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet8"])
    ap.add_argument("--bits", nargs="+", default=["w8a8", "w4a8", "w4a4", "w2a4", "w2a2"])
    ap.add_argument("--recipes", nargs="+", default=["v1", "new"], choices=sorted(RECIPES))
    ap.add_argument("--test", type=int, default=2000, help="first N test images")
    ap.add_argument("--calib", type=int, default=256, help="calibration images (train split)")
    ap.add_argument("--seed", type=int, default=0, help="calibration subset seed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    x, y = load_fashion_mnist("test", args.test)
    cx = calib_subset(args.calib, args.seed)[0]
    head = f"{'model':14s} {'bits':6s}" + "".join(f" {r:>8s}" for r in args.recipes)
    print(f"test: first {args.test} images; calibration: {args.calib} train images "
          f"(seed {args.seed}); accuracy in %, calibration seconds in brackets")
    print(head)
    for name in args.models:
        model, _ = load_pretrained(name)
        print(f"{name:14s} {'fp32':6s} {100 * evaluate(model, x, y):8.2f}")
        for b in args.bits:
            w, a = _bits(b)
            plan = QuantPlan.uniform(model, w, a)
            cells, times = [], []
            for r in args.recipes:
                t = time.perf_counter()
                qp = calibrate(model, plan, cx, **RECIPES[r])
                times.append(time.perf_counter() - t)
                cells.append(100 * evaluate(fake_quant(model, plan, qparams=qp), x, y))
            print(f"{name:14s} {b:6s}" + "".join(f" {c:8.2f}" for c in cells)
                  + "   [" + " ".join(f"{t:.1f}" for t in times) + "]", flush=True)


if __name__ == "__main__":
    main()
