"""The stages of :func:`tvm_mpq.tune`, in order, each checkpointed in the workdir.

=================  ==============================================  ==================================
stage              what                                            depends on
=================  ==============================================  ==================================
import             layer table (torch.export -> Relax)             architecture, input shape
sensitivity        per-layer PTQ sensitivity                       import, weights, calib, subset, bits
measure            designed kernel measurements, per-layer passes  import, target, runner, kernels
search             cost model + NSGA-II rounds, active learning    measure, sensitivity, settings
cost model report  held-out accuracy of the cost model             search
refine             real accuracy of the front                      search, weights, calib, eval data
repair             near misses raised into the accuracy budget     refine, repair settings
price              front and baselines priced from measurements    repair, budgets
beacons            the best plan (QAT beacons when asked)          price, QAT settings, train data
final              end-to-end measurement, TuneResult, report      beacons, report, every setting
=================  ==============================================  ==================================
"""

from __future__ import annotations

from tvm_mpq.tuner.stages.base import Stage, run_stages, stage_file
from tvm_mpq.tuner.stages.beacons import BeaconsStage
from tvm_mpq.tuner.stages.costmodel_report import CostModelReportStage
from tvm_mpq.tuner.stages.final import FinalStage
from tvm_mpq.tuner.stages.measure import MeasureStage
from tvm_mpq.tuner.stages.model_import import ImportStage
from tvm_mpq.tuner.stages.price import PriceStage
from tvm_mpq.tuner.stages.refine import RefineStage
from tvm_mpq.tuner.stages.repair import RepairStage
from tvm_mpq.tuner.stages.search import SearchStage
from tvm_mpq.tuner.stages.sensitivity import SensitivityStage

__all__ = ["STAGES", "BeaconsStage", "CostModelReportStage", "FinalStage", "ImportStage",
           "MeasureStage", "PriceStage", "RefineStage", "RepairStage", "SearchStage",
           "SensitivityStage", "Stage", "default_stages", "run_stages", "stage_file"]

#: the pipeline, in order
STAGES: tuple[type[Stage], ...] = (
    ImportStage, SensitivityStage, MeasureStage, SearchStage, CostModelReportStage, RefineStage,
    RepairStage, PriceStage, BeaconsStage, FinalStage)


def default_stages() -> list[Stage]:
    """Fresh instances of :data:`STAGES` (one per run: a stage may keep per-run data)."""
    return [cls() for cls in STAGES]
