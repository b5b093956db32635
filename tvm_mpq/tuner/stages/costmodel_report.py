"""Stage ``cost model report``: held-out accuracy of the cost model on every measurement
(leave-one-workload-out; ``costmodel_report.json``)."""

from __future__ import annotations

import os
from typing import Any

from tvm_mpq.tuner.checkpoint import read_json, write_json
from tvm_mpq.tuner.stages.base import Stage
from tvm_mpq.tuner.state import TuneState

__all__ = ["CostModelReportStage"]


class CostModelReportStage(Stage):
    """The cost model's held-out accuracy (an error in words when there are too few
    workloads for a held-out split)."""

    name = "cost model report"
    depends = ("search",)  # the measurements after active learning

    def load(self, state: TuneState, workdir: str) -> bool:
        d = read_json(os.path.join(workdir, "costmodel_report.json"), "cost model report")
        if not isinstance(d, dict):
            return False
        state.costmodel_report = d
        return True

    def run(self, state: TuneState) -> None:
        from tvm_mpq.costmodel.holdout import evaluate_holdout

        recs = state.db.records(state.profile.name, state.runner.backend, status="ok")
        report: dict[str, Any]
        try:
            rep = evaluate_holdout(recs, groups="workload", schedule=state.schedule)
            report = {"mape": rep.mape, "within_10pct": rep.within_10pct,
                      "spearman": rep.spearman, "spearman_within": rep.spearman_within,
                      "n": rep.n, "n_folds": rep.n_folds, "groups": rep.groups,
                      "summary": rep.summary()}
        except Exception as e:  # too few workloads for a held-out split: say so, keep going
            report = {"error": f"{type(e).__name__}: {e}"}
        state.costmodel_report = report

    def save(self, state: TuneState, workdir: str) -> None:
        write_json(os.path.join(workdir, "costmodel_report.json"), state.costmodel_report)
