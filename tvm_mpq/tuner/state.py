"""The state :func:`tvm_mpq.tune`'s stages share: the inputs (model, data, config, profile,
runner, workdir) and what each stage produces (layer table, sensitivity, measurements, cost
model, problem, fronts, priced plans, result)."""

from __future__ import annotations

import copy
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tvm_mpq.measure.runner import Runner, create_runner
from tvm_mpq.quant.plan import QuantPlan
from tvm_mpq.quant.qparams_cache import QParamsCache
from tvm_mpq.targets import Profile
from tvm_mpq.tuner.checkpoint import data_fingerprint, model_fingerprint
from tvm_mpq.tuner.config import TuneConfig, resolve_search
from tvm_mpq.tuner.costs import open_db

__all__ = ["TuneState"]


def _runner(config: TuneConfig) -> Runner:
    """The runner of the config's backend. ``"rpc"``: the tracker's servers under ``key``:
    simulator hosts for a ``spike-<profile>`` / ``qemu-<profile>`` key, boards otherwise."""
    from tvm_mpq.measure.runner import SIM_BACKENDS
    from tvm_mpq.targets import PROFILES

    m = config.measure
    if m.backend == "rpc":
        prefix, _, rest = m.key.partition("-")
        if prefix in SIM_BACKENDS and rest in PROFILES:
            from tvm_mpq.rpc.runner import RPCRunner

            return RPCRunner(m.tracker, m.key)
        from tvm_mpq.rpc.board_runner import BoardRunner

        return BoardRunner(m.tracker, m.key)
    return create_runner(m.backend)


@dataclass
class TuneState:
    """Inputs of a :func:`tvm_mpq.tune` run and its stages' outputs (None until produced).

    Attributes:
        config: the run's settings, defaults made concrete
            (:func:`~tvm_mpq.tuner.config.resolve_search`).
        eval_x, eval_y: held-out images and labels (None with ``eval_fn`` only).
        fingerprints: stage name -> fingerprint of this run.
        loaded, ran: stage names loaded from their checkpoint / computed, in order.
    """

    model: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    config: TuneConfig
    profile: Profile
    runner: Runner
    workdir: str
    calib: Any
    eval_x: torch.Tensor | None = None
    eval_y: torch.Tensor | None = None
    eval_fn: Callable[[Callable[[Any], Any]], float] | None = None
    train_data: Any = None
    progress: bool = True
    # stage outputs
    table: Any = None
    sens: Any = None
    db: Any = None
    overhead: dict[str, float] = field(default_factory=dict)
    cm: Any = None
    measured: dict[Any, float] = field(default_factory=dict)
    problem: Any = None
    front: Any = None
    refined: Any = None
    fp32_accuracy: float | None = None
    pareto: list[Any] = field(default_factory=list)
    baselines: dict[str, Any] = field(default_factory=dict)
    best: Any = None
    costmodel_report: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = resolve_search(self.config)  # the stages see concrete settings

    @classmethod
    def create(cls, model: torch.nn.Module, example_inputs: Any, target: Any, config: TuneConfig,
               *, calib_data: Any, eval_data: Any = None, eval_fn: Any = None,
               train_data: Any = None, workdir: str = "tvm_mpq_tune",
               progress: bool = True) -> TuneState:
        """Check the inputs (ValueError naming what is missing) and open the workdir."""
        from tvm_mpq.quant.sensitivity import split_eval_data
        from tvm_mpq.tuner.checks import (
            check_data,
            check_model,
            check_search_space,
            check_workdir,
            first_sample,
        )

        check_search_space(config.search.bits, config.search.variants)
        runner = _runner(config)
        profile = runner.check_profile(target)
        runner.check_tools(profile)  # a missing tool / an unreachable tracker, before any stage
        if eval_data is None and eval_fn is None:
            raise ValueError("tune needs eval_data=(images, labels) or eval_fn to measure accuracy")
        if config.budgets.metric_mode == "min" and eval_fn is None:
            raise ValueError("metric_mode='min' is for an eval_fn that returns an error or a "
                             "loss; top-1 accuracy of eval_data is maximised")
        b = config.budgets
        if (b.ram_budget is not None or b.flash_budget is not None) and not runner.bare_metal:
            raise ValueError(
                f"ram_budget / flash_budget need a bare-metal backend (spike or qemu): the "
                f"plans' artifacts are built and run on it for their exact memory figures; "
                f"backend {runner.backend!r} runs none")
        if config.qat.beacons > 0 and train_data is None:
            raise ValueError("qat_beacons needs train_data=(images, labels) (training split)")
        if config.search.search != "nsga2" and train_data is None:
            raise ValueError(f"search={config.search.search!r} trains a supernet: it needs "
                             "train_data=(images, labels) (training split)")
        ex, ey = split_eval_data(eval_data) if eval_data is not None else (None, None)
        if ex is not None and ey is None:
            raise ValueError("eval_data must be (images, labels)")
        if example_inputs is None:
            example_inputs = first_sample(calib_data)
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        check_data(tuple(example_inputs), calib_data, eval_data, train_data)
        # every cost is of one inference of one sample: the kernels are measured on the
        # imported shapes and the whole model runs one sample, so a larger example batch is
        # cut to its first sample (its costs would otherwise mix per-batch and per-sample)
        example_inputs = tuple(torch.as_tensor(t)[:1] for t in example_inputs)
        check_workdir(workdir)
        if isinstance(model, torch.export.ExportedProgram):
            from tvm_mpq.frontend.exported import module_from_exported

            model = module_from_exported(model)
        elif not isinstance(model, torch.nn.Module):
            raise ValueError(f"model is a {type(model).__name__}: give an nn.Module or a "
                             "torch.export.ExportedProgram")
        model = copy.deepcopy(model).eval()  # (the user's model keeps its mode)
        check_model(model, tuple(example_inputs))
        state = cls(model, tuple(example_inputs), config, profile, runner, workdir,
                    calib_data, ex, ey, eval_fn, train_data, progress)
        state.db = open_db(workdir)
        return state

    # ------------------------------------------------------------------ derived
    @property
    def unit(self) -> str:
        """Unit of every cost: the runner's (``"instructions"`` or ``"seconds"``)."""
        return self.runner.unit

    @property
    def n_eval(self) -> int | None:
        """Held-out images for real accuracy (None: all)."""
        return self.config.measure.final_eval_samples

    @functools.cached_property
    def qparams(self) -> QParamsCache:
        """Quantization parameters of any plan (one calibration per bits pair)."""
        return QParamsCache(self.model, self.calib)

    @functools.cached_property
    def data_fingerprints(self) -> dict[str, str]:
        """Fingerprints of the inputs the stages depend on (computed once per run)."""
        n_sens = self.config.search.sensitivity_samples
        n = self.n_eval
        ex, ey = self.eval_x, self.eval_y
        return {
            "architecture": model_fingerprint(self.model, weights=False),
            "weights": model_fingerprint(self.model),
            "example": data_fingerprint([(tuple(t.shape), str(t.dtype)) for t in self.example_inputs]),
            "calib": data_fingerprint(self.calib),
            "sensitivity_data": data_fingerprint(None if ex is None else (ex[:n_sens], ey[:n_sens])),
            "eval": data_fingerprint([None if ex is None else (ex[:n], ey[:n]), self.eval_fn]),
            "train": data_fingerprint(self.train_data),
        }

    # ------------------------------------------------------------------ helpers of the stages
    @contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[name]`` (and say so with ``progress``)."""
        t0 = time.time()
        if self.progress:
            print(f"[tvm-mpq] {name} ...", flush=True)
        ok = False
        try:
            yield
            ok = True
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.time() - t0
            if self.progress and ok:
                print(f"[tvm-mpq] {name} done in {self.timings[name]:.1f}s", flush=True)

    @property
    def glue(self) -> str:
        """What the compiled plans compute between layers (``MeasureSettings.glue``): every
        compile, the priced passes and the torch reference follow it."""
        return self.config.measure.glue

    def forward(self, plan: QuantPlan, model: torch.nn.Module | None = None,
                qparams: Any = None) -> torch.nn.Module:
        """The torch reference of a plan under the run's glue (see
        :meth:`QParamsCache.forward`): the integer-only reference for the integer glue."""
        return self.qparams.forward(plan, model, qparams, integer_only=self.glue == "integer")

    def accuracy_of(self, forward: Callable[[Any], Any], n: int | None = None) -> float:
        """Accuracy of ``forward`` on the held-out data (its first ``n`` images), or
        ``eval_fn(forward)``: a score, higher is better (``-eval_fn(forward)`` with
        ``metric_mode="min"``)."""
        if self.eval_fn is not None:
            v = float(self.eval_fn(forward))
            if v != v:  # NaN: every comparison with it would pass silently
                raise ValueError("eval_fn returned NaN: it must return a number")
            return -v if self.config.budgets.metric_mode == "min" else v
        return float(self.outcomes(forward, n).mean())

    def outcomes(self, forward: Callable[[Any], Any], n: int | None = None) -> np.ndarray:
        """Per-image top-1 outcomes (bool) of ``forward`` on the held-out images (the first
        ``n``); ValueError with ``eval_fn`` only (a score has none)."""
        from tvm_mpq.zoo.fashion_mnist import correct_predictions

        if self.eval_x is None:
            raise ValueError("per-image outcomes need eval_data; this run has eval_fn only")
        x, y = (self.eval_x, self.eval_y) if n is None else (self.eval_x[:n], self.eval_y[:n])
        if self.glue == "integer":  # the integer-only reference exports its graph once per
            # input shape: one batch shape (the last batch padded) saves an export per plan
            return correct_predictions(forward, x, y, batch_size=min(256, len(x)),
                                       pad_last=True)
        return correct_predictions(forward, x, y, batch_size=256)

    @functools.cached_property
    def fp32_outcomes(self) -> np.ndarray | None:
        """:meth:`outcomes` of the fp32 model on the first ``n_eval`` images (None with
        ``eval_fn``): the reference of every paired drop's standard error."""
        if self.eval_fn is not None:
            return None
        return self.outcomes(self.forward(QuantPlan.fp32(self.model)), self.n_eval)

    def drop_se(self, outcomes: np.ndarray | None) -> float | None:
        """Standard error (fraction) of a plan's drop from its per-image ``outcomes`` on the
        first ``n_eval`` images, paired with fp32's (None without outcomes)."""
        from tvm_mpq.zoo.fashion_mnist import paired_drop_se

        ref = self.fp32_outcomes
        if outcomes is None or ref is None or len(ref) < 2:
            return None
        return paired_drop_se(ref, outcomes)

    def plan_accuracy(self, plan: QuantPlan) -> float:
        """Real accuracy of a search plan (the layers it does not cover stay fp32)."""
        from tvm_mpq.tuner.plans import full_plan

        return self.accuracy_of(self.forward(full_plan(plan, self.model)), self.n_eval)

    @property
    def schedule(self) -> str:
        """Schedule tag of the run's kernels: ``"default"`` or ``"tuned<tune_trials>"``."""
        from tvm_mpq.measure.database import schedule_tag

        return schedule_tag(self.config.measure.tune_trials)

    @property
    def schedule_for(self) -> Any:
        """The compiles' schedule provider: the tuned schedules (None: the defaults)."""
        trials = self.config.measure.tune_trials
        if trials <= 0:
            return None
        from tvm_mpq.measure.tuned import tuned_schedule_provider

        return tuned_schedule_provider(self.db, self.profile.name, self.runner.backend, trials)

    def measure(self, queries: Sequence[Any]) -> None:
        """Measure the kernels of ``queries`` the database does not have yet (through the
        runner, into the workdir's database; tuned first with ``tune_trials``)."""
        from tvm_mpq.measure.campaign import measure_many

        trials = self.config.measure.tune_trials
        reqs = list({q.key(): (*q.request(), trials) for q in queries}.values())
        if reqs:
            measure_many(reqs, self.profile.name, self.runner, db=self.db,
                         progress=self.progress, work_dir=os.path.join(self.workdir, "kernels"))

    def measured_costs(self) -> dict[Any, float]:
        """Measured cost per kernel key now in the database (``inf``: failed for good, see
        :meth:`~tvm_mpq.measure.database.MeasurementDB.kernel_costs`)."""
        return self.db.kernel_costs(self.profile.name, self.runner.backend, self.unit,
                                    self.schedule)
