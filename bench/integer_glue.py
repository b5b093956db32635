"""Integer-only inference against the float glue, whole model, on Spike (issue 11).

For each plan and ISA the bundled MobileNetV2 is compiled twice -- ``glue="float"`` (quantize
-> kernel -> dequantize around every layer, float ReLU / add / pooling) and ``glue="integer"``
(requantization epilogues, integer add and pooling) -- exported as the standalone bare-metal
artifact and run on Spike with per-op counts. Reported: retired instructions of one
inference and their split into the quantized kernels, the fp32 kernels (+ bias) and the glue
(everything else: quantize / dequantize / requantize, add, pooling, reshapes), and with
``--accuracy N`` the top-1 accuracy of both torch references on N test images
(``fake_quant(plan)`` vs ``fake_quant(plan, integer_only=True)``; the compiled models equal
them, tests/test_integer.py).

Plans: ``int8`` (uniform w8a8, int8 kernels) always; with ``--result DIR`` (a ``tune()``
result, e.g. of the README's main command) also its ``w8a8`` baseline (per-layer fastest
8-bit variant) and its ``best`` plan.

    python bench/integer_glue.py --result RUN/result --profiles rv64gc_zbb rv64gc rv32imc
    python bench/integer_glue.py --result RUN/result --accuracy 10000 --profiles
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def split(op_table: list[tuple[str, int, int]]) -> dict[str, int]:
    """Instructions per category from ``StandaloneResult.op_table()``."""
    out = {"kernels": 0, "fp32 kernels": 0, "glue ops": 0}
    for name, _, n in op_table:
        if "qk_fp32" in name or "bias_add" in name:
            out["fp32 kernels"] += n
        elif "qk_" in name:
            out["kernels"] += n
        else:
            out["glue ops"] += n
    return out


def load_plans(result: str | None, model) -> dict:
    import tvm_mpq

    plans = {"int8": tvm_mpq.QuantPlan.uniform(model, w_bits=8, a_bits=8)}
    if result:
        r = json.loads((Path(result) / "result.json").read_text())
        if r["baselines"].get("w8a8"):
            plans["w8a8"] = tvm_mpq.QuantPlan.from_dict(r["baselines"]["w8a8"]["plan"])
        if r.get("best"):
            plans["best"] = tvm_mpq.QuantPlan.from_dict(r["best"]["plan"])
    return plans


def measure(model, x1, plan, qp, profile: str, glue: str, workdir: str) -> dict:
    import tvm_mpq
    from tvm_mpq.deploy import export_standalone, run_standalone

    cm = tvm_mpq.compile(model, x1, plan, profile, qparams=qp, glue=glue)
    art = export_standalone(cm, workdir)
    r = run_standalone(art, x1.numpy(), backend="spike", profile_ops=True)
    if r.status != "ok":
        return {"status": r.status, "message": r.message}
    return {"status": "ok", "instructions": r.instructions, **split(r.op_table()),
            "ops": r.op_table()[:8]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--result", default=None, help="a tune() result directory (plans)")
    ap.add_argument("--profiles", nargs="*", default=["rv64gc_zbb", "rv64gc", "rv32imc"])
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--accuracy", type=int, default=0, help="test images for the accuracy")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import tvm_mpq
    from tvm_mpq.quant.qparams_cache import QParamsCache
    from tvm_mpq.zoo.fashion_mnist import calib_subset, evaluate, load_fashion_mnist
    from tvm_mpq.zoo.models import load_pretrained

    model, _ = load_pretrained("mobilenet_v2")
    calib, _ = calib_subset(args.calib, seed=0)
    x, y = load_fashion_mnist("test", limit=max(args.accuracy, 1))
    cache = QParamsCache(model, calib)  # the parameters tune() uses
    plans = load_plans(args.result, model)
    rows = []
    for pname, plan in plans.items():
        qp = cache(plan)
        if args.accuracy:
            accs = {g: evaluate(tvm_mpq.fake_quant(model, plan, qparams=qp,
                                                   integer_only=g == "integer"),
                                x[:args.accuracy], y[:args.accuracy])
                    for g in ("float", "integer")}
            print(f"{pname}: accuracy on {args.accuracy} images: float glue {accs['float']:.4f}"
                  f", integer-only {accs['integer']:.4f}", flush=True)
            rows.append({"plan": pname, "accuracy": accs})
        for prof in args.profiles:
            for glue in ("float", "integer"):
                with tempfile.TemporaryDirectory() as d:
                    m = measure(model, x[:1], plan, qp, prof, glue, d)
                rows.append({"plan": pname, "profile": prof, "glue": glue, **m})
                if m["status"] != "ok":
                    print(f"{pname} {prof} {glue}: {m['status']} {m['message'][:200]}", flush=True)
                    continue
                t = m["instructions"]
                print(f"{pname:5s} {prof:11s} {glue:7s} {t:12,d}  kernels {m['kernels'] / t:6.1%}"
                      f"  fp32 {m['fp32 kernels'] / t:6.1%}  glue {m['glue ops'] / t:6.1%}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
