"""Cost model stage: what a kernel costs on a target, predicted from a few measurements.

Modules, one concept each:

``query``     CostQuery: one kernel (workload, variant, bits) on one target profile
``terms``     ANALYTIC_TERMS, analytic_terms: stage iteration counts of the default lowering
``features``  featurize, FEATURE_NAMES, QUANT_VARIANTS, kernel_shape_class
``analytic``  AnalyticPrior: non-negative linear cost in the stage counts
``model``     CostModel (prior + XGBoost residual ensemble), save/load, CostModelMismatchError
``holdout``   evaluate_holdout, HoldoutReport, workload_groups: grouped cross-validation
``design``    initial_design, select_for_measurement: which kernels to measure
``prior``     generic_workloads: model-independent layer shapes to measure as well

Import from the submodules (importing this package does not import xgboost).
"""
