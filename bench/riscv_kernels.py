"""RISC-V kernel benchmark: retired instructions per variant and bit-width on bare metal.

For MobileNetV2-like layers (pointwise 1x1, depthwise 3x3, dense 3x3), every (variant, bits)
kernel is measured on each profile by the simulator (Spike by default) through
``tvm_mpq.rpc.measure.measure_many``: random full-range inputs, outputs checked against the
numpy reference in the same run, failures shown as failures. Ratios are against the int8
kernel of the same layer and profile from the same run; MACs/instruction of bit-serial
kernels on Zbb is shown next to its ideal 64 / (3 * W * A) (AND + CPOP + ADD per 64-bit
word and bit-plane pair).

    python bench/riscv_kernels.py                               # default schedules, all layers
    python bench/riscv_kernels.py --layers conv3x3_64_28 --profiles rv64gc_zbb
    python bench/riscv_kernels.py --tune-trials 64 --db runs/riscv_kernels.sqlite
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

# allow `python bench/riscv_kernels.py` from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tvm_mpq.rpc.database import MeasureRecord  # noqa: E402
from tvm_mpq.rpc.measure import MeasureRequest, measure_many  # noqa: E402
from tvm_mpq.schedules import Conv2dWorkload  # noqa: E402
from tvm_mpq.targets import get_profile  # noqa: E402

LAYERS: dict[str, Conv2dWorkload] = {
    # inverted-residual pieces at 28x28 and 14x14, 16-128 channels
    "pw_16to64_28": Conv2dWorkload.make((1, 16, 28, 28), (64, 16, 1, 1)),
    "dw3x3_64_28": Conv2dWorkload.make((1, 64, 28, 28), (64, 1, 3, 3), 1, 1, groups=64),
    "pw_64to32_28": Conv2dWorkload.make((1, 64, 28, 28), (32, 64, 1, 1)),
    "conv3x3_64_28": Conv2dWorkload.make((1, 64, 28, 28), (64, 64, 3, 3), 1, 1),
    "pw_64to128_14": Conv2dWorkload.make((1, 64, 14, 14), (128, 64, 1, 1)),
    "dw3x3_128_14": Conv2dWorkload.make((1, 128, 14, 14), (128, 1, 3, 3), 1, 1, groups=128),
    "conv3x3_32_14": Conv2dWorkload.make((1, 32, 14, 14), (32, 32, 3, 3), 1, 1),
}
# unpack's arithmetic is int8 whatever a_bits is, and unpack w8 *is* int8; bit-serial w8a8
# (64 plane pairs) cannot beat int8, so those are left out as not meaningful
CONFIGS: list[tuple[str, int, int]] = [
    ("fp32", 8, 8), ("int8", 8, 8),
    ("unpack", 4, 4), ("unpack", 2, 2), ("unpack", 1, 1),
    ("bitserial", 4, 4), ("bitserial", 2, 2), ("bitserial", 1, 1),
]
PROFILES = ["rv64gc", "rv64gc_zbb", "rv64gcv"]


def zbb_limit(prof_name: str, variant: str, w: int, a: int) -> float | None:
    """Ideal MACs/instruction of bit-serial with a 1-instruction popcount (Zbb ``cpop``)."""
    prof = get_profile(prof_name)
    if variant != "bitserial" or not prof.has_zbb:
        return None
    return prof.word_bits / (3 * w * a)


def _cell_int(r: MeasureRecord) -> str:
    return f"{r.instructions:,}" if r.ok else f"**{r.status}**"


def table(profile: str, rows: list[MeasureRecord]) -> str:
    """Markdown table of one profile's records (rows grouped by layer)."""
    names = {wl.key(): n for n, wl in LAYERS.items()}
    base = {r.workload_key: r.instructions for r in rows
            if r.variant == "int8" and r.ok}
    out = [f"### {profile}", "",
           "| layer | MACs | variant | bits | instructions | vs int8 (x fewer) | MACs/instr "
           "| Zbb limit 64/(3WA) |",
           "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        b = base.get(r.workload_key)
        ratio = f"{b / r.instructions:.2f}" if r.ok and b else ""
        mpi = f"{r.macs / r.instructions:.3f}" if r.ok else ""
        lim = zbb_limit(profile, r.variant, r.w_bits, r.a_bits)
        bits = "fp32" if r.variant == "fp32" else f"w{r.w_bits}a{r.a_bits}"
        out.append(f"| {names.get(r.workload_key, r.workload_key)} | {r.macs:,} | {r.variant} "
                   f"| {bits} | {_cell_int(r)} | {ratio} | {mpi} | "
                   f"{'' if lim is None else f'{lim:.2f}'} |")
    failed = [r for r in rows if not r.ok]
    for r in failed:
        out.append(f"\n- {names.get(r.workload_key)} {r.variant} w{r.w_bits}a{r.a_bits}: "
                   f"{r.status}: {r.message}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=PROFILES, help=f"default {PROFILES}")
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS),
                    metavar="LAYER", help=f"default all: {list(LAYERS)}")
    ap.add_argument("--configs", nargs="+", default=None, metavar="VARIANT:W:A",
                    help="e.g. int8:8:8 bitserial:2:2 (default: all)")
    ap.add_argument("--tune-trials", type=int, default=0,
                    help="MetaSchedule trials for EVERY kernel, baselines included (0: default "
                         "schedules)")
    ap.add_argument("--backend", default="spike", choices=["spike", "qemu"])
    ap.add_argument("--db", default=None,
                    help="cache/resume in this database (default: measure everything afresh)")
    ap.add_argument("--work-dir", default="runs/riscv_kernels_tune",
                    help="MetaSchedule work directories")
    ap.add_argument("--chunk-size", type=int, default=8, help="kernels per simulator run")
    ap.add_argument("--json-out", default=None, help="write all records to this JSON file")
    args = ap.parse_args(argv)
    # MetaSchedule's per-iteration tables would drown the Markdown output
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    for p in args.profiles:
        prof = get_profile(p)
        if prof.is_host:
            ap.error("this benchmark measures RISC-V profiles; use bench/kernels.py for the host")
    configs = CONFIGS if not args.configs else [
        (c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2])) for c in args.configs]
    reqs = [MeasureRequest(LAYERS[n], v, w, a, args.tune_trials)
            for n in args.layers for v, w, a in configs]

    t0 = time.time()
    tables, everything = [], []
    for p in args.profiles:
        tp = time.time()
        recs = measure_many(reqs, p, args.backend, db=args.db, work_dir=args.work_dir,
                            chunk_size=args.chunk_size)
        print(f"{p}: {len(recs)} kernels in {time.time() - tp:.0f} s", file=sys.stderr)
        tables.append(table(p, recs))
        everything += [r.to_dict() for r in recs]
    sched = "default schedules" if args.tune_trials == 0 else \
        f"MetaSchedule-tuned schedules ({args.tune_trials} trials each, baselines included)"
    print(f"\nRetired instructions per kernel call on {args.backend} (bare metal, {sched}); "
          f"random full-range inputs, every output checked against the numpy reference. "
          f"Total wall time {time.time() - t0:.0f} s.\n")
    print("\n\n".join(tables))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(everything, indent=1))
    return 0 if all(r["status"] == "ok" for r in everything) else 1


if __name__ == "__main__":
    sys.exit(main())
