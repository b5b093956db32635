"""What :func:`tvm_mpq.tune` is asked to do: :class:`TuneConfig`, made of small frozen
sections (budgets, search, measurement, QAT).

Every keyword of ``tune()`` other than the model, its data and the workdir is a field of one
section, under the same name (``qat_beacons`` / ``qat_steps`` are ``QATSettings.beacons`` /
``.steps``)::

    cfg = TuneConfig.from_kwargs(max_accuracy_drop=0.5, pop_size=32, backend="qemu")
    cfg.search.pop_size, cfg.budgets.max_accuracy_drop
    cfg.replace(generations=10).to_dict()   # flat, JSON-able: TuneResult.settings
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

__all__ = ["BASELINES", "DEFAULT_BITS", "DEFAULT_VARIANTS", "GLUES", "METRIC_MODES", "Budgets",
           "MeasureSettings", "QATSettings", "SearchSettings", "TuneConfig", "resolve_config"]

DEFAULT_BITS: tuple[tuple[int, int], ...] = ((8, 8), (4, 8), (4, 4), (2, 4), (2, 2))
DEFAULT_VARIANTS: tuple[str, ...] = ("int8", "bitserial", "unpack", "swar")
#: Uniform baselines: (w_bits, a_bits, variant); variant None = each layer's fastest measured
#: kernel for those bits. "int8" runs the int8 kernel everywhere (the issue's baseline);
#: "w8a8" is every layer at 8 bits with the faster of the int8 and swar kernels, the
#: strongest 8-bit baseline we can build (on cores without vectors swar w8a8 is 2-4x cheaper).
BASELINES: dict[str, tuple[int, int, str | None] | None] = {
    "fp32": None, "int8": (8, 8, "int8"), "w8a8": (8, 8, None), "w4a4": (4, 4, None)}
#: what ``tvm_mpq.compile(..., glue=)`` computes between layers (the compiler's
#: ``tvm_mpq.compiler.emit.GLUES``, repeated so the config needs no TVM import)
GLUES: tuple[str, ...] = ("integer", "float")
#: ``metric_mode``: is the evaluation metric maximised (accuracy) or minimised (error, loss)
METRIC_MODES: tuple[str, ...] = ("max", "min")
#: ``tune(search=)``: NSGA-II, the differentiable supernet search, or Free Bits' hybrid
SEARCHES: tuple[str, ...] = ("nsga2", "dnas", "hybrid")


def _check_count(section: object, name: str, least: int, optional: bool = False,
                 keyword: str | None = None) -> None:
    """``section.name`` is an int >= ``least`` (or None when ``optional``): ValueError naming
    the setting otherwise (a 0 population or a negative budget would fail deep in a stage)."""
    v = getattr(section, name)
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ValueError(f"{keyword or name}={v!r}: expected an integer >= {least}"
                         + (" (or None)" if optional else ""))


@dataclass(frozen=True)
class Budgets:
    """Constraints on the chosen plan.

    Attributes:
        max_accuracy_drop: accuracy POINTS (1.0 = one percentage point) below fp32; for an
            ``eval_fn`` metric, hundredths of the metric (a fraction like accuracy or mAP:
            percentage points; with ``metric_mode="min"``, an increase of the error / loss by
            ``max_accuracy_drop / 100``).
        metric_mode: ``"max"`` (higher is better: accuracy) or ``"min"`` (``eval_fn``
            returns an error or a loss: lower is better).
        latency_budget: cost budget (the runner's unit: instructions or seconds).
        size_budget: weight bytes.
        ram_budget: RAM bytes of the chosen plan's standalone artifact (data + bss + arena
            with kernel workspaces + measured stack), computed exactly by building and
            running it (:mod:`tvm_mpq.tuner.memory`).
        flash_budget: its flash bytes (text + rodata + data).
    """

    max_accuracy_drop: float = 1.0
    latency_budget: float | None = None
    size_budget: float | None = None
    ram_budget: float | None = None
    flash_budget: float | None = None
    metric_mode: str = "max"

    def __post_init__(self) -> None:
        if self.metric_mode not in METRIC_MODES:
            raise ValueError(f"metric_mode={self.metric_mode!r}: expected 'max' (higher is "
                             "better, e.g. accuracy) or 'min' (an error or a loss)")
        d = self.max_accuracy_drop
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not d >= 0:
            raise ValueError(f"max_accuracy_drop={d!r}: expected accuracy points >= 0 (1.0 = "
                             "one percentage point below fp32)")
        for name in ("latency_budget", "size_budget", "ram_budget", "flash_budget"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not v > 0):
                raise ValueError(f"{name}={v!r}: expected a positive number (or None)")


@dataclass(frozen=True)
class SearchSettings:
    """The search space and the search.

    Attributes:
        bits: candidate ``(w_bits, a_bits)`` per layer (fp32 is always allowed).
        variants: candidate kernel variants.
        pop_size, generations: NSGA-II settings.
        active_rounds: measure the front's unmeasured kernels, refit, re-search; this often.
        repair_plans: near-miss front plans raised into the accuracy budget (0: off).
        seed: random seed (design, cost model, search).
        sensitivity_samples: held-out images (the first ones) for per-layer sensitivity.
        search: one of :data:`SEARCHES`: ``"nsga2"`` (NSGA-II over post-training-quantized
            plans), ``"dnas"`` (differentiable supernet search, :mod:`tvm_mpq.search.dnas`)
            or ``"hybrid"`` (Free Bits: DNAS, then free bits up and costly bits down on the
            measured costs, then LSQ fine-tuning of the chosen plan). DNAS needs
            ``train_data``.
        dnas_cost: the supernet's cost term: ``"measured"`` (the target's kernel costs) or
            ``"bitops"`` (MACs x w x a, hardware-agnostic). None (the default): ``"bitops"``
            for the hybrid (as in Free Bits, whose refinement brings in the target; it also
            found cheaper plans than the measured cost in 3 of our 4 comparisons),
            ``"measured"`` for ``"dnas"`` (:func:`resolve_search`).
        dnas_steps: supernet training steps per cost weight.
        dnas_cost_weights: the cost weights swept (one plan each).
    """

    bits: tuple[tuple[int, int], ...] = DEFAULT_BITS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    pop_size: int = 40
    generations: int = 40
    active_rounds: int = 1
    repair_plans: int = 8
    seed: int = 0
    sensitivity_samples: int = 512
    search: str = "nsga2"
    dnas_cost: str | None = None
    dnas_steps: int = 120
    dnas_cost_weights: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1)

    def __post_init__(self) -> None:  # lists from callers and JSON become tuples
        from tvm_mpq.search.dnas import DNAS_COSTS

        object.__setattr__(self, "bits", tuple((int(w), int(a)) for w, a in self.bits))
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "dnas_cost_weights",
                           tuple(float(w) for w in self.dnas_cost_weights))
        if self.search not in SEARCHES:
            raise ValueError(f"search={self.search!r}: expected one of {SEARCHES}")
        if self.dnas_cost is not None and self.dnas_cost not in DNAS_COSTS:
            raise ValueError(f"dnas_cost={self.dnas_cost!r}: expected one of {DNAS_COSTS}")
        if not self.dnas_cost_weights or any(not w >= 0 for w in self.dnas_cost_weights):
            raise ValueError(f"dnas_cost_weights={self.dnas_cost_weights!r}: expected "
                             "non-negative numbers")
        _check_count(self, "dnas_steps", 1)
        for name, least in (("pop_size", 2), ("generations", 1), ("active_rounds", 0),
                            ("repair_plans", 0), ("seed", 0), ("sensitivity_samples", 1)):
            _check_count(self, name, least)


@dataclass(frozen=True)
class MeasureSettings:
    """Where and how much to measure.

    Attributes:
        backend: a backend name (``"spike"``, ``"qemu"``, ``"host"``, ``"rpc"``) or a
            :class:`~tvm_mpq.measure.runner.Runner`.
        tracker, key: with ``backend="rpc"``: the TVM RPC tracker (``"HOST:PORT"``) and the
            key of the simulator hosts registered with it (``tvm-mpq rpc serve``): every
            kernel measurement fans out to them (:class:`~tvm_mpq.rpc.runner.RPCRunner`).
        measure_budget: kernels in the initial design (default: every distinct workload at
            every variant and bits).
        tune_trials: MetaSchedule trials per measured kernel (0: default schedules). Every
            kernel the search may pick, the baselines' included, gets the same budget; the
            costs are the tuned ones and every compile of the run uses the tuned schedules
            (:func:`tvm_mpq.measure.tuned.tuned_schedule_provider`).
        prior_workloads: model-independent layer shapes also measured for the cost model.
        final_measure: run the chosen plan and the baselines end to end (standalone artifact)
            and through the compiled model.
        compiled_eval: with ``final_measure``, evaluate accuracy through the compiled model.
        final_eval_samples: held-out images for the real accuracy (default: all).
        glue: what the compiled plans compute between layers (``tvm_mpq.compile(...,
            glue=)``): ``"integer"`` (integer-only inference: requantize epilogues, integer
            adds and pooling) or ``"float"`` (float quantize / dequantize around every
            layer, for comparison). Everything follows it: the per-layer passes the search
            prices, the torch reference whose accuracy the search refines
            (``fake_quant(..., integer_only=True)`` for the integer glue), and every model
            the tuner compiles.
    """

    backend: Any = "spike"
    tracker: str | None = None
    key: str | None = None
    measure_budget: int | None = None
    tune_trials: int = 0
    prior_workloads: int = 0
    final_measure: bool = True
    compiled_eval: bool = True
    final_eval_samples: int | None = None
    glue: str = "integer"

    def __post_init__(self) -> None:
        if self.glue not in GLUES:
            raise ValueError(f"glue={self.glue!r}: expected one of {GLUES}")
        if self.backend == "rpc" and not (self.tracker and self.key):
            raise ValueError("backend='rpc' needs tracker='HOST:PORT' and key='KEY' (the "
                             "servers' key, e.g. 'spike-rv64gc_zbb'; tvm-mpq rpc status lists them)")
        if self.backend != "rpc" and (self.tracker or self.key):
            raise ValueError(f"tracker= / key= go with backend='rpc' (backend is "
                             f"{self.backend!r})")
        _check_count(self, "measure_budget", 1, optional=True)
        _check_count(self, "tune_trials", 0)
        _check_count(self, "prior_workloads", 0)
        _check_count(self, "final_eval_samples", 1, optional=True)


@dataclass(frozen=True)
class QATSettings:
    """MOHAQ beacons: ``beacons`` front plans fine-tuned for ``steps`` QAT steps (0: PTQ only),
    with ``method`` (``tune(qat=)``): "fixed" calibrated scales or "lsq" learned scales."""

    beacons: int = 0
    steps: int = 300
    method: str = "fixed"

    def __post_init__(self) -> None:
        from tvm_mpq.quant.qat import QAT_METHODS

        _check_count(self, "beacons", 0, keyword="qat_beacons")
        _check_count(self, "steps", 1, keyword="qat_steps")
        if self.method not in QAT_METHODS:
            raise ValueError(f"qat={self.method!r}: expected one of {QAT_METHODS}")


@dataclass(frozen=True)
class TuneConfig:
    """Everything :func:`tvm_mpq.tune` is asked to do, in four sections."""

    budgets: Budgets = field(default_factory=Budgets)
    search: SearchSettings = field(default_factory=SearchSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    qat: QATSettings = field(default_factory=QATSettings)

    #: ``tune()`` keyword -> (section, field), for the keywords whose field name differs
    RENAMED: ClassVar[dict[str, tuple[str, str]]] = {
        "qat_beacons": ("qat", "beacons"), "qat_steps": ("qat", "steps"),
        "qat": ("qat", "method")}

    @classmethod
    def keywords(cls) -> dict[str, tuple[str, str]]:
        """Every ``tune()`` keyword of the config -> (section, field)."""
        out: dict[str, tuple[str, str]] = {}
        for sec in fields(cls):
            for f in fields(sec.default_factory):  # type: ignore[arg-type]
                out[f.name] = (sec.name, f.name)
        for kw, where in cls.RENAMED.items():
            del out[where[1]]
            out[kw] = where
        return out

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TuneConfig:
        """The default config with ``tune()`` keywords applied (TypeError on an unknown one)."""
        return cls().replace(**kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneConfig:
        """Inverse of :meth:`to_dict` (a ``TuneResult.settings`` dict; other keys, such as
        ``measured_kernels``, are ignored)."""
        kw = cls.keywords()
        return cls.from_kwargs(**{k: v for k, v in d.items() if k in kw})

    def replace(self, **kwargs: Any) -> TuneConfig:
        """A copy with ``tune()`` keywords changed."""
        kw = self.keywords()
        bad = sorted(set(kwargs) - set(kw))
        if bad:
            raise TypeError(f"tune() got unexpected keyword argument(s) {bad}; settings are "
                            f"{sorted(kw)}")
        by_section: dict[str, dict[str, Any]] = {}
        for k, v in kwargs.items():
            sec, name = kw[k]
            by_section.setdefault(sec, {})[name] = v
        return replace(self, **{sec: replace(getattr(self, sec), **ch)
                                for sec, ch in by_section.items()})

    def get(self, keyword: str) -> Any:
        """The value of one ``tune()`` keyword."""
        sec, name = self.keywords()[keyword]
        return getattr(getattr(self, sec), name)

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-able, keyed by ``tune()`` keyword (a runner is recorded by its
        backend name)."""
        out: dict[str, Any] = {}
        for k in self.keywords():
            v = self.get(k)
            if k == "bits":
                v = [list(b) for b in v]
            elif k in ("variants", "dnas_cost_weights"):
                v = list(v)
            elif k == "backend" and not isinstance(v, str):
                v = v.backend
            out[k] = v
        return out


def resolve_config(config: TuneConfig | None, kwargs: dict[str, Any]) -> TuneConfig:
    """The config of a ``tune()`` call: ``config`` (default: the defaults) with the keywords
    given. With both, a keyword must agree with the config (ValueError otherwise): nothing is
    overridden silently."""
    if config is None:
        return TuneConfig.from_kwargs(**kwargs)
    given = TuneConfig().replace(**kwargs)  # validates names, normalises bits and variants
    clash = [f"{k}={given.get(k)!r} (config: {config.get(k)!r})" for k in kwargs
             if given.get(k) != config.get(k)]
    if clash:
        raise ValueError("tune() got both config= and conflicting keywords: " + ", ".join(clash)
                         + "; pass each setting once (e.g. config.replace(...))")
    return config


def resolve_search(config: TuneConfig) -> TuneConfig:
    """The search settings' defaults made concrete: ``dnas_cost=None`` is ``"bitops"`` for
    the hybrid and ``"measured"`` otherwise. Why bit-ops for the hybrid: it is Free Bits'
    own design (a hardware-agnostic supernet, the target enters in the refinement), and on
    the README model it found cheaper plans than the measured-cost supernet in 3 of 4 runs
    (rv64gc_zbb at kernel revision 11: 0.864 of best_uniform against 0.965;
    docs/results.md, sessions 9 and 15). A set value is kept."""
    s = config.search
    if s.dnas_cost is not None:
        return config
    return config.replace(dnas_cost="bitops" if s.search == "hybrid" else "measured")
