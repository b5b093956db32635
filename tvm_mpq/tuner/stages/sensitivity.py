"""Stage ``sensitivity``: per-layer post-training quantization on the first
``sensitivity_samples`` held-out images (``sensitivity.json``; without labelled evaluation
data, on the first calibration inputs, scored by the KL divergence from the fp32 output).
Depends on the weights, the calibration data, that subset and the bits; not on the glue:
with one layer quantized both glues compute the same up to float rounding (its input
quantized, its int32 output dequantized in its epilogue, everything else float), so the
proxy serves either glue."""

from __future__ import annotations

import logging
import os
from typing import Any

from tvm_mpq.tuner.checkpoint import read_json, set_aside, write_json
from tvm_mpq.tuner.stages.base import Stage
from tvm_mpq.tuner.state import TuneState

__all__ = ["SensitivityStage"]

log = logging.getLogger(__name__)


class SensitivityStage(Stage):
    """The :class:`~tvm_mpq.quant.sensitivity.SensitivityTable` of the searched layers."""

    name = "sensitivity"
    depends = ("import",)

    def inputs(self, state: TuneState) -> dict[str, Any]:
        fp, s = state.data_fingerprints, state.config.search
        return {"weights": fp["weights"], "calib": fp["calib"], "data": fp["sensitivity_data"],
                "bits": s.bits, "samples": s.sensitivity_samples}

    def load(self, state: TuneState, workdir: str) -> bool:
        from tvm_mpq.quant.sensitivity import SensitivityTable

        path = os.path.join(workdir, "sensitivity.json")
        d = read_json(path, "sensitivity table")
        if d is None:
            return False
        try:
            sens = SensitivityTable.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("%s is not a sensitivity table (%s): kept as %s, recomputing",
                        path, e, set_aside(path))
            return False
        if not self._covers(sens, state):
            # computed for other bits, layers or another subset: keep it aside, recompute
            os.replace(path, path + ".old")
            log.warning("%s was computed with other settings; recomputing (old one: .old)", path)
            return False
        state.sens = sens
        return True

    @staticmethod
    def _covers(sens: Any, state: TuneState) -> bool:
        want = set(state.config.search.bits)
        n = state.config.search.sensitivity_samples
        return (want <= {tuple(b) for b in sens.bits}
                and set(state.table.quantizable_names()) <= set(sens.layers)
                and (state.eval_x is None or sens.meta.get("n_eval") == min(n, len(state.eval_x))))

    def run(self, state: TuneState) -> None:
        from tvm_mpq.quant.sensitivity import layer_sensitivity
        from tvm_mpq.tuner.checks import leading_samples

        n, s = state.config.search.sensitivity_samples, state.config.search
        if state.eval_x is not None and state.eval_y is not None:
            data: Any = (state.eval_x[:n], state.eval_y[:n])
        else:  # label-free: output distortion (KL) on the calibration inputs
            data = leading_samples(state.calib, n)
        state.sens = layer_sensitivity(state.model, state.calib, data, bits=list(s.bits),
                                       layers=state.table.quantizable_names(),
                                       progress=state.progress)

    def save(self, state: TuneState, workdir: str) -> None:
        write_json(os.path.join(workdir, "sensitivity.json"), state.sens.to_dict())
