"""Quantization stage: the plan (:class:`QuantPlan`), calibration, the fake-quant
reference, per-layer sensitivity and quantization-aware fine-tuning.

Modules: ``plan`` (QuantPlan, LayerConfig, resolve_variant), ``calibration`` (calibrate,
quantize_weight, act_qparams), ``qparams`` (QuantParams, LayerQParams: the calibration result
and its files), ``folding`` (fold_bn, set_submodule), ``observers`` (what calibration watches
while the float model runs), ``fakequant`` (fake_quant), ``sensitivity`` (layer_sensitivity),
``qat`` (qat_finetune, beacon_correction), ``qparams_cache`` (QParamsCache: any plan's
parameters from one calibration per bits pair). Import from the submodules.
"""
