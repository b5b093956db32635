"""RISC-V kernel benchmark: retired instructions per variant and bit-width on bare metal.

For MobileNetV2-like layers (pointwise 1x1, depthwise 3x3, dense 3x3), every (variant, bits)
kernel is measured on each profile by the simulator (Spike by default) through
``tvm_mpq.measure.campaign.measure_many``: random full-range inputs, outputs checked against the
numpy reference in the same run, failures shown as failures. Ratios are against the int8
kernel of the same layer and profile from the same run; MACs/instruction of bit-serial
kernels on Zbb is shown next to its ideal 64 / (3 * W * A) (AND + CPOP + ADD per 64-bit
word and bit-plane pair). Each bitserial row is also compared with TVM's stock TOPI
``bitserial_conv2d_nchw`` (``tvm_mpq.schedules.stock``: default lowering, uint64 words,
pre-packed weights; its own activation ``bitpack`` measured separately and subtracted, i.e.
pre-packed activations, while ours include their packing).

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

import numpy as np  # noqa: E402

from tvm_mpq.measure.baremetal import KernelCase, run_kernels  # noqa: E402
from tvm_mpq.measure.campaign import MeasureRequest, measure_many  # noqa: E402
from tvm_mpq.measure.database import MeasureRecord  # noqa: E402
from tvm_mpq.schedules import Conv2dWorkload  # noqa: E402
from tvm_mpq.schedules.default_schedules import bitserial_packing_func  # noqa: E402
from tvm_mpq.schedules.reference import conv2d_ref  # noqa: E402
from tvm_mpq.schedules.registry import make_kernel  # noqa: E402
from tvm_mpq.schedules.stock import stock_bitpack, stock_bitserial_conv2d  # noqa: E402
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
    ("swar", 8, 8), ("swar", 4, 4), ("swar", 2, 2), ("swar", 1, 1),
]
PROFILES = ["rv64gc", "rv64gc_zbb", "rv64gcv"]


def zbb_limit(prof_name: str, variant: str, w: int, a: int) -> float | None:
    """Ideal MACs/instruction of bit-serial with a 1-instruction popcount (Zbb ``cpop``)."""
    prof = get_profile(prof_name)
    if variant != "bitserial" or not prof.has_zbb:
        return None
    return prof.word_bits / (3 * w * a)


def measure_packing_and_stock(layers: list[str], configs: list[tuple[str, int, int]],
                              profile: str, backend: str) -> dict[tuple[str, int, int], dict]:
    """Per (layer key, W, A) of the bitserial configs: the instructions of our activation
    packing alone (``pack``), of TOPI's stock bitserial conv (``stock``, its own activation
    ``bitpack`` included) and of that ``bitpack`` alone (``stock_pack``); a failure is a
    string. Grouped layers have no stock kernel."""
    prof = get_profile(profile)
    rng = np.random.default_rng(0)
    cases, slots = [], []
    for name in layers:
        wl = LAYERS[name]
        for v, w, a in configs:
            if v != "bitserial":
                continue
            key = (wl.key(), w, a)
            x = rng.integers(0, 2 ** a, wl.input_shape)
            kd = make_kernel(wl, "bitserial", w, a, word_bits=prof.word_bits)
            pf, shape = bitserial_packing_func(kd)
            cases.append(KernelCase(f"pack{len(cases)}", pf,
                                    [x.astype(np.uint8), np.zeros(shape, f"uint{prof.word_bits}")], {}))
            slots.append((key, "pack"))
            if wl.groups != 1:
                continue
            # TOPI packs only channel counts that are a multiple of its word: the widest fits
            word = next(b for b in (64, 32, 16, 8) if b <= prof.word_bits and wl.cg % b == 0)
            func, prep = stock_bitserial_conv2d(wl, w, a, word)
            wt = rng.integers(0, 2 ** w, wl.weight_shape)
            args = prep(x, wt)
            exp = conv2d_ref(x, wt, wl).astype(np.int32).reshape(args[-1].shape)
            cases.append(KernelCase(f"stock{len(cases)}", func, args, {2: exp}))
            slots.append((key, "stock"))
            sf, shape, dt = stock_bitpack(wl, a, word)
            cases.append(KernelCase(f"spack{len(cases)}", sf, [x.astype(np.uint8), np.zeros(shape, dt)], {}))
            slots.append((key, "stock_pack"))
    out: dict[tuple[str, int, int], dict] = {}
    for (key, what), r in zip(slots, run_kernels(cases, prof, backend) if cases else [], strict=True):
        out.setdefault(key, {})[what] = r.instructions if r.status == "ok" else \
            f"{r.status}: {r.message[:120]}"
    return out


def _cell_int(r: MeasureRecord) -> str:
    return f"{r.instructions:,}" if r.ok else f"**{r.status}**"


def _int_or_fail(v) -> str:
    return "" if v is None else (f"{v:,}" if isinstance(v, int) else f"**{v}**")


def table(profile: str, rows: list[MeasureRecord], extra: dict | None = None) -> str:
    """Markdown table of one profile's records (rows grouped by layer).

    ``extra`` (from :func:`measure_packing_and_stock`) adds, for bitserial rows, our packing
    share and TOPI's stock kernel: "vs stock" compares whole kernels (each with its own
    activation packing), "conv only" both without their packing (the issue's stock figures
    are pre-packed).
    """
    extra = extra or {}
    names = {wl.key(): n for n, wl in LAYERS.items()}
    base = {r.workload_key: r.instructions for r in rows
            if r.variant == "int8" and r.ok}
    out = [f"### {profile}", "",
           "| layer | MACs | variant | bits | instructions | vs int8 (x fewer) | MACs/instr "
           "| % of Zbb limit 64/(3WA) | our packing | stock TOPI | its bitpack "
           "| vs stock (x fewer) | conv only vs stock |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = base.get(r.workload_key)
        ratio = f"{b / r.instructions:.2f}" if r.ok and b else ""
        mpi = f"{r.macs / r.instructions:.3f}" if r.ok else ""
        lim = zbb_limit(profile, r.variant, r.w_bits, r.a_bits)
        bits = "fp32" if r.variant == "fp32" else f"w{r.w_bits}a{r.a_bits}"
        pct = f"{100 * r.macs / r.instructions / lim:.1f}% of {lim:.2f}" if lim and r.ok else ""
        e = extra.get((r.workload_key, r.w_bits, r.a_bits), {}) if r.variant == "bitserial" else {}
        pack, st, sp = e.get("pack"), e.get("stock"), e.get("stock_pack")
        vs = f"{st / r.instructions:.2f}" if isinstance(st, int) and r.ok else ""
        conv = (f"{(st - sp) / (r.instructions - pack):.2f}"
                if r.ok and all(isinstance(v, int) for v in (pack, st, sp)) else "")
        out.append(f"| {names.get(r.workload_key, r.workload_key)} | {r.macs:,} | {r.variant} "
                   f"| {bits} | {_cell_int(r)} | {ratio} | {mpi} | {pct} | {_int_or_fail(pack)} "
                   f"| {_int_or_fail(st)} | {_int_or_fail(sp)} | {vs} | {conv} |")
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
    ap.add_argument("--no-stock", action="store_true",
                    help="skip the packing split and TOPI's stock bitserial conv (measured for "
                         "every bitserial row by default)")
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
        extra = {} if args.no_stock else measure_packing_and_stock(args.layers, configs, p,
                                                                    args.backend)
        print(f"{p}: {len(recs)} kernels (+ packing/stock of {len(extra)}) in "
              f"{time.time() - tp:.0f} s", file=sys.stderr)
        tables.append(table(p, recs, extra))
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
