"""Quantization-aware fine-tuning: fixed calibrated scales against learned step sizes (LSQ).

For each uniform bit-width of a bundled model: post-training accuracy, then the same
fine-tuning budget (steps x batch of training images, Adam, cosine decay) with the scales
fixed (``method="fixed"``) and with LSQ (``method="lsq"``), accuracy of the fake-quant
reference (what the compiled model computes) on the first ``--test`` test images, which the
fine-tuning never sees. One run, same data and seeds for both methods.

    python bench/qat_methods.py                                   # mobilenet_v2, w4a4 w2a4
    python bench/qat_methods.py --bits w4a4 --steps 300 --test 2000 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# allow `python bench/qat_methods.py` from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tvm_mpq.quant.calibration import calibrate  # noqa: E402
from tvm_mpq.quant.fakequant import fake_quant  # noqa: E402
from tvm_mpq.quant.plan import QuantPlan  # noqa: E402
from tvm_mpq.quant.qat import QAT_METHODS, qat_finetune  # noqa: E402
from tvm_mpq.zoo.fashion_mnist import calib_subset, evaluate, load_fashion_mnist  # noqa: E402
from tvm_mpq.zoo.models import load_pretrained  # noqa: E402


def _bits(s: str) -> tuple[int, int]:
    w, a = s.lower().lstrip("w").split("a")
    return int(w), int(a)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, fine-tune every (bits, method) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--bits", nargs="+", default=["w4a4", "w2a4"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train", type=int, default=20000, help="training images drawn from")
    ap.add_argument("--test", type=int, default=2000, help="first N test images")
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, _ = load_pretrained(args.model)
    x, y = load_fashion_mnist("test", args.test)
    train = load_fashion_mnist("train", args.train)
    cx = calib_subset(args.calib, 0)[0]
    print(f"{args.model}: fp32 {100 * evaluate(model, x, y):.2f}% on the first {args.test} test "
          f"images; fine-tuning {args.steps} steps x {args.batch} of {args.train} train images")
    print("| bits | PTQ | " + " | ".join(QAT_METHODS) + " | seconds |")
    print("|---|---:|" + "---:|" * len(QAT_METHODS) + "---|")
    for b in args.bits:
        plan = QuantPlan.uniform(model, *_bits(b))
        qp = calibrate(model, plan, cx)
        cells = [f"{100 * evaluate(fake_quant(model, plan, qparams=qp), x, y):.2f}"]
        secs = []
        for method in QAT_METHODS:
            t = time.perf_counter()
            ft, qp2 = qat_finetune(model, plan, cx, train, qparams=qp, steps=args.steps,
                                   lr=args.lr, batch_size=args.batch, method=method)
            secs.append(f"{time.perf_counter() - t:.0f}")
            cells.append(f"{100 * evaluate(fake_quant(ft, plan, qparams=qp2), x, y):.2f}")
        print(f"| {b} | " + " | ".join(cells) + " | " + " / ".join(secs) + " |", flush=True)


if __name__ == "__main__":
    main()
