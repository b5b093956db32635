"""Accuracy through the TVM-compiled model and whole-model retired instructions.

For the bundled MobileNetV2 (Fashion-MNIST): fp32, uniform w8a8 (int8 kernels), w4a4,
w2a2 and a mixed plan (first and last layers w8a8, the rest w4a4; or a plan JSON given
with --plan), each
  * compiled for the host and evaluated on the test images (accuracy through TVM, not torch),
  * compiled for rv64gc_zbb and rv64gc, exported as the standalone artifact and run on
    Spike: retired instructions of one whole inference (deterministic).

    python bench/compiled_models.py --eval 2000
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--eval", type=int, default=2000)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--profiles", nargs="*", default=["rv64gc_zbb", "rv64gc"])
    ap.add_argument("--plan", default=None, help="extra plan JSON (e.g. a tune() result's best)")
    ap.add_argument("--out", default="runs/compiled_models")
    args = ap.parse_args()

    import tvm_mpq
    from tvm_mpq.deploy import export_standalone, run_standalone
    from tvm_mpq.quant.calibration import calibrate
    from tvm_mpq.zoo.fashion_mnist import calib_subset, evaluate, load_fashion_mnist
    from tvm_mpq.zoo.models import load_pretrained

    model, info = load_pretrained(args.model)
    calib, _ = calib_subset(args.calib, seed=0)
    x, y = load_fashion_mnist("test", limit=args.eval)
    Q = tvm_mpq.QuantPlan
    plans = {"fp32": Q.fp32(model), "w8a8 int8": Q.uniform(model, w_bits=8, a_bits=8, variant="int8"),
             "w4a4": Q.uniform(model, w_bits=4, a_bits=4), "w2a2": Q.uniform(model, w_bits=2, a_bits=2)}
    mixed = Q.uniform(model, w_bits=4, a_bits=4)
    names = mixed.layers()
    for n in (names[0], names[-1]):
        mixed.set(n, w_bits=8, a_bits=8)
    plans["mixed (ends w8a8, rest w4a4)"] = mixed
    if args.plan:
        plans[os.path.basename(args.plan)] = Q.load(args.plan)

    rows = []
    for label, plan in plans.items():
        t0 = time.time()
        qp = calibrate(model, plan, calib) if plan.quantized_layers() else None
        host = tvm_mpq.compile(model, torch.zeros(100, 1, 28, 28), plan, "host", qparams=qp)
        acc = evaluate(lambda b, h=host: h.predict(b), x, y, batch_size=100)
        torch_acc = evaluate(tvm_mpq.fake_quant(model, plan, qparams=qp) if qp else model, x, y)
        row = {"plan": label, "acc": acc, "torch_acc": torch_acc}
        for prof in args.profiles:
            cm = tvm_mpq.compile(model, x[:1], plan, prof, qparams=qp)
            art = export_standalone(cm, os.path.join(args.out, prof, label.split()[0]))
            r = run_standalone(art, x[:1].numpy(), backend="spike")
            row[prof] = r.instructions if r.status == "ok" else f"{r.status}: {r.message[:60]}"
        rows.append(row)
        print(f"  {label}: {row} ({time.time() - t0:.0f} s)", flush=True)

    print(f"\n{args.model}: fp32 checkpoint test accuracy {100 * info['test_acc']:.2f}% (10k); "
          f"below: first {args.eval} test images\n")
    cols = " | ".join(f"{p} instructions | vs int8" for p in args.profiles)
    print(f"| plan | accuracy (TVM) | accuracy (torch fake-quant) | {cols} |")
    print("|---|---:|---:|" + "---:|---:|" * len(args.profiles))
    base = next(r for r in rows if r["plan"].startswith("w8a8"))
    for r in rows:
        cells = []
        for p in args.profiles:
            v, b = r[p], base[p]
            ok = isinstance(v, int) and isinstance(b, int)
            cells += [f"{v:,}" if isinstance(v, int) else str(v), f"{v / b:.3f}" if ok else "-"]
        print(f"| {r['plan']} | {100 * r['acc']:.2f}% | {100 * r['torch_acc']:.2f}% | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
