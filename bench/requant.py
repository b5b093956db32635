"""Instruction cost of the integer requantization epilogue (issue 11 building block).

``tvm_mpq.compiler.requant_ops.requantize_te`` on a 1x64x28x28 int32 accumulator (NCHW,
per-channel multiplier / shift / bias) -> uint8, measured bare metal on Spike with
``tvm_mpq.measure.baremetal.run_kernels``: every output is checked on the target against
``tvm_mpq.quant.requant.requantize_ref``. Both arithmetic forms (``wide``: int64 product;
``hi32``: int32 operand, unsigned 32-bit multiplier, high word: ``mul`` + ``mulhsu`` on RV32)
are measured with TVM's default lowering and with ``schedule_requantize`` (spatial loops
fused, inner loop unrolled). Instructions/element include the packed call itself (a few
hundred instructions over 50,176 elements).

The data are a plausible layer: real multipliers 10^U(-3.3, -2.7) (shifts -9 .. -11),
accumulators ~ N(0, 60 / multiplier), bias U(-2000, 2000), output zero point 128 and
8-bit range, so about 3% of the outputs clip (rv32imc's clamp is branchy, so its count
depends slightly on that fraction; rv64gc_zbb's min/max does not).

The anchor is the issue's figure for muRISCV-NN's scalar requantization epilogue on the
same simulator (GCC -O3): about 31 instructions per element on rv64gc_zbb and 35 on
rv32imc; it is not re-measured here.

    python bench/requant.py                          # rv64gc_zbb and rv32imc
    python bench/requant.py --profiles rv32imc --activation relu6 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# allow `python bench/requant.py` from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from tvm import te  # noqa: E402

from tvm_mpq.compiler.requant_ops import FORMS, requantize_te, schedule_requantize  # noqa: E402
from tvm_mpq.measure.baremetal import KernelCase, run_kernels  # noqa: E402
from tvm_mpq.quant.requant import clamp_bounds, quantize_multiplier, requantize_ref  # noqa: E402

SHAPE = (1, 64, 28, 28)
#: the issue's muRISCV-NN figure (instructions per output element), not measured here
ANCHOR = {"rv64gc_zbb": 31, "rv32imc": 35}
OUT_SCALE = 0.05
OUT_ZP = 128


def layer_data(seed: int = 0, activation: str | None = None) -> dict:
    """Accumulator, bias, multiplier, shift and clamp bounds of a plausible layer."""
    rng = np.random.default_rng(seed)
    c = SHAPE[1]
    real = 10.0 ** rng.uniform(-3.3, -2.7, c)
    mult, shift = quantize_multiplier(real)
    sigma = 60.0 / real
    acc = rng.normal(0.0, 1.0, SHAPE) * sigma[None, :, None, None]
    acc = np.clip(np.rint(acc), -(2**31), 2**31 - 1).astype(np.int32)
    bias = rng.integers(-2000, 2001, c).astype(np.int32)
    qmin, qmax = clamp_bounds(OUT_SCALE, OUT_ZP, 8, activation)
    expected = requantize_ref(acc, bias, mult, shift, OUT_ZP, qmin, qmax).astype(np.uint8)
    return {"acc": acc, "bias": bias, "mult": mult, "shift": shift, "qmin": qmin,
            "qmax": qmax, "expected": expected}


def requant_func(form: str, scheduled: bool, data: dict, unroll: int = 4):
    acc = te.placeholder(SHAPE, "int32", name="acc")
    bias = te.placeholder((SHAPE[1],), "int32", name="bias")
    mult = te.placeholder((SHAPE[1],), "int32", name="multiplier")
    shift = te.placeholder((SHAPE[1],), "int32", name="shift")
    out = requantize_te(acc, bias, mult, shift, OUT_ZP, data["qmin"], data["qmax"], "uint8",
                        form=form)
    func = te.create_prim_func([acc, bias, mult, shift, out])
    return schedule_requantize(func, unroll) if scheduled else func


def cases(data: dict, unroll: int) -> list[tuple[str, str, KernelCase]]:
    rows = []
    for form in FORMS:
        for scheduled in (False, True):
            sched = f"fused+unroll{unroll}" if scheduled else "default"
            name = f"requant_{form}_{'sched' if scheduled else 'default'}"
            args = [data["acc"], data["bias"], data["mult"], data["shift"],
                    np.zeros(SHAPE, np.uint8)]
            case = KernelCase(name, requant_func(form, scheduled, data, unroll), args,
                              {4: data["expected"]})
            rows.append((form, sched, case))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="*", default=["rv64gc_zbb", "rv32imc"])
    ap.add_argument("--backend", default="spike")
    ap.add_argument("--activation", default=None, choices=["relu", "relu6"])
    ap.add_argument("--unroll", type=int, default=4)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)

    data = layer_data(0, args.activation)
    elements = int(np.prod(SHAPE))
    clipped = float(np.mean((data["expected"] == data["qmin"]) | (data["expected"] == data["qmax"])))
    print(f"requantize 1x64x28x28 int32 -> uint8, activation={args.activation}, "
          f"outputs at a clamp bound: {clipped:.1%}, backend={args.backend}")
    head = (f"{'profile':<12} {'form':<6} {'schedule':<16} {'elements':>9} {'instructions':>13} "
            f"{'instr/elem':>11} {'issue anchor (muRISCV-NN)':>26}")
    print(head)
    print("-" * len(head))
    rows, ok = [], True
    for prof in args.profiles:
        built = cases(data, args.unroll)
        runs = run_kernels([c for _, _, c in built], prof, args.backend)
        for (form, sched, _), r in zip(built, runs, strict=True):
            per = r.instructions / elements if r.status == "ok" else None
            anchor = ANCHOR.get(prof)
            cell = f"{r.instructions:>13,}" if per is not None else f"{r.status:>13}"
            per_cell = f"{per:>11.2f}" if per is not None else f"{'-':>11}"
            print(f"{prof:<12} {form:<6} {sched:<16} {elements:>9,} {cell} {per_cell} "
                  f"{('~' + str(anchor)) if anchor else '-':>26}")
            if r.status != "ok":
                ok = False
                print(f"    {r.message}")
            rows.append({"profile": prof, "form": form, "schedule": sched,
                         "elements": elements, "status": r.status,
                         "instructions": r.instructions, "per_element": per,
                         "issue_anchor": anchor})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
