"""tvm-mpq: hardware-aware mixed-precision quantization for RISC-V on Apache TVM.

Top-level API (imported lazily, so ``import tvm_mpq`` stays cheap)::

    plan = tvm_mpq.QuantPlan.uniform(model, w_bits=4, a_bits=4)
    ref = tvm_mpq.fake_quant(model, plan, calib_data)
    cm = tvm_mpq.compile(model, example_inputs, plan, target="rv64gc_zbb", calib_data=calib)
    result = tvm_mpq.tune(model, example_inputs, target="riscv", calib_data=..., eval_fn=...)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "QuantPlan": "tvm_mpq.quant.plan",
    "LayerConfig": "tvm_mpq.quant.plan",
    "resolve_variant": "tvm_mpq.quant.plan",
    "fake_quant": "tvm_mpq.quant.fakequant",
    "calibrate": "tvm_mpq.quant.calibration",
    "QuantParams": "tvm_mpq.quant.calibration",
    "fold_bn": "tvm_mpq.quant.calibration",
    "import_model": "tvm_mpq.frontend",
    "LayerTable": "tvm_mpq.frontend",
    "UnsupportedOperatorError": "tvm_mpq.frontend",
    "compile": "tvm_mpq.compiler",
    "CompiledModel": "tvm_mpq.compiler",
    "get_profile": "tvm_mpq.targets",
    "PROFILES": "tvm_mpq.targets",
    "tune": "tvm_mpq.tuner",
    "load_result": "tvm_mpq.tuner",
    "TuneResult": "tvm_mpq.tuner",
    "PlanPoint": "tvm_mpq.tuner",
    "TuneConfig": "tvm_mpq.tuner",
    "export_standalone": "tvm_mpq.standalone",
    "measure_many": "tvm_mpq.measure.campaign",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tvm_mpq' has no attribute {name!r}")
