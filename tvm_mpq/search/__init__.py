"""Search stage: the MPQ problem (pymoo), NSGA-II, fronts, refinement and repair.

The cost model (:mod:`tvm_mpq.costmodel`) and sensitivity (:mod:`tvm_mpq.quant.sensitivity`)
are re-exported here, where they used to live.

Stages (each a module with a narrow, documented interface)::

    costmodel   (re-exported) CostQuery (workload, variant, bits, profile); CostModel.fit(db
                records) / predict -> (cost, log_std); save/load (versioned); evaluate_holdout;
                initial_design; select_for_measurement; layer_workload (= tvm_mpq.schedules.
                workload.workload_from_layer)
    sensitivity (re-exported: tvm_mpq.quant) layer_sensitivity(model, calib, eval) ->
                SensitivityTable (per layer, per bits)
    problem     MPQProblem(layer_table, cost, sensitivity, profile, bits=..., max_latency=...)
    nsga        run_nsga(problem, workdir=...) -> SearchResult (Pareto front of QuantPlans)
    front       SearchResult, FrontMember; non_dominated / hypervolume / hv_ratio / exhaustive_front
    refine      refine(result, eval_fn) (real accuracy); repair(problem, result, eval_fn, ...)
    plots       (re-exported: tvm_mpq.plots) plot_pareto(result, path); plot_bits(plan, path)

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

_CM = "tvm_mpq.costmodel."
_SENS, _NSGA = "tvm_mpq.quant.sensitivity", "tvm_mpq.search.nsga"
_FRONT, _REFINE = "tvm_mpq.search.front", "tvm_mpq.search.refine"
_EXPORTS = {
    "CostQuery": _CM + "query", "featurize": _CM + "features",
    "FEATURE_NAMES": _CM + "features", "QUANT_VARIANTS": _CM + "features",
    "CostModel": _CM + "model", "CostModelMismatchError": _CM + "model",
    "HoldoutReport": _CM + "holdout", "evaluate_holdout": _CM + "holdout",
    "workload_groups": _CM + "holdout",
    "initial_design": _CM + "design", "select_for_measurement": _CM + "design",
    "layer_workload": "tvm_mpq.schedules.workload",
    "SensitivityTable": _SENS, "layer_sensitivity": _SENS,
    "MPQProblem": "tvm_mpq.search.problem", "OBJECTIVES": "tvm_mpq.search.problem",
    "plan_queries": "tvm_mpq.search.problem",
    "FrontMember": _FRONT, "SearchResult": _FRONT, "hypervolume": _FRONT, "hv_ratio": _FRONT,
    "exhaustive_front": _FRONT, "non_dominated": _FRONT,
    "run_nsga": _NSGA, "refine": _REFINE, "repair": _REFINE,
    "plot_pareto": "tvm_mpq.plots", "plot_bits": "tvm_mpq.plots",
}

__all__ = sorted(_EXPORTS)


#: Public names kept under their old name: ``name -> attribute of its module``.
_RENAMED = {"layer_workload": "workload_from_layer"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
