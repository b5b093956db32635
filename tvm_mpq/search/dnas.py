"""Differentiable bit-width search (DNAS, Wu et al. 2018) and the Free Bits refinement.

A **supernet** replaces every searched layer of the BN-folded model by a :class:`MixedLayer`:
one branch per option of the :class:`~tvm_mpq.search.problem.MPQProblem` (fp32 and each
``(w_bits, a_bits)``), all sharing the layer's float weight, each branch quantizing input
and weight under the project's contract (the calibrated scales of that option, the
straight-through estimator of :class:`~tvm_mpq.quant.qat.QATLayer`). The layer's output is
the Gumbel-softmax-weighted sum of its branches (by default, two sampled branches mixed by
the softmax of their logits: ``DNASSettings.paths``); the architecture logits ``alpha``
train with the weights on

    cross_entropy + cost_weight * expected_cost / reference_cost

where the expected cost is ``sum_l p_l . c_l`` over the layers' option costs ``c_l``:

* ``cost="measured"``: the problem's cost table, i.e. the measured kernel cost of the
  option's fastest variant on the target (predicted by the cost model where not measured)
  plus the layer's priced passes -- hardware-aware by measurement;
* ``cost="bitops"``: the option's bit operations, ``MACs * w_bits * a_bits`` (fp32 as
  32 x 32) -- the hardware-agnostic proxy of Free Bits' first phase.

``reference_cost`` is the uniform w8a8 model's. Each cost weight of a sweep gives one plan
(each layer's most likely option): the sweep is the front. After the search the plan
carries no supernet weights: accuracy is that of the plan under post-training quantization
(or fine-tuned, later in ``tune()``).

:func:`free_bits` is Free Bits' hardware-aware step on measured costs: a layer moves to a
higher precision wherever that costs no more on the target ("free bits"; typical for
depthwise layers on cores without sub-byte support). :func:`lower_costly_bits` then lowers
the layers with the largest measured saving per unit of sensitivity, one at a time, each
checked against the accuracy budget with a real evaluation.

Public API::

    front = dnas_search(problem, folded_model, qparams_of, train_data, DNASSettings(),
                        macs=macs_per_layer)
    plan = free_bits(problem, plan)
    plan = lower_costly_bits(problem, plan, drop_of, max_drop=0.01)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_mpq.quant.folding import set_submodule
from tvm_mpq.quant.plan import FP32, QuantPlan
from tvm_mpq.quant.qat import QATLayer, train_batches
from tvm_mpq.search.front import SearchResult, priced_members
from tvm_mpq.search.problem import MPQProblem

__all__ = ["DNAS_COSTS", "DNASSettings", "MixedLayer", "dnas_search", "free_bits",
           "lower_costly_bits", "option_costs", "price_plans", "train_supernet"]

#: what the supernet's cost term counts: measured kernel costs or bit operations
DNAS_COSTS = ("measured", "bitops")


@dataclass(frozen=True)
class DNASSettings:
    """Supernet training settings (defaults: a few minutes per cost weight on 2 CPU cores for
    the bundled MobileNetV2).

    Attributes:
        steps: training steps per cost weight.
        batch_size: training images per step.
        arch_lr: Adam learning rate of the architecture logits.
        weight_lr: Adam learning rate of the shared float weights.
        tau: Gumbel-softmax temperature, annealed exponentially from ``tau[0]`` to ``tau[1]``.
        cost_weights: the sweep; each weight gives one plan.
        cost: one of :data:`DNAS_COSTS`.
        seed: random seed (batches, Gumbel noise).
        paths: branches run per layer and step. 2 (default): two options sampled without
            replacement from ``softmax(alpha)`` (Gumbel top-2), mixed by the softmax of their
            two logits, as ProxylessNAS samples two paths: the gradient compares the two
            options' effect on the loss at a third of the cost of all six. 1: the sampled
            option alone behind a straight-through gate (GDAS, Dong & Yang 2019; its
            gradient measures the output's scale, not a comparison, and drifted to the
            cheapest options in our runs). 0: every branch, weighted by the Gumbel-softmax
            sample (Wu et al.).
    """

    steps: int = 120
    batch_size: int = 64
    arch_lr: float = 0.05
    weight_lr: float = 1e-4
    tau: tuple[float, float] = (4.0, 0.5)
    cost_weights: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1)
    cost: str = "measured"
    seed: int = 0
    paths: int = 2

    def __post_init__(self) -> None:
        if self.cost not in DNAS_COSTS:
            raise ValueError(f"dnas cost {self.cost!r}: expected one of {DNAS_COSTS}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("dnas steps and batch_size must be >= 1")
        if not self.cost_weights or any(not w >= 0 for w in self.cost_weights):
            raise ValueError(f"dnas cost_weights must be non-negative, got {self.cost_weights}")
        if self.paths < 0:
            raise ValueError(f"dnas paths must be >= 0, got {self.paths}")
        if not (self.tau[0] > 0 and self.tau[1] > 0):
            raise ValueError(f"dnas tau must be positive, got {self.tau}")


class MixedLayer(nn.Module):
    """One searched layer of the supernet: the weighted sum of its option branches.

    Args:
        mod: the float conv / linear (its weight is shared by every branch).
        branches: per option, None for fp32 or a :class:`~tvm_mpq.quant.qat.QATLayer`.
    """

    def __init__(self, mod: nn.Module, branches: Sequence[QATLayer | None]):
        super().__init__()
        self.mod = mod
        self.branches = nn.ModuleList([nn.Identity() if b is None else b for b in branches])
        self.is_fp32 = [b is None for b in branches]
        self.alpha = nn.Parameter(torch.zeros(len(branches)))
        self.probs: torch.Tensor | None = None
        self.sampled: list[int] | None = None

    def branch(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Option ``i``'s output."""
        return self.mod(x) if self.is_fp32[i] else self.branches[i](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampled is not None and len(self.sampled) == 1:
            # one path behind a straight-through gate of value 1 (GDAS)
            i = self.sampled[0]
            p = torch.softmax(self.alpha, 0) if self.probs is None else self.probs
            return (1.0 - p[i].detach() + p[i]) * self.branch(i, x)
        if self.sampled is not None:  # the sampled paths, softmax over their logits
            idx, p = self.sampled, torch.softmax(self.alpha[self.sampled], 0)
        else:  # every path (Wu et al.)
            idx = list(range(len(self.branches)))
            p = torch.softmax(self.alpha, 0) if self.probs is None else self.probs
        out = None
        for k, i in enumerate(idx):
            y = self.branch(i, x)
            out = p[k] * y if out is None else out + p[k] * y
        return out


def _sample_paths(m: MixedLayer, paths: int) -> list[int] | None:
    """``paths`` distinct options drawn from ``softmax(alpha)`` (Gumbel top-k); None: all."""
    n = len(m.branches)
    if paths == 0 or paths >= n:
        return None
    g = -torch.log(-torch.log(torch.rand(n).clamp_(1e-20, 1.0)))
    return torch.topk(m.alpha.detach() + g, paths).indices.tolist()


def option_costs(problem: MPQProblem, cost: str, macs: dict[str, int] | None = None
                 ) -> list[np.ndarray]:
    """Per searched layer, the cost of each of ``problem.options``: the fastest variant's
    cost from the problem's table (``"measured"``), or ``MACs * w * a`` with fp32 as 32 x 32
    (``"bitops"``, needs ``macs``: layer name -> MACs summed over its call sites)."""
    if cost == "measured":
        return [np.asarray(t.min(axis=1), dtype=np.float64) for t in problem.cost_table]
    if cost != "bitops":
        raise ValueError(f"dnas cost {cost!r}: expected one of {DNAS_COSTS}")
    if macs is None or any(n not in macs for n in problem.layer_names):
        raise ValueError("cost='bitops' needs the MACs of every searched layer")
    return [np.asarray([macs[n] * (32 * 32 if w == FP32 else w * a) for w, a in problem.options],
                       dtype=np.float64) for n in problem.layer_names]


def _build_supernet(folded: nn.Module, problem: MPQProblem,
                    qparams_of: Callable[[int, int], Any]) -> tuple[nn.Module, list[MixedLayer]]:
    net = copy.deepcopy(folded).train()
    mods = dict(net.named_modules())
    mixed = []
    for name in problem.layer_names:
        mod = mods[name]
        branches = [None if w == FP32 else QATLayer(mod, qparams_of(w, a)[name])
                    for w, a in problem.options]
        ml = MixedLayer(mod, branches)
        set_submodule(net, name, ml)
        mixed.append(ml)
    return net, mixed


def train_supernet(folded: nn.Module, problem: MPQProblem, qparams_of: Callable[[int, int], Any],
                   train_data: Any, costs: Sequence[np.ndarray], cost_weight: float,
                   settings: DNASSettings, progress: bool = False) -> np.ndarray:
    """Train one supernet at one cost weight; the architecture logits ``(layers, options)``.

    Args:
        folded: the BN-folded float model (not modified).
        problem: the search problem (layers, options).
        qparams_of: ``(w_bits, a_bits) -> QuantParams`` of the uniform plan at those bits.
        train_data: ``(images, labels)`` or an iterable of batches (training split).
        costs: :func:`option_costs`.
        cost_weight: weight of the normalised expected cost in the loss.
        settings: :class:`DNASSettings`.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(settings.seed)
    net, mixed = _build_supernet(folded, problem, qparams_of)
    alphas = [m.alpha for m in mixed]
    arch_ids = {id(a) for a in alphas}
    weights = [p for p in net.parameters() if p.requires_grad and id(p) not in arch_ids]
    opt_w = torch.optim.Adam(weights, lr=settings.weight_lr)
    opt_a = torch.optim.Adam(alphas, lr=settings.arch_lr)
    ref = _reference_cost(problem, costs)
    c = [torch.as_tensor(ci / ref, dtype=torch.float32) for ci in costs]
    fixed = problem.fixed_latency / ref if settings.cost == "measured" else 0.0
    t0, t1 = settings.tau
    n = settings.steps
    bar = tqdm(total=n, disable=not progress, desc=f"dnas x{cost_weight:g}", unit="step")
    for step, (x, y) in enumerate(train_batches(train_data, settings.batch_size, n,
                                                settings.seed)):
        tau = t0 * (t1 / t0) ** (step / max(1, n - 1))
        for m in mixed:
            m.probs = F.gumbel_softmax(m.alpha, tau=tau)
            m.sampled = _sample_paths(m, settings.paths)
        ce = F.cross_entropy(net(x), y)
        exp_cost = fixed + sum(m.probs @ ci for m, ci in zip(mixed, c, strict=True))
        loss = ce + cost_weight * exp_cost
        opt_w.zero_grad()
        opt_a.zero_grad()
        loss.backward()
        opt_w.step()
        opt_a.step()
        bar.update()
        bar.set_postfix(ce=float(ce.detach()), cost=float(exp_cost.detach()))
    bar.close()
    return np.stack([m.alpha.detach().numpy().copy() for m in mixed])


def _reference_cost(problem: MPQProblem, costs: Sequence[np.ndarray]) -> float:
    """The uniform w8a8 model's cost under ``costs`` (the most-bits option when 8/8 is not
    one), plus the unsearched call sites for measured costs."""
    qi = next((i for i, o in enumerate(problem.options) if o[0] != FP32), 0)
    oi = problem.options.index((8, 8)) if (8, 8) in problem.options else qi
    total = float(sum(ci[oi] for ci in costs))
    return max(total, 1e-12)


def dnas_search(problem: MPQProblem, folded: nn.Module, qparams_of: Callable[[int, int], Any],
                train_data: Any, settings: DNASSettings, *, macs: dict[str, int] | None = None,
                workdir: str | None = None, progress: bool = False,
                refine_plan: Callable[[QuantPlan], QuantPlan] | None = None,
                cache_key: Any = None) -> SearchResult:
    """Sweep the cost weights; one plan per weight (each layer's most likely option).

    Args:
        problem: the search problem; its objectives price the plans found.
        folded, qparams_of, train_data: see :func:`train_supernet`.
        settings: :class:`DNASSettings` (the sweep is ``settings.cost_weights``).
        macs: layer name -> MACs (``cost="bitops"``).
        workdir: each weight's logits are saved there (``dnas_<key>_w<weight>.json``, keyed on
            the settings, the layers, options and costs trained against, and ``cache_key``)
            and reused by any later search with the same key (a resumed run, another search
            method on the same supernet, or a bit-ops search after new kernel measurements).
        cache_key: JSON-able identity of what the problem does not fix: the model's
            weights, the calibration and the training data.
        refine_plan: applied to each plan found (e.g. :func:`free_bits`, for Free Bits).

    Returns:
        A :class:`SearchResult` of the distinct plans, sorted by cost, with the problem's
        objective values (the accuracy drop is the sensitivity proxy until refined).
    """
    costs = option_costs(problem, settings.cost, macs)
    genomes = []
    for wgt in settings.cost_weights:
        key = _key(settings, problem, costs, cache_key)
        alpha = _cached_logits(workdir, key, problem, wgt)
        if alpha is None:
            alpha = train_supernet(folded, problem, qparams_of, train_data, costs, wgt,
                                   settings, progress)
            _save_logits(workdir, key, wgt, alpha)
        plan = problem.decode(_genome(problem, alpha.argmax(axis=1)))
        if refine_plan is not None:
            plan = refine_plan(plan)
        genomes.append(problem.encode(plan))
    return price_plans(problem, [problem.decode(g) for g in genomes],
                       f"DNAS sweep of {len(settings.cost_weights)} cost weights "
                       f"({settings.cost} cost)")


def price_plans(problem: MPQProblem, plans: Sequence[QuantPlan], source: str) -> SearchResult:
    """The distinct ``plans`` as a :class:`SearchResult` priced by ``problem`` (its objective
    values; the drop is the sensitivity proxy), cheapest first; ``source`` names the search
    that found them in the message."""
    X = np.unique(np.asarray([problem.encode(p) for p in plans], dtype=np.int64), axis=0)
    members = sorted(priced_members(problem, X), key=lambda m: (m.latency, m.violation))
    return SearchResult(members, any(m.feasible for m in members),
                        f"{len(members)} plans of {source}",
                        0, len(plans), problem.objective_names)


def _logits_path(workdir: str | None, key: dict[str, Any], wgt: float) -> str | None:
    if workdir is None:
        return None
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=repr).encode()).hexdigest()
    return os.path.join(workdir, f"dnas_{h[:12]}_w{wgt:g}.json")


def _key(settings: DNASSettings, problem: MPQProblem, costs: Sequence[np.ndarray],
         extra: Any) -> dict[str, Any]:
    """What a supernet's training depends on: the settings, the searched layers and their
    options, the per-option costs it trains against (with the unsearched call sites' for
    measured costs) and ``extra``. Not the rest of the problem: a bit-ops supernet is the same
    whatever the kernels measured (it is reused across kernel revisions)."""
    d = {k: getattr(settings, k) for k in settings.__dataclass_fields__ if k != "cost_weights"}
    d["tau"] = list(settings.tau)
    h = hashlib.sha256()
    for c in costs:
        h.update(np.ascontiguousarray(c, dtype=np.float64).tobytes())
    if settings.cost == "measured":
        h.update(repr(float(problem.fixed_latency)).encode())
    return {"settings": d, "layers": list(problem.layer_names),
            "options": [list(o) for o in problem.options], "costs": h.hexdigest()[:16],
            "data": extra}


def _cached_logits(workdir: str | None, key: dict[str, Any], problem: MPQProblem,
                   wgt: float) -> np.ndarray | None:
    path = _logits_path(workdir, key, wgt)
    if path is None or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
        alpha = np.asarray(d["alpha"], dtype=np.float64)
    except (OSError, ValueError, KeyError):
        return None
    ok = json.loads(json.dumps(key, default=repr)) == d.get("key") and alpha.shape == (
        len(problem.layer_names), len(problem.options))
    return alpha if ok else None


def _save_logits(workdir: str | None, key: dict[str, Any], wgt: float, alpha: np.ndarray) -> None:
    path = _logits_path(workdir, key, wgt)
    if path is None:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"key": key, "cost_weight": wgt, "alpha": alpha.tolist()}, f, default=repr)
    os.replace(tmp, path)


def _precision(o: tuple[int, int]) -> tuple[int, int]:
    return (64, 64) if o[0] == FP32 else o


def _bits_product(o: tuple[int, int]) -> int:
    w, a = _precision(o)
    return w * a


def _option_cost(problem: MPQProblem, l: int, oi: int) -> float:
    return float(problem.cost_table[l][oi].min())


def free_bits(problem: MPQProblem, plan: QuantPlan) -> QuantPlan:
    """Raise each layer to the highest-precision option that costs no more on the target
    (measured costs: the problem's table) -- Free Bits' "free bits up". An option is higher
    when neither its weight nor its activation bits are lower (fp32 is highest)."""
    B, _ = problem.genes(problem.encode(plan)[None])
    x = B[0].copy()
    for l in range(len(problem.layer_names)):
        cur = problem.options[x[l]]
        cw, ca = _precision(cur)
        base = _option_cost(problem, l, x[l])
        ups = [i for i, o in enumerate(problem.options)
               if _precision(o)[0] >= cw and _precision(o)[1] >= ca
               and _option_cost(problem, l, i) <= base]
        x[l] = max(ups, key=lambda i: (_bits_product(problem.options[i]),
                                       -_option_cost(problem, l, i)))
    return problem.decode(_genome(problem, x))


def _genome(problem: MPQProblem, options: np.ndarray) -> np.ndarray:
    """A genome from per-layer option indices (each layer's fastest variant)."""
    if not problem.search_variant:
        return options.astype(np.int64)
    v = [problem.best_variant[l][o] for l, o in enumerate(options)]
    return np.concatenate([options, np.asarray(v)]).astype(np.int64)


def lower_costly_bits(problem: MPQProblem, plan: QuantPlan, drop_of: Callable[[QuantPlan], float],
                      max_drop: float, max_evals: int = 8, start_drop: float | None = None
                      ) -> QuantPlan:
    """Free Bits' "costly bits down": try the lower-precision neighbour of each layer in
    order of measured saving per unit of sensitivity proxy, keep a change when the real
    accuracy drop (``drop_of(plan)``, a fraction) stays within ``max_drop``.

    At most ``max_evals`` evaluations (``start_drop``: the plan's known drop, else one of
    them measures it); a plan already over the budget is returned as is."""
    B, _ = problem.genes(problem.encode(plan)[None])
    x = B[0].copy()
    if start_drop is None and max_evals > 0:
        start_drop = drop_of(plan)
        max_evals -= 1
    if max_evals <= 0 or start_drop is None or start_drop > max_drop:
        return plan
    cands = []
    for l in range(len(problem.layer_names)):
        cw, ca = _precision(problem.options[x[l]])
        lower = [i for i, o in enumerate(problem.options)
                 if _precision(o)[0] <= cw and _precision(o)[1] <= ca and i != x[l]
                 and _option_cost(problem, l, i) < _option_cost(problem, l, x[l])]
        if not lower:
            continue
        i = max(lower, key=lambda i: _bits_product(problem.options[i]))  # nearest step down
        saving = _option_cost(problem, l, x[l]) - _option_cost(problem, l, i)
        sens = problem.drop_table[l][i] - problem.drop_table[l][x[l]]
        cands.append((saving / (max(sens, 0.0) + 1e-4), l, i))
    evals = 0
    for _, l, i in sorted(cands, reverse=True):
        if evals >= max_evals:
            break
        y = x.copy()
        y[l] = i
        trial = problem.decode(_genome(problem, y))
        evals += 1
        if drop_of(trial) <= max_drop:
            x = y
    return problem.decode(_genome(problem, x))
