"""torchvision architectures through import, compile and Spike (random weights, no downloads).

For each architecture of :data:`tvm_mpq.zoo.torchvision_zoo.ARCHITECTURES` at a small input
(3 x SIZE x SIZE, 10 classes, random initialisation with non-trivial BatchNorm statistics):
  * import (torch.export -> Relax) and the import check (fp32 Relax vs torch);
  * conv / linear layers quantizable and kept fp32 (with the reason);
  * a random mixed plan (each layer w8a8 / w4a8 / w4a4 / w2a4 / w2a2, seeded), calibrated on
    random inputs, compiled for the host with the integer glue and compared with its torch
    reference (``fake_quant(..., integer_only=True)``): max |difference| / max |reference|;
  * with --profile, the fp32 and the mixed plan compiled for that profile, exported as the
    standalone artifact and run on Spike: retired instructions of one inference.

Needs torchvision (see tvm_mpq.zoo.torchvision_zoo; scripts/setup.sh installs it):

    python bench/torchvision_archs.py --size 64 --profile rv64gc_zbb
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

import torch

BITS = ((8, 8), (4, 8), (4, 4), (2, 4), (2, 2))


def random_plan(table: Any, seed: int) -> Any:
    """Every quantizable layer at a random bits pair of :data:`BITS`."""
    from tvm_mpq.quant.plan import QuantPlan

    rng = random.Random(seed)
    plan = QuantPlan.uniform(table)
    for n in plan.layers():
        plan.set(n, *rng.choice(BITS))
    return plan


def _rel(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check_architecture(name: str, size: int, profile: str | None, out: str,
                       seed: int = 0) -> dict[str, Any]:
    """One row of the table (see the module docstring)."""
    import tvm_mpq
    from tvm_mpq.frontend import import_model
    from tvm_mpq.frontend.verify import verify_import
    from tvm_mpq.quant.calibration import calibrate
    from tvm_mpq.quant.folding import fold_bn
    from tvm_mpq.zoo.torchvision_zoo import torchvision_model

    model = torchvision_model(name, seed=seed)
    g = torch.Generator().manual_seed(seed)
    calib = torch.randn(16, 3, size, size, generator=g)
    x = calib[:2]
    table = import_model(fold_bn(model), (x[:1],)).table
    row: dict[str, Any] = {"arch": name, "layers": len(table),
                           "quantizable": len(table.quantizable_names()),
                           "fp32": sorted({r.reason for r in table if not r.quantizable}),
                           "import_rel_err": verify_import(model, (x[:1],))}
    plan = random_plan(table, seed)
    qp = calibrate(model, plan, calib)
    host = tvm_mpq.compile(model, x, plan, "host", qparams=qp)
    ref = tvm_mpq.fake_quant(model, plan, qparams=qp, integer_only=True)
    with torch.no_grad():
        row["mixed_rel_err"] = _rel(host.predict(x), ref(x))
        row["mixed_vs_fp32"] = _rel(ref(x), model(x))
    if profile:
        from tvm_mpq.deploy import export_standalone, run_standalone

        for label, p in (("fp32", tvm_mpq.QuantPlan.fp32(table)), ("mixed", plan)):
            cm = tvm_mpq.compile(model, x[:1], p, profile, qparams=qp if label == "mixed" else None)
            art = export_standalone(cm, os.path.join(out, name, label))
            r = run_standalone(art, x[:1].numpy(), backend="spike")
            row[f"{label}_instructions"] = (r.instructions if r.status == "ok"
                                            else f"{r.status}: {r.message[:60]}")
    return row


def _cell(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else ("-" if v is None else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="input resolution (3 x SIZE x SIZE)")
    ap.add_argument("--profile", default=None, help="also run fp32 and the mixed plan on Spike")
    ap.add_argument("--arch", nargs="*", default=None, help="subset of the architectures")
    ap.add_argument("--out", default="runs/torchvision_archs")
    args = ap.parse_args()

    from tvm_mpq.zoo.torchvision_zoo import ARCHITECTURES, TorchvisionUnavailable, import_torchvision

    try:
        tv = import_torchvision()
    except TorchvisionUnavailable as e:
        raise SystemExit(f"skipped: {e}") from None
    rows = []
    for name in args.arch or list(ARCHITECTURES):
        t0 = time.time()
        rows.append(check_architecture(name, args.size, args.profile, args.out))
        print(f"  {name}: {rows[-1]} ({time.time() - t0:.0f} s)", flush=True)
    print(f"\ntorchvision {tv.__version__}, input 1x3x{args.size}x{args.size}, random weights\n")
    spike = (f" | {args.profile} fp32 instr. | mixed instr. | mixed / fp32" if args.profile else "")
    print("| architecture | conv/linear | quantizable | kept fp32 (why) | import rel. err | "
          f"mixed plan: compiled vs reference | reference vs fp32{spike} |")
    print("|---|---:|---:|---|---:|---:|---:|" + ("---:|---:|---:|" if args.profile else ""))
    for r in rows:
        cells = [r["arch"], str(r["layers"]), str(r["quantizable"]),
                 "; ".join(r["fp32"]) or "-", f"{r['import_rel_err']:.1e}",
                 f"{r['mixed_rel_err']:.1e}", f"{r['mixed_vs_fp32']:.2g}"]
        if args.profile:
            a, b = r.get("fp32_instructions"), r.get("mixed_instructions")
            ratio = f"{b / a:.3f}" if isinstance(a, int) and isinstance(b, int) else "-"
            cells += [_cell(a), _cell(b), ratio]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
