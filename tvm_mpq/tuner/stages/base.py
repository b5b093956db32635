"""The stage contract of :func:`tvm_mpq.tune` and the loop that runs stages with their
checkpoints."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from tvm_mpq.tuner.checkpoint import Manifest, digest
from tvm_mpq.tuner.state import TuneState

__all__ = ["Stage", "run_stages", "stage_file"]


def stage_file(workdir: str, name: str) -> str:
    """Path of a stage's own checkpoint file (``workdir/stages/<name>.json``)."""
    return os.path.join(workdir, "stages", name.replace(" ", "_") + ".json")


class Stage(ABC):
    """One step of the pipeline, checkpointed in the workdir.

    A stage reads what earlier stages put on the :class:`TuneState`, adds its own outputs,
    and saves them. Its checkpoint is reused when the manifest records the stage's current
    :meth:`fingerprint` and :meth:`load` succeeds; otherwise it runs and saves again.

    Attributes:
        name: manifest key and (for ``timed`` stages) the ``timings`` key.
        depends: the stages whose outputs it uses (their fingerprints enter its own).
        timed: False when the stage times its parts itself.
    """

    name: ClassVar[str]
    depends: ClassVar[tuple[str, ...]] = ()
    timed: ClassVar[bool] = True

    def inputs(self, state: TuneState) -> dict[str, Any]:
        """What the stage depends on besides earlier stages: data fingerprints, settings."""
        return {}

    def fingerprint(self, state: TuneState) -> str:
        """Hash of :meth:`inputs` and the fingerprints of :attr:`depends`."""
        return digest(self.name, self.inputs(state), [state.fingerprints[d] for d in self.depends])

    def load(self, state: TuneState, workdir: str) -> bool:
        """Put the checkpointed outputs on ``state``; False if there is no usable one."""
        return False

    @abstractmethod
    def run(self, state: TuneState) -> None:
        """Compute the outputs onto ``state``."""

    @abstractmethod
    def save(self, state: TuneState, workdir: str) -> None:
        """Write the outputs' checkpoint."""


def run_stages(state: TuneState, stages: Sequence[Stage]) -> TuneState:
    """Run ``stages`` in order, each loaded from its checkpoint where valid (a resumed run
    recomputes only from the first stage whose inputs changed or whose checkpoint is
    missing); the manifest records each stage once its checkpoint is saved."""
    manifest = Manifest(state.workdir)
    for stage in stages:
        fp = stage.fingerprint(state)
        state.fingerprints[stage.name] = fp
        if manifest.valid(stage.name, fp) and stage.load(state, state.workdir):
            state.loaded.append(stage.name)
            if state.progress:
                print(f"[tvm-mpq] {stage.name}: loaded from its checkpoint", flush=True)
            continue
        with state.timer(stage.name) if stage.timed else contextlib.nullcontext():
            stage.run(state)
        stage.save(state, state.workdir)
        manifest.record(stage.name, fp)
        state.ran.append(stage.name)
    return state
