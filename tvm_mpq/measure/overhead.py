"""The passes the compiler adds around a layer's kernel, measured on the target.

The search prices a plan as the sum over layers of the layer's kernel plus these passes, so
they are measured per distinct workload with the compiler's own computations, for the glue
:func:`tvm_mpq.compile` is asked for (:mod:`tvm_mpq.compiler.emit`):

* ``glue="integer"`` (the default). A quantized layer pays its requantize epilogue
  (:func:`~tvm_mpq.compiler.dyadic_ops.requantize_dyadic_te` over its output: int32 accumulator
  to the consumers' uint8 codes, the profile's rounding form, activation folded into the
  clamp), or its float dequantize epilogue when its result is the model output; when its
  input codes are also read by other operators (a residual block's output), the spec change
  of those codes (:func:`~tvm_mpq.compiler.int_ops.respec_codes_te`). An fp32 layer pays
  what making it fp32 adds around its kernel, as if its neighbours were quantized: its bias
  pass and activation in float, its output quantized for the next layer
  (:func:`~tvm_mpq.compiler.int_ops.quantize_codes_te`), and at its input the producing
  layer's float epilogue (:func:`~tvm_mpq.compiler.ops.dequantize_te`, plus that layer's
  activation, and a global pooling in between, in float) minus the requantize epilogue
  (and integer pooling) it no longer runs; or the dequantization of other codes
  (:func:`~tvm_mpq.compiler.int_ops.dequantize_codes_te`); or, reading the model input,
  minus the input's quantize. Which of these applies is the layer's :class:`LayerContext`
  in the graph (:func:`tvm_mpq.tuner.contexts.layer_contexts`).
* ``glue="float"``: a quantized layer quantizes its float input and dequantizes its int32
  output (+ bias) in float; an fp32 layer with a bias adds the bias pass.

What the additive per-layer model cannot see: the neighbours' plan. Next to another fp32
layer an fp32 layer's boundary conversions do not happen, a residual add whose input comes
from an fp32 layer runs in float, and a workload shared by layers in different contexts is
priced in its first layer's. The model input's quantize and output's dequantize, residual
adds and pooling are per-model costs: they are in the whole-model measurement (the
standalone artifact), not in the per-layer prices.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tvm_mpq.measure.runner import create_runner
from tvm_mpq.targets import Profile

if TYPE_CHECKING:
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.measure.runner import Runner

log = logging.getLogger(__name__)

#: overhead key suffix of an fp32 layer's passes (see :func:`measure_qdq_overhead`)
FP32_SUFFIX = "|fp32"
#: version of the compiler's passes around a kernel; a cache of another one is re-measured
#: (2: quantize rounds with llvm.lrint; fp32 layers' bias pass. 3: per glue; the integer
#: glue's requantize epilogue and fp32 boundary conversions. 4: measured in ELFs linked
#: without relaxation, like the kernels. 5: rows unrolled, as the standalone artifact runs
#: them: ``tvm_mpq.schedules.glue``. 6: compiled with the profiles' LLVM options,
#: ``targets.RISCV_LLVM_OPTIONS``)
PASSES_REVISION = 6
#: the glues the passes are measured for (as :data:`tvm_mpq.compiler.emit.GLUES`)
GLUES = ("integer", "float")

#: cases of one glue: (cases, overhead key -> (case name, sign) of the costs it sums)
_Cases = tuple[list["KernelCase"], dict[str, list[tuple[str, int]]]]


@dataclass(frozen=True)
class LayerContext:
    """Where a layer sits in the graph, as far as the integer glue's passes around it
    depend on it (:func:`tvm_mpq.tuner.contexts.layer_contexts` reads it from the model; the
    default is a layer between two quantized layers, without activations).

    Attributes:
        source: what produces its input: ``"input"`` (the model input), ``"layer"`` (another
            layer, read by this one only), ``"pool"`` (a global average pooling of another
            layer's output, read by this one only), ``"codes"`` (another integer operator
            read by this one only, e.g. a residual add) or ``"shared"`` (a value other
            operators read too, e.g. a residual block's output: its codes have their own
            parameters).
        source_act: the activation after the producing layer (as ``act``).
        act: the activation after this layer (``"relu"``, ``"clip"`` for ReLU6 / hardtanh /
            clamp, or None): folded into the requantize clamp, run in float after an fp32
            layer.
        output: its result is the model output (dequantized in its epilogue).
        pool_in: with ``source="pool"``: the pooled tensor's shape (the producer's output).
        pooled: its output is globally average-pooled (on codes; in float after an fp32
            layer) before the next layer reads it.
    """

    source: str = "layer"
    source_act: str | None = None
    act: str | None = None
    output: bool = False
    pool_in: tuple[int, ...] | None = None
    pooled: bool = False

    def tag(self) -> str:
        """The context in a cache key (``layer+clip/clip``, ``pool(1,8,3,3)/-/out``, ...)."""
        src = self.source + (str(tuple(self.pool_in)).replace(" ", "") if self.pool_in else "")
        return (f"{src}{'+' + self.source_act if self.source_act else ''}/{self.act or '-'}"
                f"{'/pooled' if self.pooled else ''}{'/out' if self.output else ''}")


def measure_qdq_overhead(table: Any, profile: Profile, backend: str | Runner, path: str,
                         glue: str = "integer",
                         contexts: dict[str, LayerContext] | None = None) -> dict[str, float]:
    """Measured cost of the passes :func:`tvm_mpq.compile` with ``glue`` adds around each
    layer's kernel (see the module docstring), per distinct workload: the quantized layer's
    under the workload key, the fp32 layer's under ``<workload key>|fp32``. With the
    integer glue they depend on the layer's :class:`LayerContext` (``contexts``, by layer
    name; the first layer of a workload gives it). Cached in the JSON file ``path``, per
    glue (switching glue never reuses the other glue's numbers) and context.

    Built from the compiler's own computations, run bare metal by ``backend`` (a runner or
    its name) with outputs checked against numpy; a failed measurement raises (no guessed
    number). A runner that runs no bare-metal kernels (the host's wall time) measures no
    passes: ``{}``. A corrupt cache file is set aside as ``<path>.corrupt`` (with a
    warning) and the passes are measured again.
    """
    if glue not in GLUES:
        raise ValueError(f"glue={glue!r}: expected one of {GLUES}")
    runner = create_runner(backend)
    if not runner.bare_metal:
        return {}
    saved = _load_cache(path)
    cache = dict(saved.get(glue, {}))
    rng = np.random.default_rng(0)
    if glue == "float":
        cases, owners = _float_cases(table, cache, rng)
        wanted = None
    else:
        cases, owners, wanted = _integer_cases(table, cache, profile, contexts or {}, rng)
    if cases:
        from tvm_mpq.schedules.glue import schedule_glue

        cases = [replace(c, func=schedule_glue(c.func)) for c in cases]  # as the artifact's
        runs = {c.name: c for c in runner.run_cases(cases, profile)}
        bad = [f"{n}: {c.status} {c.message}" for n, c in runs.items() if c.status != "ok"]
        if bad:
            raise RuntimeError(f"{glue} glue pass measurement failed: " + "; ".join(bad[:3]))
        for key, names in owners.items():
            cache[key] = float(sum(sign * runs[n].instructions for n, sign in names))
        saved[glue] = cache
        with open(path, "w") as f:
            json.dump({"passes_revision": PASSES_REVISION, "costs": saved}, f, indent=1)
    return cache if wanted is None else {k: cache[ck] for k, ck in wanted.items()}


def _per_channel(shape: tuple[int, ...]) -> list[int]:
    """Broadcast shape of a per-channel vector (channels on axis 1)."""
    out = [1] * len(shape)
    out[1] = -1
    return out


def _bias_case(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> KernelCase:
    """The fp32 kernel's bias pass (:func:`~tvm_mpq.compiler.ops.bias_te`)."""
    from tvm import te

    from tvm_mpq.compiler.ops import bias_te
    from tvm_mpq.measure.baremetal import KernelCase

    k = int(shape[1])
    y = te.placeholder(shape, "float32", "y")
    bias = te.placeholder((k,), "float32", "bias")
    yv = rng.standard_normal(shape).astype(np.float32)
    bv = rng.standard_normal(k).astype(np.float32)
    return KernelCase(name, te.create_prim_func([y, bias, bias_te(y, bias)]),
                      [yv, bv, np.zeros(shape, np.float32)], {2: yv + bv.reshape(_per_channel(shape))})


def _float_cases(table: Any, cache: dict[str, float], rng: np.random.Generator) -> _Cases:
    """The float glue: quantize + dequantize per quantized workload, bias pass per fp32 one."""
    from tvm import te

    from tvm_mpq.compiler.ops import dequantize_te, quantize_te
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.quant.qparams import LayerQParams
    from tvm_mpq.schedules.workload import workload_from_layer

    cases: list[KernelCase] = []
    owners: dict[str, list[tuple[str, int]]] = {}
    for r in table:
        if not r.quantizable:
            continue
        key = workload_from_layer(r).key()
        k, per_channel = int(r.output_shape[1]), _per_channel(r.output_shape)
        if r.has_bias and key + FP32_SUFFIX not in cache and key + FP32_SUFFIX not in owners:
            name = f"bias{len(owners)}"
            owners[key + FP32_SUFFIX] = [(name, 1)]
            cases.append(_bias_case(name, r.output_shape, rng))
        if key in cache or key in owners:
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
        owners[key] = [(name + "_q", 1), (name + "_d", 1)]
        cases.append(KernelCase(name + "_q", te.create_prim_func([x, xq]),
                                [xv, np.zeros(r.input_shape, np.uint8)], {1: ref_q}))
        cases.append(KernelCase(name + "_d", te.create_prim_func([acc, corr, scale, bias, y]),
                                [av, cv, sv, bv, np.zeros(r.output_shape, np.float32)], {4: ref_y}))
    return cases, owners


def requantize_case(name: str, shape: tuple[int, ...], xlen: int,
                    rng: np.random.Generator) -> KernelCase:
    """A quantized layer's epilogue as :class:`~tvm_mpq.compiler.emit.Emitter` emits it: the
    int32 accumulator rescaled per channel (the bias and zero point folded into the dyadic
    constants, :func:`~tvm_mpq.compiler.dyadic_ops.requantize_dyadic_te` in the register
    width's form) to uint8 codes with a folded ReLU (clamped at the zero point, 0)."""
    from tvm import te

    from tvm_mpq.compiler.dyadic_ops import dyadic_consts, dyadic_form, requantize_dyadic_te
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.quant.dyadic import dyadic_params, requantize_dyadic_ref

    k = int(shape[1])
    lo, hi = 0, 255
    # real multipliers s_a s_w / s_out of ~1e-3..3e-2, and accumulators whose results
    # spread over the codes as a layer's do (about half of them clamped by the ReLU)
    real = rng.uniform(1e-3, 3e-2, k)
    bias = rng.integers(-(1 << 10), 1 << 10, k)
    m, kk, t = dyadic_params(real, bias, 0)
    y = rng.normal(0.0, 80.0, shape)
    pc = _per_channel(shape)
    av = (np.rint(y / real.reshape(pc)) - bias.reshape(pc)).astype(np.int32)
    form = dyadic_form(t, xlen)
    consts = dyadic_consts(m, kk, t, form)
    acc = te.placeholder(shape, "int32", "acc")
    cts = [te.placeholder((k,), str(c.dtype), f"c{n}") for n, c in enumerate(consts)]
    out = requantize_dyadic_te(acc, cts, lo, hi, "uint8", 1, form)
    ref = requantize_dyadic_ref(av, m, kk, t, lo, hi, ch_axis=1).astype(np.uint8)
    return KernelCase(name, te.create_prim_func([acc, *cts, out]),
                      [av, *consts, np.zeros(shape, np.uint8)], {len(cts) + 1: ref})


def _dequantize_case(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> KernelCase:
    """A quantized layer's float epilogue (:func:`~tvm_mpq.compiler.ops.dequantize_te`, with
    a bias): what the producer of an fp32 layer runs instead of requantizing."""
    from tvm import te

    from tvm_mpq.compiler.ops import dequantize_te
    from tvm_mpq.measure.baremetal import KernelCase

    k, pc = int(shape[1]), _per_channel(shape)
    acc = te.placeholder(shape, "int32", "acc")
    corr = te.placeholder((k,), "int32", "corr")
    scale = te.placeholder((k,), "float32", "scale")
    bias = te.placeholder((k,), "float32", "bias")
    av = rng.integers(-5000, 5000, shape).astype(np.int32)
    cv = rng.integers(-100, 100, k).astype(np.int32)
    sv = rng.uniform(1e-4, 1e-2, k).astype(np.float32)
    bv = rng.standard_normal(k).astype(np.float32)
    ref = ((av - cv.reshape(pc)).astype(np.float32) * sv.reshape(pc) + bv.reshape(pc))
    return KernelCase(name, te.create_prim_func([acc, corr, scale, bias,
                                                 dequantize_te(acc, corr, scale, bias)]),
                      [av, cv, sv, bv, np.zeros(shape, np.float32)], {4: ref.astype(np.float32)})


#: parameters of the codes the boundary conversions and spec changes work on (any: the code
#: has no data-dependent branches)
_SPEC = (0.05, 7, 8)
_SPEC2 = (0.031, 128, 8)


def _quantize_codes_case(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> KernelCase:
    """Float values quantized where they enter integer code
    (:func:`~tvm_mpq.compiler.int_ops.quantize_codes_te`)."""
    from tvm import te

    from tvm_mpq.compiler.int_ops import quantize_codes_te
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.quant.integer import QSpec

    spec = QSpec(*_SPEC)
    s, z = np.float32(spec.scale), spec.zero_point
    x = te.placeholder(shape, "float32", "x")
    xv = (rng.standard_normal(shape) * 4).astype(np.float32)  # some values clamp
    ref = (np.clip(np.rint(xv / s), -z, spec.qmax - z) + z).astype(np.uint8)
    return KernelCase(name, te.create_prim_func([x, quantize_codes_te(x, spec)]),
                      [xv, np.zeros(shape, np.uint8)], {1: ref})


def _dequantize_codes_case(name: str, shape: tuple[int, ...], rng: np.random.Generator
                           ) -> KernelCase:
    """Codes dequantized where a float operator reads them
    (:func:`~tvm_mpq.compiler.int_ops.dequantize_codes_te`)."""
    from tvm import te

    from tvm_mpq.compiler.int_ops import dequantize_codes_te
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.quant.integer import QSpec

    spec = QSpec(*_SPEC)
    q = te.placeholder(shape, "uint8", "q")
    qv = rng.integers(0, 256, shape).astype(np.uint8)
    ref = (qv.astype(np.int32) - spec.zero_point).astype(np.float32) * np.float32(spec.scale)
    return KernelCase(name, te.create_prim_func([q, dequantize_codes_te(q, spec)]),
                      [qv, np.zeros(shape, np.float32)], {1: ref})


def _respec_case(name: str, shape: tuple[int, ...], xlen: int, rng: np.random.Generator
                 ) -> KernelCase:
    """Codes requantized to a layer's input parameters
    (:func:`~tvm_mpq.compiler.int_ops.respec_codes_te`)."""
    from tvm import te

    from tvm_mpq.compiler.int_ops import respec_codes_te
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.quant.dyadic import requantize_dyadic_ref
    from tvm_mpq.quant.integer import QSpec, requant_params

    src, dst = QSpec(*_SPEC), QSpec(*_SPEC2)
    q = te.placeholder(shape, "uint8", "q")
    qv = rng.integers(0, 256, shape).astype(np.uint8)
    ref = requantize_dyadic_ref(qv, *requant_params(src, dst), 0, dst.qmax)
    return KernelCase(name, te.create_prim_func([q, respec_codes_te(q, src, dst, xlen)]),
                      [qv, np.zeros(shape, np.uint8)], {1: ref.astype(np.uint8)})


def _act_case(name: str, shape: tuple[int, ...], act: str, rng: np.random.Generator
              ) -> KernelCase:
    """An activation run in float (TVM's own lowering: ``relu`` or ReLU6's ``clip``)."""
    from tvm import te, topi

    from tvm_mpq.measure.baremetal import KernelCase

    x = te.placeholder(shape, "float32", "x")
    xv = (rng.standard_normal(shape) * 4).astype(np.float32)
    y, ref = ((topi.nn.relu(x), np.maximum(xv, 0)) if act == "relu" else
              (topi.clip(x, 0.0, 6.0), np.clip(xv, 0, 6)))
    return KernelCase(name, te.create_prim_func([x, y]), [xv, np.zeros(shape, np.float32)],
                      {1: ref.astype(np.float32)})


def _pool_cases(name: str, shape: tuple[int, ...], xlen: int, rng: np.random.Generator
                ) -> tuple[KernelCase, KernelCase]:
    """Global average pooling over ``shape`` (NCHW): on codes
    (:func:`~tvm_mpq.compiler.int_ops.mean_codes_te`, ``<name>_mc``) and in float (TVM's own
    ``mean``, ``<name>_mf``)."""
    import tvm
    from tvm import te, topi

    from tvm_mpq.compiler.int_ops import mean_codes_te
    from tvm_mpq.measure.baremetal import KernelCase
    from tvm_mpq.quant.dyadic import requantize_dyadic_ref
    from tvm_mpq.quant.integer import QSpec, mean_params

    n, c, h, w = shape
    src, dst = QSpec(*_SPEC), QSpec(*_SPEC2)
    q = te.placeholder(shape, "uint8", "q")
    qv = rng.integers(0, 256, shape).astype(np.uint8)
    sums = qv.astype(np.int64).sum(axis=(2, 3), keepdims=True)
    ref_c = requantize_dyadic_ref(sums, *mean_params(src, dst, h * w), 0, dst.qmax)
    x = te.placeholder(shape, "float32", "x")
    xv = rng.standard_normal(shape).astype(np.float32)
    out_shape = (n, c, 1, 1)
    return (KernelCase(name + "_mc", te.create_prim_func(
                [q, mean_codes_te(q, src, dst, 0, dst.qmax, True, xlen)]),
                [qv, np.zeros(out_shape, np.uint8)], {1: ref_c.astype(np.uint8)}),
            KernelCase(name + "_mf", te.create_prim_func(  # as Relax legalizes mean
                [x, topi.divide(topi.sum(x, [2, 3], True), tvm.tirx.const(h * w, "float32"))]),
                [xv, np.zeros(out_shape, np.float32)], {1: xv.mean(axis=(2, 3), keepdims=True)},
                rtol=1e-4, atol=1e-5))


def _quantized_integer_cases(name: str, r: Any, ctx: LayerContext, xlen: int,
                             rng: np.random.Generator) -> list[tuple[KernelCase, int]]:
    """A quantized layer's passes with the integer glue, as (case, sign): its requantize
    epilogue (a float epilogue for the model output), and the spec change of input codes
    other operators read too."""
    out = [(_dequantize_case(name + "_de", r.output_shape, rng) if ctx.output else
            requantize_case(name, r.output_shape, xlen, rng), 1)]
    if ctx.source == "shared":
        out.append((_respec_case(name + "_rs", r.input_shape, xlen, rng), 1))
    return out


def _fp32_integer_cases(name: str, r: Any, ctx: LayerContext, xlen: int,
                        rng: np.random.Generator) -> list[tuple[KernelCase, int]]:
    """An fp32 layer's passes with the integer glue, as (case, sign), charged to it as if its
    neighbours were quantized: its bias pass and activation (in float) and its output
    quantized for the next layer (after a global pooling, then in float: the pooled values;
    none for the model output); at its input what changes around it: the model input's
    quantize disappears, a producing layer dequantizes in its epilogue (and runs its
    activation, and a pooling in between, in float) instead of requantizing, or other
    integer codes are dequantized."""
    i_sh, o_sh = r.input_shape, r.output_shape
    out: list[tuple[KernelCase, int]] = []
    if r.has_bias:
        out.append((_bias_case(name + "_b", o_sh, rng), 1))
    if ctx.act:
        out.append((_act_case(name + "_a", o_sh, ctx.act, rng), 1))
    if ctx.pooled and len(o_sh) == 4:
        mc, mf = _pool_cases(name + "_o", o_sh, xlen, rng)
        out += [(mf, 1), (mc, -1)]
        o_sh = (*o_sh[:2], 1, 1)
    if not ctx.output:
        out.append((_quantize_codes_case(name + "_qc", o_sh, rng), 1))
    if ctx.source == "input":
        out.append((_quantize_codes_case(name + "_in", i_sh, rng), -1))
    elif ctx.source in ("layer", "pool"):
        p_sh = ctx.pool_in if ctx.source == "pool" and ctx.pool_in else i_sh
        out += [(_dequantize_case(name + "_de", p_sh, rng), 1),
                (requantize_case(name + "_rq", p_sh, xlen, rng), -1)]
        if ctx.source_act:
            out.append((_act_case(name + "_pa", p_sh, ctx.source_act, rng), 1))
        if p_sh is not i_sh and len(p_sh) == 4:
            mc, mf = _pool_cases(name + "_i", tuple(p_sh), xlen, rng)
            out += [(mf, 1), (mc, -1)]
    else:
        out.append((_dequantize_codes_case(name + "_dq", i_sh, rng), 1))
    return out


def _integer_cases(table: Any, cache: dict[str, float], profile: Profile,
                   contexts: dict[str, LayerContext], rng: np.random.Generator
                   ) -> tuple[list[KernelCase], dict[str, list[tuple[str, int]]], dict[str, str]]:
    """The integer glue's cases of the passes not in ``cache`` (keyed by workload key, fp32
    suffix and context tag), and which cache key each returned overhead key reads."""
    from tvm_mpq.schedules.workload import workload_from_layer

    cases: list[KernelCase] = []
    owners: dict[str, list[tuple[str, int]]] = {}
    wanted: dict[str, str] = {}
    for r in table:
        if not r.quantizable:
            continue
        key = workload_from_layer(r).key()
        if key in wanted:  # the first layer of a workload prices it
            continue
        ctx = contexts.get(r.name, LayerContext())
        for suffix, build in (("", _quantized_integer_cases), (FP32_SUFFIX, _fp32_integer_cases)):
            ck = f"{key}{suffix}@{ctx.tag()}"
            wanted[key + suffix] = ck
            if ck in cache or ck in owners:
                continue
            parts = build(f"p{len(owners)}", r, ctx, profile.word_bits, rng)
            owners[ck] = [(c.name, sign) for c, sign in parts]
            cases += [c for c, _ in parts]
    return cases, owners, wanted


def _load_cache(path: str) -> dict[str, dict[str, float]]:
    """The cached costs of ``path`` per glue if it holds this :data:`PASSES_REVISION` (else
    {}: stale, measure again); a file that cannot be read is moved to ``<path>.corrupt``."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            saved = json.load(f)
        if saved.get("passes_revision") != PASSES_REVISION:
            return {}
        return {str(g): {str(k): float(v) for k, v in costs.items()}
                for g, costs in saved["costs"].items() if g in GLUES}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        os.replace(path, path + ".corrupt")
        log.warning("%s is corrupt (%s: %s): moved to %s.corrupt, measuring the passes again",
                    path, type(e).__name__, e, path)
        return {}
