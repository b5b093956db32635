"""The mixed-precision search problem as data (a vectorised pymoo ``Problem``).

Genes, per searched layer (integer-encoded choices):

* ``bits``: index into the layer's options -- fp32 (when allowed) first, then the
  ``(w_bits, a_bits)`` pairs from most to fewest bits (neighbouring indices are
  similar configs, which suits SBX / polynomial mutation with rounding);
* ``variant`` (only with ``search_variant=True``): index into ``variants``. By
  default the variant is not a gene: it has no effect on accuracy or size (the
  integer kernels are bit-exact), so each layer simply uses the variant the cost
  model predicts fastest for its bits -- a smaller space with the same front.

Objectives (minimised, any subset, in this order): ``latency`` = sum over the
model's call sites of predicted kernel cost (unsearched / non-quantizable call
sites at their fp32 cost), ``drop`` = additive sensitivity proxy, ``size`` =
weight bytes (as :meth:`QuantPlan.weight_bytes`). Optional constraints:
``max_latency``, ``max_drop``, ``max_size`` (``value - budget <= 0``), and ``max_flash`` on
``flash``: the bytes of the weights as the chosen kernels store them (pre-packed: e.g. 4
bytes per weight for ``swar`` w8a8) plus the fp32 biases -- the part of a standalone
artifact's flash that the plan decides (code and constants come on top).

All per-layer costs are predicted once, in one batch, when the problem is built:
evaluating a population is a few numpy gathers.

Public API::

    prob = MPQProblem(table, cost_model, sens, "rv64gc_zbb", bits=[(8, 8), (4, 4), (2, 2)],
                      max_latency=2e6)
    plan = prob.decode(x); x = prob.encode(plan); prob.evaluate_plan(plan) -> {"latency": ..}
    prob.uniform_genomes()  # seeds: one genome per uniform config
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pymoo.core.problem import Problem

from tvm_mpq.costmodel.features import QUANT_VARIANTS
from tvm_mpq.costmodel.query import CostQuery
from tvm_mpq.quant.plan import FP32, LayerConfig, QuantPlan, layer_weight_bytes, resolve_variant
from tvm_mpq.quant.sensitivity import SensitivityTable
from tvm_mpq.schedules.workload import workload_from_layer

__all__ = ["OBJECTIVES", "CostFn", "MPQProblem", "plan_queries"]

OBJECTIVES = ("latency", "drop", "size")
CostFn = Callable[[Sequence[CostQuery]], np.ndarray]
"""Anything mapping queries to predicted costs: a fitted ``CostModel`` or a table lookup."""


def _order_bits(bits: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    uniq = list(dict.fromkeys((int(w), int(a)) for w, a in bits))
    return sorted(uniq, key=lambda b: (-(b[0] * b[1]), -b[0]))


class MPQProblem(Problem):
    """Per-layer bits (and optionally variant) search; see the module docstring.

    Args:
        layer_table: the model's :class:`~tvm_mpq.frontend.layers.LayerTable`.
        cost: a fitted :class:`~tvm_mpq.costmodel.model.CostModel` or any
            ``queries -> costs`` callable.
        sensitivity: per-layer sensitivity (must cover ``bits`` for every searched layer).
        profile: target profile name the costs are for.
        bits: candidate ``(w_bits, a_bits)`` pairs per layer.
        variants: candidate quantized kernel variants.
        allow_fp32: whether a layer may stay fp32.
        search_variant: make the variant a gene (default: fastest predicted variant).
        metric: sensitivity metric ("loss", "acc", "kl", "rel_mse"; default: the table's).
        objectives: which of :data:`OBJECTIVES` to minimise.
        max_latency, max_drop, max_size, max_flash: optional budgets (constraints).
        layers: layers to search (default: ``layer_table.quantizable_names()``);
            the other call sites stay fp32.
    """

    def __init__(
        self,
        layer_table: Any,
        cost: CostFn,
        sensitivity: SensitivityTable,
        profile: str = "rv64gc_zbb",
        *,
        bits: Sequence[tuple[int, int]] = ((8, 8), (4, 8), (4, 4), (2, 2)),
        variants: Sequence[str] = QUANT_VARIANTS,
        allow_fp32: bool = True,
        search_variant: bool = False,
        metric: str | None = None,
        objectives: Sequence[str] = OBJECTIVES,
        max_latency: float | None = None,
        max_drop: float | None = None,
        max_size: float | None = None,
        layers: Sequence[str] | None = None,
        max_flash: float | None = None,
    ) -> None:
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad or not objectives:
            raise ValueError(f"objectives must be a non-empty subset of {OBJECTIVES}, got {objectives}")
        variants = list(variants)
        if not variants or any(v not in QUANT_VARIANTS for v in variants):
            raise ValueError(f"variants must be a non-empty subset of {QUANT_VARIANTS}")
        self.profile, self.variants = profile, variants
        self.search_variant = bool(search_variant)
        self.metric = metric or sensitivity.default_metric()
        self.objective_names = tuple(objectives)
        self.layer_names = list(layers) if layers is not None else layer_table.quantizable_names()
        if not self.layer_names:
            raise ValueError("no layer to search")
        qbits = _order_bits(bits)
        self.options: list[tuple[int, int]] = ([(FP32, FP32)] if allow_fp32 else []) + qbits
        self.budgets = {"latency": max_latency, "drop": max_drop, "size": max_size}
        if max_flash is not None:  # (only then: the key is part of the fingerprint)
            self.budgets["flash"] = max_flash
        self.constraint_names = tuple(k for k, v in self.budgets.items() if v is not None)

        rows = list(layer_table)
        sites: dict[str, list[Any]] = {n: [] for n in self.layer_names}
        for r in rows:
            if r.name in sites:
                sites[r.name].append(r)
        missing = [n for n in self.layer_names if not sites[n]]
        if missing:
            raise ValueError(f"layers not in the layer table: {missing[:5]}")
        self._build_cost_tables(rows, sites, qbits, cost)
        self._build_size_tables(rows, sites)
        self.flash_table: list[np.ndarray] | None = None
        if max_flash is not None:
            self._build_flash_tables(rows, sites)
        self.drop_table = [np.asarray([0.0 if w == FP32 else max(sensitivity.value(n, w, a, self.metric), 0.0)
                                       for w, a in self.options]) for n in self.layer_names]

        L = len(self.layer_names)
        n_var = 2 * L if self.search_variant else L
        xu = [len(self.options) - 1] * L + ([len(variants) - 1] * L if self.search_variant else [])
        super().__init__(n_var=n_var, n_obj=len(self.objective_names),
                         n_ieq_constr=len(self.constraint_names), xl=np.zeros(n_var),
                         xu=np.asarray(xu, dtype=float), vtype=int)

    def _build_cost_tables(self, rows: list[Any], sites: dict[str, list[Any]],
                           qbits: list[tuple[int, int]], cost: CostFn) -> None:
        """``cost_table[l][option, variant]``, ``best_variant``, ``fixed_latency``: one batched
        prediction of every call site's fp32 cost and every (bits, variant) of searched ones."""
        profile, variants = self.profile, self.variants
        queries = [CostQuery(workload_from_layer(r), "fp32", 8, 8, profile) for r in rows]
        qidx: dict[tuple, int] = {}
        for n in self.layer_names:
            for r in sites[n]:
                wl = workload_from_layer(r)
                for w, a in qbits:
                    for v in variants:
                        qidx[(r.index, w, a, v)] = len(queries)
                        queries.append(CostQuery(wl, v, w, a, profile))
        pred = np.asarray(cost(queries), dtype=np.float64)
        if pred.shape != (len(queries),) or not np.all(np.isfinite(pred)):
            raise ValueError("cost function must return one finite cost per query")
        fp32_of_row = {r.index: pred[i] for i, r in enumerate(rows)}
        self.fixed_latency = float(sum(fp32_of_row[r.index] for r in rows if r.name not in sites))
        # the fp32 option has the same cost for every variant column
        self.cost_table: list[np.ndarray] = []
        for n in self.layer_names:
            t = np.zeros((len(self.options), len(variants)))
            for oi, (w, a) in enumerate(self.options):
                for vi, v in enumerate(variants):
                    t[oi, vi] = sum(fp32_of_row[r.index] if w == FP32 else pred[qidx[(r.index, w, a, v)]]
                                    for r in sites[n])
            self.cost_table.append(t)
        self.best_variant = [t.argmin(axis=1) for t in self.cost_table]

    def _build_size_tables(self, rows: list[Any], sites: dict[str, list[Any]]) -> None:
        """``size_table[l][option]`` and ``fixed_size``: once per module, by the one size
        rule (:func:`~tvm_mpq.quant.plan.layer_weight_bytes`, as :meth:`QuantPlan.weight_bytes`)."""
        seen: set[str] = set()
        fixed_size = 0
        for r in rows:
            if r.name not in sites and r.name not in seen:
                seen.add(r.name)
                fixed_size += layer_weight_bytes(r, FP32)
        self.size_table: list[np.ndarray] = [
            np.asarray([layer_weight_bytes(sites[n][0], w) for w, _ in self.options], dtype=np.float64)
            for n in self.layer_names]
        self.fixed_size = float(fixed_size)

    def _build_flash_tables(self, rows: list[Any], sites: dict[str, list[Any]]) -> None:
        """``flash_table[l][option, variant]`` and ``fixed_flash``: packed weight bytes of
        each option's kernel (:func:`~tvm_mpq.schedules.registry.packed_weight_bytes`) + fp32
        biases; fp32 layers store float weights (after :meth:`_build_size_tables`)."""
        from tvm_mpq.schedules.registry import packed_weight_bytes
        from tvm_mpq.targets import get_profile

        word_bits = get_profile(self.profile).word_bits
        self.fixed_flash = self.fixed_size  # unsearched layers stay fp32: float weights
        self.flash_table = []
        for n in self.layer_names:
            r = sites[n][0]
            t = np.zeros((len(self.options), len(self.variants)))
            for oi, (w, a) in enumerate(self.options):
                for vi, v in enumerate(self.variants):
                    t[oi, vi] = layer_weight_bytes(r, FP32) if w == FP32 else (
                        packed_weight_bytes(workload_from_layer(r), v, w, a, word_bits=word_bits)
                        + 4 * r.bias_numel)
            self.flash_table.append(t)

    # ------------------------------------------------------------------ evaluation
    def genes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Option and variant indices ``(B, V)``, each ``(n, layers)``, of genomes ``X``
        (rounded and clipped to the bounds; without ``search_variant`` the variant is each
        layer's fastest for its option)."""
        X = np.atleast_2d(np.asarray(X))
        Xi = np.clip(np.rint(X).astype(np.int64), 0, np.asarray(self.xu, dtype=np.int64))
        L = len(self.layer_names)
        B = Xi[:, :L]
        if self.search_variant:
            V = Xi[:, L:]
        else:
            V = np.stack([self.best_variant[l][B[:, l]] for l in range(L)], axis=1)
        return B, V

    def evaluate_all(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Every objective (even unselected ones) for genomes ``X`` (n, n_var)."""
        B, V = self.genes(X)
        n = len(B)
        lat = np.full(n, self.fixed_latency)
        drop = np.zeros(n)
        size = np.full(n, self.fixed_size)
        for l in range(len(self.layer_names)):
            lat += self.cost_table[l][B[:, l], V[:, l]]
            drop += self.drop_table[l][B[:, l]]
            size += self.size_table[l][B[:, l]]
        vals = {"latency": lat, "drop": drop, "size": size}
        if self.flash_table is not None:
            vals["flash"] = self.fixed_flash + sum(
                t[B[:, l], V[:, l]] for l, t in enumerate(self.flash_table))
        return vals

    def violations(self, vals: dict[str, np.ndarray]) -> np.ndarray:
        """Constraint values ``(n, n_constr)``, <= 0 where met (relative to each budget)."""
        cols = [(vals[k] - self.budgets[k]) / max(abs(self.budgets[k]), 1e-12)
                for k in self.constraint_names]
        n = len(next(iter(vals.values())))
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0))

    def total_violation(self, vals: dict[str, np.ndarray]) -> np.ndarray:
        """Sum of the relative budget overshoots per genome (0: feasible)."""
        return np.clip(self.violations(vals), 0, None).sum(axis=1)

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        vals = self.evaluate_all(x)
        out["F"] = np.stack([vals[k] for k in self.objective_names], axis=1)
        if self.constraint_names:
            out["G"] = self.violations(vals)

    # ------------------------------------------------------------------ plans <-> genomes
    def decode(self, x: np.ndarray) -> QuantPlan:
        """The :class:`QuantPlan` of one genome (variants resolved, searched layers only)."""
        B, V = self.genes(x)
        cfgs = []
        for l, n in enumerate(self.layer_names):
            w, a = self.options[B[0, l]]
            cfgs.append((n, LayerConfig(FP32, FP32, None) if w == FP32
                         else LayerConfig(w, a, self.variants[V[0, l]])))
        return QuantPlan(cfgs)

    def encode(self, plan: QuantPlan) -> np.ndarray:
        """Genome of a plan (layers missing from it count as fp32).

        Raises:
            ValueError: a layer's bits are not among its options (or fp32 not allowed).
        """
        L = len(self.layer_names)
        x = np.zeros(self.n_var, dtype=np.int64)
        for l, n in enumerate(self.layer_names):
            cfg = plan[n] if n in plan else LayerConfig(FP32, FP32)
            key = (FP32, FP32) if cfg.is_fp32 else (cfg.w_bits, cfg.a_bits)
            if key not in self.options:
                raise ValueError(f"layer {n!r}: {cfg.short()} is not a search option "
                                 f"({', '.join(_opt_name(o) for o in self.options)})")
            x[l] = self.options.index(key)
            if self.search_variant:
                v = cfg.variant if cfg.variant in self.variants else None
                x[L + l] = self.variants.index(v) if v else self.best_variant[l][x[l]]
        return x

    def evaluate_plan(self, plan: QuantPlan) -> dict[str, float]:
        """Objective values of one plan (with its variants when ``search_variant``)."""
        vals = self.evaluate_all(self.encode(plan)[None])
        return {k: float(v[0]) for k, v in vals.items()}

    def uniform_genomes(self, configs: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """One genome per uniform config (default: every option, e.g. fp32, w8a8, w4a4, w2a2)."""
        configs = list(self.options if configs is None else configs)
        rows = []
        for c in configs:
            c = (FP32, FP32) if c[0] >= FP32 else (int(c[0]), int(c[1]))
            if c in self.options:
                oi = self.options.index(c)
                b = np.full(len(self.layer_names), oi)
                v = ([self.best_variant[l][oi] for l in range(len(self.layer_names))]
                     if self.search_variant else [])
                rows.append(np.concatenate([b, np.asarray(v, dtype=np.int64)]))
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.n_var)

    def plan_queries(self, plan: QuantPlan, layer_table: Any) -> list[CostQuery]:
        """The kernels a plan runs, its variants resolved as the search resolves them (each
        layer's fastest for its bits unless the plan names one); see :func:`plan_queries`."""
        return plan_queries(self.decode(self.encode(plan)), layer_table, self.profile)

    @property
    def n_plans(self) -> int:
        """Size of the search space."""
        per = len(self.options) * (len(self.variants) if self.search_variant else 1)
        return per ** len(self.layer_names)

    def fingerprint(self) -> str:
        """Hash of everything that defines the problem (checkpoints refuse another one)."""
        h = hashlib.sha256()
        h.update(repr((self.layer_names, self.options, self.variants, self.search_variant,
                       self.objective_names, self.budgets, self.metric)).encode())
        for t in (*self.cost_table, *self.drop_table, *self.size_table, *(self.flash_table or [])):
            h.update(np.ascontiguousarray(t, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]


def plan_queries(plan: QuantPlan, layer_table: Any, profile: str) -> list[CostQuery]:
    """The kernel each call site of ``layer_table`` runs under ``plan``, in table order.

    A layer missing from the plan, planned fp32 or not quantizable runs the ``fp32`` kernel;
    a quantized layer without a variant gets :func:`~tvm_mpq.quant.plan.resolve_variant`'s.
    """
    out = []
    for r in layer_table:
        cfg = plan[r.name] if r.name in plan else LayerConfig(FP32, FP32)
        if cfg.is_fp32 or not r.quantizable:
            out.append(CostQuery(workload_from_layer(r), "fp32", 8, 8, profile))
        else:
            cg = r.weight_shape[1] if r.kind == "conv2d" else None
            v = cfg.variant or resolve_variant(cfg.w_bits, cfg.a_bits, profile, cg)
            out.append(CostQuery(workload_from_layer(r), v, cfg.w_bits, cfg.a_bits, profile))
    return out


def _opt_name(o: tuple[int, int]) -> str:
    return "fp32" if o[0] == FP32 else f"w{o[0]}a{o[1]}"
