"""Whole-model plans from the search's plans and the uniform baselines."""

from __future__ import annotations

from typing import Any

import torch

from tvm_mpq.quant.plan import QuantPlan

__all__ = ["full_plan", "uniform_plan"]


def full_plan(plan: QuantPlan, model: torch.nn.Module) -> QuantPlan:
    """The search's plan covers the searched layers; give every other layer fp32."""
    full = QuantPlan.fp32(model)
    for name in plan.layers():
        cfg = plan[name]
        if name in full:
            full.set(name, w_bits=cfg.w_bits, a_bits=cfg.a_bits, variant=cfg.variant)
    return full


def uniform_plan(model: torch.nn.Module, w: int, a: int, variant: str | None,
                 problem: Any | None = None) -> QuantPlan:
    """Every layer at ``w``/``a`` bits; with ``variant`` None and a search ``problem``, each
    layer gets the variant the problem's costs say is fastest."""
    plan = QuantPlan.uniform(model, w_bits=w, a_bits=a, variant=variant)
    if variant is None and problem is not None:
        try:
            plan = problem.decode(problem.encode(plan))
        except (KeyError, ValueError):
            pass
    return plan
