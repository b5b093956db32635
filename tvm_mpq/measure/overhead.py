"""The passes the compiler adds around a layer's kernel, measured on the target.

A quantized call site quantizes its input and dequantizes its int32 output (+ bias); an
fp32 call site with a bias adds a bias pass. The search charges these per layer, so they
are measured per distinct workload with the compiler's own computations.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from tvm_mpq.measure.runner import create_runner
from tvm_mpq.targets import Profile

if TYPE_CHECKING:
    from tvm_mpq.measure.runner import Runner

log = logging.getLogger(__name__)

#: overhead key suffix of an fp32 layer's bias pass (see :func:`measure_qdq_overhead`)
FP32_SUFFIX = "|fp32"
#: version of the compiler's passes around a kernel; a cache of another one is re-measured
#: (2: quantize rounds with llvm.lrint; fp32 layers' bias pass)
PASSES_REVISION = 2


def measure_qdq_overhead(table: Any, profile: Profile, backend: str | Runner,
                         path: str) -> dict[str, float]:
    """Measured cost of the quantize (input) and dequantize (output) passes a quantized
    call site adds, per distinct workload, and of the bias pass an fp32 call site with a
    bias adds (key ``<workload key>|fp32``); cached in the JSON file ``path``.

    Built from the compiler's own quantize/dequantize computations, run bare metal by
    ``backend`` (a runner or its name) with outputs checked against numpy; a failed
    measurement raises (no guessed number). A runner that runs no bare-metal kernels (the
    host's wall time) measures no passes: ``{}``. A corrupt cache file is set aside as
    ``<path>.corrupt`` (with a warning) and the passes are measured again.
    """
    from tvm import te

    from tvm_mpq.compiler.ops import bias_te, dequantize_te, quantize_te
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.quant.qparams import LayerQParams
    from tvm_mpq.schedules.workload import workload_from_layer

    runner = create_runner(backend)
    if not runner.bare_metal:
        return {}
    cache = _load_cache(path)
    rng = np.random.default_rng(0)
    cases, owners = [], {}
    for r in table:
        if not r.quantizable:
            continue
        key = workload_from_layer(r).key()
        k = int(r.output_shape[1])
        per_channel = [1] * len(r.output_shape)  # broadcast shape of a per-channel vector
        per_channel[1] = -1
        if r.has_bias and key + FP32_SUFFIX not in cache and key + FP32_SUFFIX not in owners.values():
            name = f"bias{len(owners)}"
            owners[name] = key + FP32_SUFFIX
            y = te.placeholder(r.output_shape, "float32", "y")
            bias = te.placeholder((k,), "float32", "bias")
            yv = rng.standard_normal(r.output_shape).astype(np.float32)
            bv = rng.standard_normal(k).astype(np.float32)
            cases.append(KernelCase(name, te.create_prim_func([y, bias, bias_te(y, bias)]),
                                    [yv, bv, np.zeros(r.output_shape, np.float32)],
                                    {2: yv + bv.reshape(per_channel)}))
        if key in cache or key in owners.values():
            continue
        qp = LayerQParams(r.name, r.kind, 8, 8, np.float32(0.05), 7, np.full(k, 0.01, np.float32),
                          np.zeros((k, 1), np.int8), np.zeros(k, np.float32))
        x = te.placeholder(r.input_shape, "float32", "x")
        acc = te.placeholder(r.output_shape, "int32", "acc")
        corr = te.placeholder((k,), "int32", "corr")
        scale = te.placeholder((k,), "float32", "scale")
        bias = te.placeholder((k,), "float32", "bias")
        xq = quantize_te(x, qp)
        y = dequantize_te(acc, corr, scale, bias)
        xv = rng.standard_normal(r.input_shape).astype(np.float32)
        av = rng.integers(-5000, 5000, r.output_shape).astype(np.int32)
        cv = rng.integers(-100, 100, k).astype(np.int32)
        sv = rng.uniform(1e-4, 1e-2, k).astype(np.float32)
        bv = rng.standard_normal(k).astype(np.float32)
        ref_q = np.clip(np.round(xv / np.float32(0.05)) + 7, 0, 255).astype(np.uint8)
        ref_y = ((av - cv.reshape(per_channel)).astype(np.float32) * sv.reshape(per_channel)
                 + bv.reshape(per_channel)).astype(np.float32)
        name = f"qdq{len(owners)}"
        owners[name] = key
        cases.append(KernelCase(name + "_q", te.create_prim_func([x, xq]),
                                [xv, np.zeros(r.input_shape, np.uint8)], {1: ref_q}))
        cases.append(KernelCase(name + "_d", te.create_prim_func([acc, corr, scale, bias, y]),
                                [av, cv, sv, bv, np.zeros(r.output_shape, np.float32)], {4: ref_y}))
    if cases:
        runs = {c.name: c for c in runner.run_cases(cases, profile)}
        bad = [f"{n}: {c.status} {c.message}" for n, c in runs.items() if c.status != "ok"]
        if bad:
            raise RuntimeError("quantize/dequantize overhead measurement failed: " + "; ".join(bad[:3]))
        for name, key in owners.items():
            cache[key] = (float(runs[name].instructions) if key.endswith(FP32_SUFFIX) else
                          float(runs[name + "_q"].instructions + runs[name + "_d"].instructions))
        with open(path, "w") as f:
            json.dump({"passes_revision": PASSES_REVISION, "costs": cache}, f, indent=1)
    return cache


def _load_cache(path: str) -> dict[str, float]:
    """The cached costs of ``path`` if it holds this :data:`PASSES_REVISION` (else {}: stale,
    measure again); a file that cannot be read is moved to ``<path>.corrupt``."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            saved = json.load(f)
        if saved.get("passes_revision") != PASSES_REVISION:
            return {}
        return {str(k): float(v) for k, v in saved["costs"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        os.replace(path, path + ".corrupt")
        log.warning("%s is corrupt (%s: %s): moved to %s.corrupt, measuring the passes again",
                    path, type(e).__name__, e, path)
        return {}
