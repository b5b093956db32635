"""The one identity of a kernel on a target, shared by the measurement database, the cost
model and the search."""

from __future__ import annotations

from typing import NamedTuple


class KernelKey(NamedTuple):
    """One kernel on one target profile: what is measured, predicted and priced.

    A ``NamedTuple`` so it is hashable, ordered and serialises as a plain JSON list
    (``KernelKey(*json_list)`` reads it back).

    Attributes:
        workload_key: :meth:`tvm_mpq.schedules.workload.Conv2dWorkload.key` (or dense).
        variant: kernel variant (``"fp32"``, ``"int8"``, ``"bitserial"``, ``"unpack"``,
            ``"swar"``).
        w_bits, a_bits: weight / activation bits (8, 8 for fp32).
        profile: target profile name (``tvm_mpq.targets.PROFILES``).
    """

    workload_key: str
    variant: str
    w_bits: int
    a_bits: int
    profile: str
