"""Hardware-aware mixed-precision search: cost model, sensitivity, NSGA-II.

Stages (each a module with a narrow, documented interface)::

    features    CostQuery (workload, variant, bits, profile) -> feature vector
    costmodel   CostModel.fit(db records) / predict -> (cost, log_std); save/load (versioned);
                evaluate_holdout; initial_design; select_for_measurement
    sensitivity layer_sensitivity(model, calib, eval) -> SensitivityTable (per layer, per bits)
    problem     MPQProblem(layer_table, cost, sensitivity, profile, bits=..., max_latency=...)
    nsga        run_nsga(problem, workdir=...) -> SearchResult (Pareto front of QuantPlans);
                refine(result, eval_fn); hypervolume / hv_ratio / exhaustive_front
    plots       plot_pareto(result, path); plot_bits(plan, path)

Typical flow (what ``tvm_mpq.tune`` composes)::

    table = import_model(model, example).table
    qs = initial_design(table, QUANT_VARIANTS, bits, profile, budget=64)
    measure_many([q.request() for q in qs], profile, backend, db=db)
    cm = CostModel().fit(db.records(profile, backend, status="ok"))
    sens = layer_sensitivity(model, calib_x, (val_x, val_y), bits, table.quantizable_names())
    prob = MPQProblem(table, cm, sens, profile, bits=bits, max_latency=budget)
    res = run_nsga(prob, workdir=workdir)          # res.feasible / res.message, never raises
    res = refine(res, eval_fn)                     # measured accuracy replaces the proxy

Names are imported lazily (importing this package does not import xgboost or pymoo).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CostQuery": "features", "featurize": "features", "layer_workload": "features",
    "FEATURE_NAMES": "features", "QUANT_VARIANTS": "features",
    "CostModel": "costmodel", "CostModelMismatchError": "costmodel", "HoldoutReport": "costmodel",
    "evaluate_holdout": "costmodel", "initial_design": "costmodel",
    "select_for_measurement": "costmodel", "workload_groups": "costmodel",
    "SensitivityTable": "sensitivity", "layer_sensitivity": "sensitivity",
    "MPQProblem": "problem", "OBJECTIVES": "problem",
    "FrontMember": "nsga", "SearchResult": "nsga", "run_nsga": "nsga", "refine": "nsga",
    "hypervolume": "nsga", "hv_ratio": "nsga", "exhaustive_front": "nsga",
    "non_dominated": "nsga",
    "plot_pareto": "plots", "plot_bits": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
