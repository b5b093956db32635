"""``tvm_mpq.tune()``: the end-to-end hardware-aware mixed-precision search.

``tune()`` only composes: it resolves the :class:`~tvm_mpq.tuner.config.TuneConfig`, builds the
:class:`~tvm_mpq.tuner.state.TuneState` and runs the stages of :mod:`tvm_mpq.tuner.stages`
(import, sensitivity, measure, search with active learning, cost model report, refine,
repair, price, beacons, final), each checkpointed in ``workdir`` and keyed on a fingerprint
of what it depends on: an interrupted run resumes after its last finished stage, and a
changed model, data set or setting recomputes exactly the stages that depend on it.

The result (:class:`~tvm_mpq.tuner.result.TuneResult`) is saved to ``workdir/result`` and can
be reloaded with :func:`~tvm_mpq.tuner.result.load_result`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tvm_mpq.targets import Profile
from tvm_mpq.tuner.config import TuneConfig, resolve_config
from tvm_mpq.tuner.result import TuneResult
from tvm_mpq.tuner.stages import default_stages, run_stages
from tvm_mpq.tuner.state import TuneState

__all__ = ["tune"]


def tune(
    model: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    target: str | Profile = "riscv",
    *,
    calib_data: Any,
    eval_data: Any = None,
    eval_fn: Callable[[Callable[[Any], Any]], float] | None = None,
    train_data: Any = None,
    workdir: str = "tvm_mpq_tune",
    progress: bool = True,
    config: TuneConfig | None = None,
    **settings: Any,
) -> TuneResult:
    """Search per-layer bit-widths that minimise measured cost on ``target``.

    Args:
        model: trained float torch model, or a ``torch.export.ExportedProgram`` (its
            conv / linear layers keep the exported model's names, see
            :func:`tvm_mpq.frontend.exported.module_from_exported`).
        example_inputs: example input (fixes the static shapes); default: the first
            calibration sample (``calib_data[:1]``). Every cost is per inference of one
            sample: a batch larger than one is cut to its first sample.
        target: "riscv" (rv64gc_zbb), "riscv64-zbb", "riscv64" (rv64gc, no Zbb),
            "riscv64-v", "riscv32", "host", or a profile name.
        calib_data: calibration inputs (tensor or iterable of batches).
        eval_data: ``(images, labels)`` held-out data: the first ``sensitivity_samples``
            are used for per-layer sensitivity, all of it (or ``final_eval_samples``) for
            the real accuracy of front members and baselines.
        eval_fn: ``eval_fn(forward) -> float``, called with a callable that maps a batch of
            inputs to the model's output; higher is better (e.g. accuracy, mAP as a fraction;
            ``max_accuracy_drop`` is in hundredths of it), or lower is better with
            ``metric_mode="min"`` (an error or a loss; ``max_accuracy_drop`` is then the
            allowed increase x100). Default: top-1 accuracy on ``eval_data``. Without
            labelled ``eval_data`` the per-layer sensitivity is label-free, on the first
            ``sensitivity_samples`` calibration inputs: the KL divergence of each quantized
            layer's softmaxed output from the fp32 model's when the output is class logits
            (``(batch, classes)``), else the relative squared error of the output
            (``SensitivityTable.default_metric()`` says which ran).
        train_data: ``(images, labels)`` training tensors, needed for ``qat_beacons`` and
            ``search="dnas"`` / ``"hybrid"``.
        workdir: where every stage checkpoints; re-running resumes.
        progress: print stage progress.
        config: every setting below as one :class:`~tvm_mpq.tuner.config.TuneConfig`. A
            keyword given with it must agree with it (ValueError otherwise).
        **settings: the config's fields as keywords (defaults in brackets):

            * ``max_accuracy_drop`` [1.0]: budget in accuracy POINTS (1.0 = one percentage
              point) vs fp32; ``metric_mode`` ["max"]: "min" for an ``eval_fn`` that returns an
              error or a loss; ``latency_budget`` [None]: cost budget (the runner's unit:
              instructions for simulators, seconds for "host"); ``size_budget`` [None]:
              weight bytes.
            * ``bits`` [w8a8, w4a8, w4a4, w2a4, w2a2]: candidate (w_bits, a_bits) per layer
              (fp32 is always allowed); ``variants`` [int8, bitserial, unpack, swar].
            * ``pop_size``, ``generations`` [40, 40]: NSGA-II settings; ``active_rounds`` [1]:
              measure the front's unmeasured kernels, refit, re-search, this often;
              ``seed`` [0]; ``sensitivity_samples`` [512].
            * ``repair_plans`` [8]: after refinement, this many of the cheapest front plans
              that miss the accuracy budget (and are cheaper than every plan within it) get
              their most sensitive layers' bits raised, one measured step at a time, until
              they meet it (:func:`tvm_mpq.search.refine.repair`; 0: off).
            * ``backend`` ["spike"]: "spike", "qemu" (retired instructions), "host" (wall
              seconds), or a :class:`~tvm_mpq.measure.runner.Runner`.
            * ``measure_budget`` [None]: kernels in the initial measurement design (default:
              every distinct workload at every (variant, bits) -- exhaustive for small nets).
            * ``tune_trials`` [0]: MetaSchedule trials per measured kernel, the same budget for
              every kernel the search may pick and every baseline's (fp32 included); costs
              are the tuned records', compiles use the tuned schedules (0: default ones).
            * ``backend="rpc"`` with ``tracker="HOST:PORT"`` and ``key``: the servers of the
              key at the tracker measure (simulator hosts for ``spike-<profile>`` /
              ``qemu-<profile>`` keys, boards by wall time otherwise; docs/boards.md).
            * ``prior_workloads`` [0]: also measure this many model-independent layer shapes
              (:func:`tvm_mpq.costmodel.prior.generic_workloads`, every variant and bits), so
              the cost model sees shapes beyond the model's own (a few minutes on Spike for 24).
            * ``final_measure`` [True]: measure the chosen plan and baselines end to end
              (standalone artifact on the simulator) and, with ``compiled_eval`` [True],
              evaluate them through the compiled model; ``final_eval_samples`` [None: all]:
              held-out images for real accuracy.
            * ``glue`` ["integer"]: what the compiled plans compute between layers
              (``tvm_mpq.compile(..., glue=)``): "integer" (integer-only inference) or
              "float" (float quantize / dequantize around every layer, for comparison). The
              passes priced per layer, the torch reference accuracy
              (``fake_quant(..., integer_only=True)`` for "integer") and every compile
              follow it.
            * ``qat_beacons`` [0]: MOHAQ beacons: this many front plans are fine-tuned with
              quantization-aware training (``qat_steps`` [300] steps each); the others'
              accuracy is corrected by their nearest beacon's gain, and the chosen plan is
              fine-tuned and verified. 0 keeps pure post-training quantization.
            * ``qat`` ["fixed"]: how beacons are fine-tuned: "fixed" calibrated scales, or
              "lsq" (learned step size: weight and activation scales trained too).
            * ``search`` ["nsga2"]: "nsga2" (NSGA-II over post-training-quantized plans),
              "dnas" (differentiable supernet search: Gumbel-softmax over each layer's options,
              cost term = the expected measured cost of the target, one plan per weight of
              ``dnas_cost_weights`` [0.005, 0.01, 0.02, 0.05, 0.1], ``dnas_steps`` [120] steps each on
              ``train_data``), or "hybrid" (Free Bits: that search, then free bits up and
              costly bits down on the measured costs with real accuracy checks, then LSQ
              beacons, at least 2). ``dnas_cost`` [None: "bitops" for "hybrid", as in Free
              Bits, "measured" for "dnas"]: "measured" or "bitops" (MACs x w x a,
              hardware-agnostic). See :mod:`tvm_mpq.search.dnas`.

    Returns:
        A :class:`~tvm_mpq.tuner.result.TuneResult` (also saved to ``workdir/result``).

    Raises:
        TypeError: an unknown setting.
        ValueError: an unknown target or backend, a backend that cannot measure the target,
            missing evaluation or training data, or ``config`` and a keyword disagreeing.
    """
    cfg = resolve_config(config, settings)
    state = TuneState.create(model, example_inputs, target, cfg, calib_data=calib_data,
                             eval_data=eval_data, eval_fn=eval_fn, train_data=train_data,
                             workdir=workdir, progress=progress)
    return run_stages(state, default_stages()).result
