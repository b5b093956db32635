"""What the cost model is asked about: one kernel (workload, variant, bits) on one target.

Public API::

    q = CostQuery(workload, "bitserial", 2, 2, "rv64gc_zbb")   # or CostQuery.from_record(rec)
    q.key()       # KernelKey: the identity the database, the cost model and the search share
    q.request()   # (workload, variant, w_bits, a_bits): what measure_many takes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm_mpq.measure.key import KernelKey
from tvm_mpq.schedules.workload import Workload, workload_from_dict

__all__ = ["VARIANT_ORDER", "CostQuery"]

#: Every kernel variant, in the order the features one-hot encode them.
VARIANT_ORDER: tuple[str, ...] = ("fp32", "int8", "bitserial", "unpack", "swar")


@dataclass(frozen=True)
class CostQuery:
    """One kernel on one target profile.

    Attributes:
        workload: a ``Conv2dWorkload`` or ``DenseWorkload`` (:mod:`tvm_mpq.schedules`).
        variant: "fp32", "int8", "bitserial", "unpack" or "swar".
        w_bits, a_bits: bit-widths (ignored, and normalised to 8, for "fp32").
        profile: target profile name (:data:`tvm_mpq.targets.PROFILES`).
    """

    workload: Workload
    variant: str
    w_bits: int
    a_bits: int
    profile: str

    def __post_init__(self) -> None:
        if self.variant not in VARIANT_ORDER:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANT_ORDER}")
        if self.variant == "fp32":  # one canonical key per fp32 kernel (measure() needs bits <= 8)
            object.__setattr__(self, "w_bits", 8)
            object.__setattr__(self, "a_bits", 8)
        elif self.w_bits not in (1, 2, 4, 8) or self.a_bits not in (1, 2, 4, 8):
            raise ValueError(f"bits w{self.w_bits}a{self.a_bits} not supported by {self.variant!r}")

    @classmethod
    def from_record(cls, rec: Any) -> CostQuery:
        """From a :class:`~tvm_mpq.measure.database.MeasureRecord` (or its dict)."""
        d = rec if isinstance(rec, dict) else rec.to_dict()
        return cls(workload_from_dict(d["workload"]), d["variant"], int(d["w_bits"]),
                   int(d["a_bits"]), d["profile"])

    def key(self) -> KernelKey:
        """The kernel's identity (equal to the plain tuple of the same five fields)."""
        return KernelKey(self.workload.key(), self.variant, self.w_bits, self.a_bits,
                         self.profile)

    def request(self) -> tuple[Workload, str, int, int]:
        """The ``(workload, variant, w_bits, a_bits)`` tuple
        :func:`tvm_mpq.measure.campaign.measure_many` takes."""
        return (self.workload, self.variant, self.w_bits, self.a_bits)

    def describe(self) -> str:
        """Short human-readable name: ``"<workload key> <variant> w2a2 @<profile>"``."""
        bits = "fp32" if self.variant == "fp32" else f"w{self.w_bits}a{self.a_bits}"
        return f"{self.workload.key()} {self.variant} {bits} @{self.profile}"
