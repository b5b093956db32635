"""A tune() result's plan as the MCU firmware would run it (issue 11).

The plan (the result's ``best``, or one of its baselines) is compiled with the tuned glue for
the tuned profile (or ``--profile``) with ``integer_io=True`` where the plan allows it (its
first and last layers quantized; otherwise float in / float out), exported as the standalone
bare-metal artifact (with the board's RAM/flash when given) and run on Spike and QEMU
(``-icount``) for N Fashion-MNIST test images. For every image the artifact's output must
equal the torch reference of the same compiled model (``result.reference(cm)``:
``fake_quant(..., integer_only=True, integer_io=...)``) -- codes bit for bit with integer IO;
float outputs to float32 rounding otherwise -- and the backends must agree on the retired
instructions. Printed: the memory table of the artifact, instructions, agreement, top-1 of
the N images through the artifact, and (rv32imc) the soft-float routines the link pulls in.

    python bench/deploy_plan.py --result RUN/result --images 16
    python bench/deploy_plan.py --result RUN/result --plan w8a8 --ram-kib 256 --flash-kib 2048
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

#: libgcc soft-float / soft-double routines (__addsf3, __floatsisf, __fixsfsi, __extendsfdf2 ...)
SOFT_FLOAT = re.compile(r"^__\w*[sd]f\w*$")


def soft_float_symbols(elf: Path) -> list[str]:
    """Soft-float routines defined in the linked program (what the link pulled in)."""
    from tvm_mpq.measure.toolchain import find_gcc

    nm = find_gcc()[:-len("gcc")] + "nm"
    p = subprocess.run([nm, str(elf)], capture_output=True, text=True, check=True)
    return sorted({w[-1] for w in map(str.split, p.stdout.splitlines())
                   if w and SOFT_FLOAT.match(w[-1])})


def bits(plan) -> str:
    c = Counter("fp32" if plan[n].is_fp32 else f"w{plan[n].w_bits}a{plan[n].a_bits}"
                for n in plan.layers())
    return ", ".join(f"{k} x{v}" for k, v in c.most_common())


def compile_plan(res, plan, profile: str):
    """Integer IO where the plan allows it, else float IO (the reason is printed)."""
    try:
        return res.compile(plan, profile, integer_io=res.glue == "integer")
    except ValueError as e:
        print(f"integer_io not possible for this plan ({e}); float input/output")
        return res.compile(plan, profile)


def model_input(cm, x: torch.Tensor) -> np.ndarray:
    if not cm.integer_io:
        return x.numpy().astype(np.float32)
    s, z = cm.input_quant
    return np.clip(np.rint(x.numpy().astype(np.float32) / np.float32(s)) + z, 0, 255).astype(np.uint8)


def agree(out: np.ndarray, want: np.ndarray, integer: bool) -> bool:
    if integer:
        return bool(np.array_equal(out, want))
    return bool(np.allclose(out, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max()))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--result", required=True, help="a tune() result directory")
    ap.add_argument("--plan", default="best", help="best or a baseline name (w8a8, w4a4, ...)")
    ap.add_argument("--profile", default=None, help="default: the result's profile")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--backends", nargs="*", default=["spike", "qemu"])
    ap.add_argument("--ram-kib", type=int, default=None)
    ap.add_argument("--flash-kib", type=int, default=None)
    ap.add_argument("--out", default="runs/deploy_plan")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from tvm_mpq.deploy import export_standalone, load_standalone, run_standalone
    from tvm_mpq.tuner.result import load_result
    from tvm_mpq.zoo.fashion_mnist import load_fashion_mnist

    res = load_result(args.result)
    point = res.best if args.plan == "best" else res.baselines.get(args.plan)
    if point is None:
        raise SystemExit(f"no plan {args.plan!r} in {args.result} "
                         f"(baselines: {sorted(res.baselines)})")
    profile = args.profile or res.profile
    print(f"plan {args.plan}: {bits(point.plan)} | profile {profile} | glue {res.glue}")
    cm = compile_plan(res, point.plan, profile)
    ref = res.reference(cm)
    out_dir = Path(args.out) / f"{args.plan}_{profile}"
    art = export_standalone(cm, str(out_dir), ram_kib=args.ram_kib, flash_kib=args.flash_kib)

    x, y = load_fashion_mnist("test", limit=args.images)
    rows, correct, t0 = [], 0, time.time()
    for i in range(len(x)):
        q = model_input(cm, x[i:i + 1])
        with torch.no_grad():
            want = ref(torch.from_numpy(q)).numpy()
        runs = {b: run_standalone(art, q, b) for b in args.backends}
        bad = {b: r.message for b, r in runs.items() if r.status != "ok"}
        if bad:
            raise SystemExit(f"image {i}: {bad}")
        ok = all(agree(r.output, want, cm.integer_io) for r in runs.values())
        counts = {b: r.instructions for b, r in runs.items()}
        same = len(set(counts.values())) == 1
        correct += int(np.argmax(runs[args.backends[0]].output) == int(y[i]))
        rows.append({"image": i, "equal_reference": ok, "same_instructions": same, **counts})
        print(f"  image {i}: reference {'==' if ok else '!='} artifact, instructions {counts}")
    art = load_standalone(art.directory)  # with the stack measured by the runs
    print(art.memory_table())
    floats = (soft_float_symbols(Path(art.directory) / "build" / "spike" / "model.elf")
              if profile.startswith("rv32") else [])
    summary = {
        "plan": args.plan, "bits": bits(point.plan), "profile": profile, "glue": res.glue,
        "integer_io": cm.integer_io, "images": len(x), "top1": correct / len(x),
        "all_equal_reference": all(r["equal_reference"] for r in rows),
        "backends_agree": all(r["same_instructions"] for r in rows),
        "memory": art.memory, "soft_float_routines": floats, "rows": rows,
        "wall_s": round(time.time() - t0, 1),
    }
    print(f"all {len(x)} images equal the reference: {summary['all_equal_reference']}; "
          f"Spike and QEMU agree on instructions: {summary['backends_agree']}; "
          f"top-1 through the artifact {correct}/{len(x)}; soft-float routines linked: "
          f"{floats or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
