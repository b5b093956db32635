"""Our fastest kernels against muRISCV-NN (the RISC-V port of CMSIS-NN), on the same simulator.

muRISCV-NN's scalar C (no vector / packed extension), built from a source tree you point to
(``--muriscv-nn PATH``: a checkout of github.com/tum-ei-eda/muriscv-nn; never downloaded or
committed here) with GCC -O3 into a bare-metal ELF on this project's harness (crt0, HTIF
console, the link script), linked without relaxation like our kernel ELFs. Each library
call is bracketed by ``minstret`` reads: retired instructions of one call, its requantization
to int8 included. Layers (NHWC for the library, NCHW for ours):

* conv3x3: 1x64x28x28 -> 64, pad 1 (``muriscv_nn_convolve_s8``; ``convolve_s4``: int4 weights)
* pointwise: 1x64x14x14 -> 128 (``muriscv_nn_convolve_1x1_s8_fast``)
* depthwise: 1x64x28x28, 3x3, pad 1 (``muriscv_nn_depthwise_conv_3x3_s8``)
* dense: 1x1024 -> 256 (``muriscv_nn_fully_connected_s8``)

Ours: the fastest of our variants (int8, swar, bitserial, unpack; default schedules) at each
bits pair, measured by ``measure_many`` (cached in ``--out``), **plus our requantization**:
the int32 -> uint8 epilogue the compiler emits after each quantized layer, fused into the
kernel where the compiler fuses it (``tvm_mpq.schedules.epilogue.fuses``; marked "fused"),
else as its own pass
(``tvm_mpq.measure.overhead.requantize_case``: per-channel dyadic rescale in the profile's
form, ReLU folded into the clamp; rows unrolled as in the artifact,
``tvm_mpq.schedules.glue``), measured on the same simulator over the layer's output.
Both sides therefore go from int8 inputs to int8 outputs. Ratio = library / ours (> 1:
ours needs fewer instructions).

    python bench/peer_kernels.py --muriscv-nn ~/src/muriscv-nn --profiles rv64gc_zbb rv32imc
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys

C_MAIN = r"""
#include <stdint.h>
#include <string.h>
#include "harness.h"
#include "counters.h"
#include "muriscv_nn_functions.h"

static uint32_t seed = 12345u;
static int8_t rnd8(void) { seed = seed * 1664525u + 1013904223u; return (int8_t)(seed >> 24); }
static void fill8(int8_t *p, int32_t n) { for (int32_t i = 0; i < n; ++i) p[i] = rnd8(); }

static int8_t in_buf[64 * 28 * 28];
static int8_t w_buf[1024 * 256];
static int8_t out_buf[64 * 28 * 28];
static int32_t bias[256], mult[256], shift[256];
static int8_t scratch[1 << 16];

#define REPORT(name, st, n)                                                      \
  do { mpq_puts("@@P " name " rc="); mpq_puti(st); mpq_puts(" instret=");        \
       mpq_putu(n); mpq_puts("\n"); } while (0)
#define TIMED(name, call)                                                        \
  do { uint64_t i0 = rd_minstret(); muriscv_nn_status st = call;                 \
       uint64_t i1 = rd_minstret(); REPORT(name, st, i1 - i0); } while (0)

int main(void) {
  for (int i = 0; i < 256; ++i) { bias[i] = (int32_t)(rnd8()) * 64; mult[i] = 1 << 30; shift[i] = -8; }
  muriscv_nn_per_channel_quant_params qp = {mult, shift};
  muriscv_nn_context ctx = {scratch, sizeof(scratch)};
  muriscv_nn_activation act = {-128, 127};

  { /* conv3x3 1x28x28x64 -> 64 */
    muriscv_nn_dims id = {1, 28, 28, 64}, fd = {64, 3, 3, 64}, bd = {1, 1, 1, 64}, od = {1, 28, 28, 64};
    muriscv_nn_conv_params cp = {128, -128, {1, 1}, {1, 1}, {1, 1}, act};
    fill8(in_buf, 28 * 28 * 64); fill8(w_buf, 64 * 9 * 64);
    ctx.size = muriscv_nn_convolve_s8_get_buffer_size(&id, &fd);
    TIMED("conv3x3_s8", muriscv_nn_convolve_s8(&ctx, &cp, &qp, &id, in_buf, &fd, w_buf, &bd, bias,
                                               NULL, &od, out_buf));
    ctx.size = muriscv_nn_convolve_s4_get_buffer_size(&id, &fd);
    TIMED("conv3x3_s4", muriscv_nn_convolve_s4(&ctx, &cp, &qp, &id, in_buf, &fd, w_buf, &bd, bias,
                                               &od, out_buf));
  }
  { /* pointwise 1x14x14x64 -> 128 */
    muriscv_nn_dims id = {1, 14, 14, 64}, fd = {128, 1, 1, 64}, bd = {1, 1, 1, 128}, od = {1, 14, 14, 128};
    muriscv_nn_conv_params cp = {128, -128, {1, 1}, {0, 0}, {1, 1}, act};
    ctx.size = muriscv_nn_convolve_1x1_s8_fast_get_buffer_size(&id);
    TIMED("pointwise_s8", muriscv_nn_convolve_1x1_s8_fast(&ctx, &cp, &qp, &id, in_buf, &fd, w_buf,
                                                          &bd, bias, &od, out_buf));
  }
  { /* depthwise 3x3 1x28x28x64 */
    muriscv_nn_dims id = {1, 28, 28, 64}, fd = {1, 3, 3, 64}, bd = {1, 1, 1, 64}, od = {1, 28, 28, 64};
    muriscv_nn_dw_conv_params dp = {128, -128, 1, {1, 1}, {1, 1}, {1, 1}, act};
    ctx.size = 0;
    TIMED("depthwise_s8", muriscv_nn_depthwise_conv_3x3_s8(&ctx, &dp, &qp, &id, in_buf, &fd, w_buf,
                                                           &bd, bias, &od, out_buf));
  }
  { /* dense 1x1024 -> 256 */
    muriscv_nn_dims id = {1, 1, 1, 1024}, fd = {1024, 1, 1, 256}, bd = {1, 1, 1, 256}, od = {1, 1, 1, 256};
    muriscv_nn_fc_params fp = {128, 0, -128, act};
    muriscv_nn_per_tensor_quant_params tq = {1 << 30, -8};
    int32_t need = muriscv_nn_fully_connected_s8_get_buffer_size(&fd);
    ctx.size = need;
    if (need > 0) /* the kernel sums, precomputed once per model as the library expects */
      muriscv_nn_vector_sum_s8((int32_t *)scratch, 1024, 256, w_buf, 128, 0, bias);
    TIMED("dense_s8", muriscv_nn_fully_connected_s8(&ctx, &fp, &tq, &id, in_buf, &fd, w_buf, &bd,
                                                    bias, &od, out_buf));
  }
  mpq_puts("@@DONE\n");
  return 0;
}
"""

#: layer class -> (our workload, the library's calls for w8 / w4 weights)
LIBRARY = {"conv3x3": ("conv3x3_s8", "conv3x3_s4"), "pointwise": ("pointwise_s8", None),
           "depthwise": ("depthwise_s8", None), "dense": ("dense_s8", None)}
BITS = ((8, 8), (4, 4), (2, 2))
GOALS = {(8, 8): 1.5, (4, 4): 2.5, (2, 2): 5.0}


def our_workloads() -> dict[str, object]:
    from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload

    return {"conv3x3": Conv2dWorkload.make((1, 64, 28, 28), (64, 64, 3, 3), 1, 1),
            "pointwise": Conv2dWorkload.make((1, 64, 14, 14), (128, 64, 1, 1), 1, 0),
            "depthwise": Conv2dWorkload.make((1, 64, 28, 28), (64, 1, 3, 3), 1, 1, groups=64),
            "dense": DenseWorkload(1, 1024, 256)}


def build_library_elf(src: str, profile: object, out: str) -> str:
    """The muRISCV-NN ELF for ``profile`` (scalar C, -O3, our bare-metal harness)."""
    from tvm_mpq.measure import toolchain

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tvm_mpq", "measure",
                        "harness")
    gcc = toolchain.find_gcc()
    d = os.path.join(out, profile.name)  # type: ignore[attr-defined]
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "peer_main.c"), "w") as f:
        f.write(C_MAIN)
    inc = [here, toolchain.ffi_include_dir(), os.path.join(src, "Include"),
           os.path.join(src, "Include", "CMSIS", "NN", "Include")]
    cflags = [c if c != "-O2" else "-O3"
              for c in toolchain.bare_metal_cflags(profile, inc, platform="spike")]
    lib_objs = [_compile(gcc, cflags, s, d) for s in
                sorted(glob.glob(os.path.join(src, "Source", "*", "*.c")))]
    archive = os.path.join(d, "libmuriscvnn.a")  # an archive: the tree has duplicate symbols
    if os.path.exists(archive):
        os.remove(archive)
    _check([gcc.replace("-gcc", "-ar"), "rcs", archive, *lib_objs])
    objs = [_compile(gcc, cflags, os.path.join(d, "peer_main.c"), d),
            _compile(gcc, cflags, os.path.join(here, "htif.c"), d),
            _compile(gcc, cflags, os.path.join(here, "crt0.S"), d)]
    elf = os.path.join(d, "peer.elf")
    ld = toolchain.bare_metal_ldflags(profile, os.path.join(here, "link.ld"), gcc, relax=False)
    _check([gcc, *ld, "-o", elf, objs[2], objs[0], objs[1], archive, "-lm"])
    return elf


def _check(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{r.stderr[-2000:]}")


def _compile(gcc: str, cflags: list[str], src: str, d: str) -> str:
    o = os.path.join(d, os.path.basename(src).rsplit(".", 1)[0] + ".o")
    if not os.path.exists(o) or os.path.getmtime(o) < os.path.getmtime(src):
        _check([gcc, *cflags, "-c", src, "-o", o])
    return o


def library_counts(src: str, profile: object, out: str) -> dict[str, int]:
    from tvm_mpq.measure import toolchain

    elf = build_library_elf(src, profile, out)
    r = toolchain.run_spike(elf, profile.spike_isa, 4_000_000_000, 1800)  # type: ignore[attr-defined]
    text = r.stdout
    counts = {m.group(1): int(m.group(3)) for m in
              re.finditer(r"@@P (\w+) rc=(-?\d+) instret=(\d+)", text) if m.group(2) == "0"}
    if "@@DONE" not in text:
        raise RuntimeError(f"the muRISCV-NN run on {profile} did not finish: {text[-500:]}")
    return counts


def our_counts(profile: str, out: str) -> dict[tuple[str, int, int], tuple[int, str]]:
    """Fastest of our variants per (layer class, w_bits, a_bits): (instructions, variant)."""
    from tvm_mpq.measure.campaign import measure_many
    from tvm_mpq.measure.database import MeasurementDB

    db = MeasurementDB(os.path.join(out, "ours.sqlite"))
    reqs = [(wl, v, w, a) for wl in our_workloads().values() for w, a in BITS
            for v in ("int8", "swar", "bitserial", "unpack") if not (v == "int8" and w < 8)]
    recs = measure_many(reqs, profile, "spike", db=db, progress=True)
    best: dict[tuple[str, int, int], tuple[int, str]] = {}
    names = {wl.key(): n for n, wl in our_workloads().items()}
    for r in recs:
        if r.ok:
            k = (names[r.workload_key], r.w_bits, r.a_bits)
            if k not in best or r.instructions < best[k][0]:
                best[k] = (r.instructions, r.variant)
    return best


def requant_counts(profile: str, out: str) -> dict[str, int]:
    """Instructions of our requantize epilogue over each layer class's output (one call)."""
    from dataclasses import replace

    import numpy as np

    from tvm_mpq.measure.baremetal import run_kernels
    from tvm_mpq.measure.overhead import requantize_case
    from tvm_mpq.schedules.glue import schedule_glue
    from tvm_mpq.targets import get_profile

    prof = get_profile(profile)
    rng = np.random.default_rng(0)
    cases = {n: requantize_case(f"rq_{n}", tuple(wl.output_shape), prof.xlen, rng)
             for n, wl in our_workloads().items()}
    # scheduled as the standalone artifact runs the glue
    cases = {n: replace(c, func=schedule_glue(c.func)) for n, c in cases.items()}
    runs = run_kernels(list(cases.values()), prof, "spike",
                       workdir=os.path.join(out, f"requant_{profile}"))
    return {n: r.instructions for n, r in zip(cases, runs, strict=True) if r.status == "ok"}


def fused_counts(profile: str, out: str,
                 picks: dict[tuple[str, int, int], str]) -> dict[tuple[str, int, int], int]:
    """Instructions of the picked kernels with the requantize epilogue fused, for those the
    compiler fuses on ``profile`` (:func:`tvm_mpq.schedules.epilogue.fuses`): what the
    compiled model runs for them instead of kernel + epilogue pass."""
    import numpy as np

    from tvm_mpq.compiler.dyadic_ops import dyadic_consts, dyadic_form, with_requantize
    from tvm_mpq.measure.baremetal import KernelCase, run_kernels
    from tvm_mpq.quant.dyadic import dyadic_params, requantize_dyadic_ref
    from tvm_mpq.schedules import make_kernel
    from tvm_mpq.schedules.epilogue import fused_schedule, fuses
    from tvm_mpq.schedules.ms_tune import reference_output, validation_inputs
    from tvm_mpq.targets import get_profile

    prof, wls, cases = get_profile(profile), our_workloads(), {}
    for (layer, wb, ab), variant in picks.items():
        kd = make_kernel(wls[layer], variant, wb, ab, word_bits=prof.word_bits)
        if not fuses(kd, prof):
            continue
        x, w = validation_inputs(kd, 0)[0]
        acc = np.asarray(reference_output(kd, x, w)).astype(np.int64)
        k = acc.shape[1]
        # results spread over the codes as a layer's do (about half clamped by the ReLU)
        real = 80.0 / np.maximum(acc.std(axis=(0, 2, 3)), 1.0)
        m, kk, t = dyadic_params(real, np.zeros(k, np.int64), 0)
        form = dyadic_form(t, prof.xlen)
        consts = dyadic_consts(m, kk, t, form)
        fk = with_requantize(kd, consts, 0, 255, form)
        name = f"fused_{layer}_w{wb}a{ab}"
        args = fk.make_args(x, w, consts)
        ref = requantize_dyadic_ref(acc, m, kk, t, 0, 255, ch_axis=1).astype(np.uint8)
        func = fused_schedule(fk, profile)["main"].with_attr("global_symbol", name)
        cases[(layer, wb, ab)] = KernelCase(name, func, args, {len(args) - 1: ref})
    runs = run_kernels(list(cases.values()), prof, "spike",
                       workdir=os.path.join(out, f"fused_{profile}"))
    return {key: r.instructions for key, r in zip(cases, runs, strict=True) if r.status == "ok"}


def _ratio(ref: int, n: int, goal: float) -> str:
    """``ref / n`` against ``goal``, to three decimals where two would round a miss up to it."""
    r = ref / n
    if r >= goal:
        return f"{r:.2f}x ok"
    return f"{r:.{3 if round(r, 2) >= goal else 2}f}x (goal {goal}x)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--muriscv-nn", default=None, help="muRISCV-NN source tree (Include/, Source/)")
    ap.add_argument("--profiles", nargs="*", default=["rv64gc_zbb", "rv64gc", "rv32imc"])
    ap.add_argument("--out", default="runs/peer_kernels")
    args = ap.parse_args()
    src = args.muriscv_nn
    if not src or not os.path.isdir(os.path.join(src, "Source", "ConvolutionFunctions")):
        print("skipped: give --muriscv-nn PATH, a muRISCV-NN source tree (git clone "
              "https://github.com/tum-ei-eda/muriscv-nn); it is never downloaded here")
        sys.exit(0)
    from tvm_mpq.targets import get_profile

    print("| profile | layer | library (int8 req.) | our requant | ours w8a8 | ratio | ours w4a4 "
          "| ratio | ours w2a2 | ratio | library s4 weights |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.profiles:
        prof = get_profile(name)
        lib = library_counts(src, prof, args.out)
        ours = our_counts(name, args.out)
        rq = requant_counts(name, args.out)
        fused = fused_counts(name, args.out, {k: v for k, (_, v) in ours.items()})
        for layer, (s8, s4) in LIBRARY.items():
            ref = lib.get(s8)
            cells = [name, layer, f"{ref:,}" if ref else "failed", f"{rq[layer]:,}"
                     if layer in rq else "failed"]
            for w, a in BITS:
                n, v = ours.get((layer, w, a), (None, "-"))
                n = n + rq[layer] if n and layer in rq else None
                if (layer, w, a) in fused:  # what the compiler emits: the epilogue inside
                    n, v = fused[(layer, w, a)], f"{v} fused"
                ok = n and ref
                cells += [f"{n:,} {v}" if n else "failed",
                          _ratio(ref, n, GOALS[(w, a)]) if ok else "-"]
            cells.append(f"{lib[s4]:,}" if s4 and s4 in lib else "-")
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
