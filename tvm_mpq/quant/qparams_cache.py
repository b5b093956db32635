"""Quantization parameters of any plan from one calibration per bits pair, and the torch
reference of a plan.

Activation ranges are observed on the float model, where a layer's input does not depend on
how the other layers are planned, so the parameters a uniform plan calibrates for a layer are
that layer's parameters in every plan with the same bits (as in
:func:`~tvm_mpq.quant.sensitivity.layer_sensitivity`). A search that evaluates hundreds of
plans therefore calibrates once per ``(w_bits, a_bits)`` pair.

Public API::

    cache = QParamsCache(model, calib_x)
    qp = cache(plan)                  # QuantParams of the plan's quantized layers
    ref = cache.forward(plan)         # fake-quant reference (BN-folded float model if all fp32)
    ref = cache.forward(plan, integer_only=True)  # the integer-only reference
"""

from __future__ import annotations

from typing import Any

import torch

from tvm_mpq.quant.plan import QuantPlan

__all__ = ["QParamsCache"]


class QParamsCache:
    """Calibrated :class:`~tvm_mpq.quant.qparams.QuantParams` of any plan, one calibration per
    bits pair (see the module docstring).

    Args:
        model: the float model.
        calib: calibration inputs, as :func:`~tvm_mpq.quant.calibration.calibrate` takes them.
    """

    def __init__(self, model: torch.nn.Module, calib: Any):
        self.model, self.calib = model, calib
        self.by_bits: dict[tuple[int, int], Any] = {}

    def __call__(self, plan: QuantPlan) -> Any:
        """The plan's quantization parameters (its quantized layers only)."""
        from tvm_mpq.quant.calibration import calibrate
        from tvm_mpq.quant.qparams import QuantParams

        qp = QuantParams()
        for name in plan.quantized_layers():
            cfg = plan[name]
            key = (cfg.w_bits, cfg.a_bits)
            if key not in self.by_bits:
                self.by_bits[key] = calibrate(self.model, QuantPlan.uniform(
                    self.model, w_bits=cfg.w_bits, a_bits=cfg.a_bits), self.calib)
            qp.layers[name] = self.by_bits[key][name]
            qp.tensors = self.by_bits[key].tensors  # the float model's ranges: plan-independent
        return qp

    def forward(self, plan: QuantPlan, model: torch.nn.Module | None = None,
                qparams: Any = None, *, integer_only: bool = False) -> torch.nn.Module:
        """The torch reference of ``plan``: the BN-folded float model when no layer is
        quantized, else :func:`~tvm_mpq.quant.fakequant.fake_quant` with ``qparams``
        (default: this cache's). ``model`` defaults to the cache's (pass a fine-tuned one
        with its own ``qparams``). ``integer_only``: the integer-only reference (what
        ``tvm_mpq.compile`` computes with its default integer glue; ``qparams`` must hold
        the tensor ranges, ``QuantParams.tensors``); else the float-glue one."""
        from tvm_mpq.quant.fakequant import fake_quant
        from tvm_mpq.quant.folding import fold_bn

        model = self.model if model is None else model
        if not plan.quantized_layers():
            return fold_bn(model).eval()
        return fake_quant(model, plan, qparams=qparams if qparams is not None else self(plan),
                          integer_only=integer_only)
