"""Stage ``import``: ``torch.export`` -> Relax, the layer table (``layers.md``; the table
itself in ``stages/import.json``), and the check that the imported fp32 model computes what
torch computes on the example input (:func:`~tvm_mpq.frontend.verify.verify_import`).
Depends on the model's architecture and the example input's shape, not on its weights."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from tvm_mpq.tuner.checkpoint import read_json, set_aside, write_json
from tvm_mpq.tuner.stages.base import Stage, stage_file
from tvm_mpq.tuner.state import TuneState

__all__ = ["ImportStage", "table_from_json", "table_to_json"]

log = logging.getLogger(__name__)


def table_to_json(table: Any) -> dict[str, Any]:
    """A :class:`~tvm_mpq.frontend.layers.LayerTable` as JSON."""
    return {"version": 1, "rows": [dataclasses.asdict(r) for r in table]}


def table_from_json(d: dict[str, Any]) -> Any:
    """Inverse of :func:`table_to_json` (KeyError / TypeError on another layout)."""
    from tvm_mpq.frontend.layers import LayerInfo, LayerTable

    if d.get("version") != 1:
        raise KeyError(f"layer table version {d.get('version')!r}")
    return LayerTable([LayerInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
                       for r in d["rows"]])


class ImportStage(Stage):
    """The layer table of the BN-folded model."""

    name = "import"

    def inputs(self, state: TuneState) -> dict[str, Any]:
        fp = state.data_fingerprints
        return {"architecture": fp["architecture"], "example": fp["example"]}

    def load(self, state: TuneState, workdir: str) -> bool:
        path = stage_file(workdir, self.name)
        d = read_json(path, "layer table")
        if d is None:
            return False
        try:
            state.table = table_from_json(d)
        except (KeyError, TypeError) as e:
            log.warning("%s is another layout (%s): kept as %s, importing again",
                        path, e, set_aside(path, ".old"))
            return False
        return True

    def run(self, state: TuneState) -> None:
        from tvm_mpq.frontend.importer import import_model
        from tvm_mpq.frontend.verify import verify_import
        from tvm_mpq.quant.folding import fold_bn

        state.table = import_model(fold_bn(state.model), state.example_inputs).table
        err = verify_import(state.model, state.example_inputs)  # ImportMismatchError: stop here
        log.info("imported model matches torch on the example input (relative error %.2g)", err)

    def save(self, state: TuneState, workdir: str) -> None:
        with open(os.path.join(workdir, "layers.md"), "w") as f:
            f.write(state.table.to_markdown())
        write_json(stage_file(workdir, self.name), table_to_json(state.table))
