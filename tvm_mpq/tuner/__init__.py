"""Tune stage: :func:`tvm_mpq.tune` composes the pipeline's stages (:mod:`tvm_mpq.tuner.stages`)
over a :class:`TuneConfig` and returns a :class:`TuneResult`."""

from tvm_mpq.tuner.api import tune
from tvm_mpq.tuner.config import Budgets, MeasureSettings, QATSettings, SearchSettings, TuneConfig
from tvm_mpq.tuner.result import PlanPoint, TuneResult, load_result

__all__ = ["Budgets", "MeasureSettings", "PlanPoint", "QATSettings", "SearchSettings",
           "TuneConfig", "TuneResult", "load_result", "tune"]
