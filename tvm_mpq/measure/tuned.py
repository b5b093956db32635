"""Tuned schedules back out of the measurement database: :func:`tuned_schedule_provider`.

A campaign with ``tune_trials=N`` stores, per kernel, a ``tuned<N>`` record whose
``extra["work_dir"]`` is the MetaSchedule database of its tuning and whose
``extra["rejected_records"]`` says how many better-measured records failed validation before
the chosen one. The provider replays that chosen record's trace on the kernel a compile asks
for, so ``tvm_mpq.compile(..., schedule_for=provider)`` builds each layer with the schedule
whose cost the search used. The compile's kernel may differ from the tuned one only in
constants (the padding value is the layer's activation zero point); a trace that does not
replay gives the default schedule, with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from tvm_mpq.measure.database import MeasureKey, schedule_tag
from tvm_mpq.measure.key import KernelKey

__all__ = ["tuned_schedule_provider"]

log = logging.getLogger(__name__)


def _chosen_record(rec: Any, kd_tuned: Any) -> Any:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    wd, index = rec.extra.get("work_dir"), int(rec.extra.get("rejected_records", 0))
    if not wd:
        return None
    msdb = ms.database.JSONDatabase(work_dir=wd)
    mod = tvm.IRModule({"main": kd_tuned.prim_func("main")})
    if not msdb.has_workload(mod):
        return None
    recs = msdb.get_top_k(msdb.commit_workload(mod), index + 1)
    return recs[index] if len(recs) > index else None


def tuned_schedule_provider(db: Any, profile: str, backend: str, trials: int) -> Any:
    """``schedule_for(kd) -> IRModule | None`` of the ``tuned<trials>`` records of ``db`` on
    ``profile`` / ``backend`` (see the module docstring); None for a kernel without one."""
    import tvm

    from tvm_mpq.schedules.registry import make_kernel

    tag = schedule_tag(trials)
    cache: dict[tuple, Any] = {}

    def provide(kd: Any) -> Any:
        key = KernelKey(kd.workload.key(), kd.variant, kd.w_bits, kd.a_bits, profile)
        if key not in cache:
            rec = db.get(MeasureKey.of(key, backend, tag))
            tuned = None
            if rec is not None and rec.ok:
                ref = make_kernel(kd.workload, kd.variant, kd.w_bits, kd.a_bits,
                                  word_bits=kd.word_bits)  # as measured: padding value 0
                tuned = _chosen_record(rec, ref)
            cache[key] = tuned
        record = cache[key]
        if record is None:
            return None
        try:
            sch = tvm.s_tir.Schedule(tvm.IRModule({"main": kd.prim_func("main")}))
            record.trace.apply_to_schedule(sch, remove_postproc=False)
            return sch.mod
        except Exception as e:  # noqa: BLE001 - fall back to the default schedule, say so
            log.warning("the tuned schedule of %s does not replay on this layer's kernel (%s): "
                        "default schedule", key, e)
            return None

    return provide
