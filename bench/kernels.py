"""Host kernel benchmark: default vs MetaSchedule-tuned latency per variant and bits.

For a MobileNet-like layer set, every (variant, bits) kernel is compiled with its
default lowering and tuned with MetaSchedule (same trial budget for baselines and
our kernels), the tuned schedule validated against the numpy reference, and timed
with TVM's time evaluator in the same run. Ratios are against the tuned int8 and
fp32 baselines of the same layer.

    python bench/kernels.py --trials 128            # full
    python bench/kernels.py --trials 16 --layers conv3x3_64   # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import tvm

from tvm_mpq.schedules import Conv2dWorkload, build_kernel, make_kernel
from tvm_mpq.schedules.ms_tune import tune_kernel, validation_inputs

LAYERS = {
    "pw_32to64_28": Conv2dWorkload.make((1, 32, 28, 28), (64, 32, 1, 1)),
    "dw3x3_64_28": Conv2dWorkload.make((1, 64, 28, 28), (64, 1, 3, 3), 1, 1, groups=64),
    "conv3x3_64_28": Conv2dWorkload.make((1, 64, 28, 28), (64, 64, 3, 3), 1, 1),
    "pw_128to128_14": Conv2dWorkload.make((1, 128, 14, 14), (128, 128, 1, 1)),
}
CONFIGS = [("fp32", 8, 8), ("int8", 8, 8), ("unpack", 4, 8), ("unpack", 2, 8),
           ("bitserial", 4, 4), ("bitserial", 2, 2), ("bitserial", 1, 1)]


def time_ms(lib, kd, repeat: int = 5) -> float:
    x, w = validation_inputs(kd, seed=1)[0]
    args = [tvm.runtime.tensor(a) for a in kd.make_args(x, w)]
    f = lib.mod.time_evaluator("kernel", tvm.cpu(), number=10, repeat=repeat, min_repeat_ms=50)
    return float(np.median(f(*args).results)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=128)
    ap.add_argument("--layers", nargs="*", default=list(LAYERS))
    ap.add_argument("--configs", nargs="*", default=None,
                    help="e.g. bitserial:2:2 int8:8:8 (default: all)")
    ap.add_argument("--work-dir", default="runs/bench_kernels")
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    configs = CONFIGS if not args.configs else [
        (c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in args.configs]

    rows = []
    for lname in args.layers:
        wl = LAYERS[lname]
        for variant, wb, ab in configs:
            kd = make_kernel(wl, variant, wb, ab)
            t0 = time.time()
            default = time_ms(build_kernel(kd), kd)
            wd = os.path.join(args.work_dir, f"{lname}_{variant}_w{wb}a{ab}")
            tuned = tune_kernel(kd, "llvm", wd, max_trials=args.trials)
            tuned_ms = time_ms(build_kernel(kd, schedule=tuned.mod), kd) if tuned.ok else None
            rows.append(dict(layer=lname, macs=wl.macs, variant=variant, w_bits=wb, a_bits=ab,
                             default_ms=default, tuned_ms=tuned_ms, rejected=len(tuned.rejected),
                             trials=args.trials, wall_s=time.time() - t0))
            print(f"  {lname} {variant} w{wb}a{ab}: default {default:.3f} ms, tuned "
                  f"{tuned_ms if tuned_ms is None else round(tuned_ms, 3)} ms "
                  f"({len(tuned.rejected)} records rejected)", flush=True)

    print(f"\nHost: {tvm.target.codegen.llvm_get_system_cpu()}, {args.trials} MetaSchedule trials "
          "per kernel, latency = median of TVM time_evaluator repeats\n")
    print("| layer | variant | bits | default ms | tuned ms | tuned vs int8 | tuned vs fp32 | rejected |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        base = {b["variant"]: b["tuned_ms"] for b in rows if b["layer"] == r["layer"]
                and b["variant"] in ("int8", "fp32")}

        def ratio(b, r=r, base=base):
            return (f"{base[b] / r['tuned_ms']:.2f}x" if base.get(b) and r["tuned_ms"] else "-")

        tuned = f"{r['tuned_ms']:.3f}" if r["tuned_ms"] else "FAILED"
        print(f"| {r['layer']} | {r['variant']} | w{r['w_bits']}a{r['a_bits']} | "
              f"{r['default_ms']:.3f} | {tuned} | {ratio('int8')} | {ratio('fp32')} | {r['rejected']} |")
    print("\n(ratio = baseline tuned ms / this tuned ms; > 1 means faster than the baseline)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
