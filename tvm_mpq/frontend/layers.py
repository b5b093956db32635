"""The layer table: every conv2d / linear call site of an imported model, with its shapes.

:class:`LayerTable` is what the other stages read (plans, calibration checks, the cost
model's queries, the search's genes); :class:`LayerShape` groups call sites that run the
same kernel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["LayerInfo", "LayerShape", "LayerTable", "WorkloadGroup"]


@dataclass(frozen=True)
class LayerShape:
    """The shape signature of a call site (kind, shapes, stride, padding, dilation, groups):
    call sites with equal signatures run the same kernel, so one measurement or tuned
    schedule serves them all.

    Bias presence and the layer's name are deliberately not part of it. The kernel-side
    description of the same computation is :class:`tvm_mpq.schedules.workload.Workload`
    (:func:`tvm_mpq.schedules.workload.workload_from_layer`).
    """

    kind: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    def __str__(self) -> str:
        x = "x".join(map(str, self.input_shape))
        w = "x".join(map(str, self.weight_shape))
        if self.kind == "linear":
            return f"linear {x} * {w}"
        return f"conv2d {x} * {w} s{self.stride} p{self.padding} g{self.groups}"


@dataclass(frozen=True)
class LayerInfo:
    """One conv2d / linear call site.

    Shapes are those of the traced example input (batch included). For
    ``linear`` the input/output shapes are the 2-D GEMM operands ``(M, K)`` /
    ``(M, N)`` actually computed; the weight shape is torch's ``(out, in)``.
    ``padding`` is the conv's own (symmetric) zero padding ``(ph, pw)``.
    ``macs`` counts multiply-accumulates for the whole example batch;
    ``param_bytes`` is the fp32 size of weight + bias.
    """

    index: int
    name: str
    kind: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    has_bias: bool = False
    macs: int = 0
    param_bytes: int = 0
    quantizable: bool = True
    reason: str = ""

    @property
    def layer_shape(self) -> LayerShape:
        """Its shape signature (the key of :meth:`LayerTable.distinct_workloads`)."""
        return LayerShape(self.kind, self.input_shape, self.weight_shape, self.stride,
                          self.padding, self.dilation, self.groups)

    @property
    def weight_numel(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def bias_numel(self) -> int:
        return self.weight_shape[0] if self.has_bias else 0

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv2d" and self.groups > 1 and self.groups == self.input_shape[1] \
            and self.weight_shape[1] == 1


@dataclass
class WorkloadGroup:
    """A distinct workload (shape signature) and the call sites sharing it."""

    shape: LayerShape
    layers: list[LayerInfo]

    @property
    def count(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.layers]


class LayerTable(Sequence[LayerInfo]):
    """The conv2d / linear call sites of a model, in execution order."""

    def __init__(self, rows: Sequence[LayerInfo]):
        self.rows: list[LayerInfo] = list(rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, str):
            for r in self.rows:
                if r.name == i:
                    return r
            raise KeyError(f"no call site of module {i!r}")
        return self.rows[i]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerInfo]:
        return iter(self.rows)

    def names(self) -> list[str]:
        """Module names of all call sites, in order, without repeats."""
        return list(dict.fromkeys(r.name for r in self.rows))

    def quantizable_names(self) -> list[str]:
        """Names whose every call site is quantizable, in order, without repeats."""
        bad = {r.name for r in self.rows if not r.quantizable}
        return [n for n in self.names() if n not in bad]

    def distinct_workloads(self) -> list[WorkloadGroup]:
        """Deduplicated workloads, in order of first use, with their call sites."""
        groups: dict[LayerShape, WorkloadGroup] = {}
        for r in self.rows:
            groups.setdefault(r.layer_shape, WorkloadGroup(r.layer_shape, [])).layers.append(r)
        return list(groups.values())

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def total_param_bytes(self) -> int:
        return sum(self[n].param_bytes for n in self.names())

    def to_markdown(self) -> str:
        """A markdown table, one row per call site, then totals."""
        hdr = ("| # | layer | kind | input | weight | output | s | p | g | MACs | bytes (fp32) "
               "| quant |\n|---|---|---|---|---|---|---|---|---|---:|---:|---|")
        fmt = lambda t: "x".join(map(str, t)) if t else "-"  # noqa: E731
        lines = [hdr]
        for r in self.rows:
            q = "yes" if r.quantizable else f"no: {r.reason}"
            lines.append(
                f"| {r.index} | {r.name} | {r.kind}{' (dw)' if r.is_depthwise else ''} "
                f"| {fmt(r.input_shape)} | {fmt(r.weight_shape)} | {fmt(r.output_shape)} "
                f"| {fmt(r.stride)} | {fmt(r.padding)} | {r.groups} | {r.macs:,} "
                f"| {r.param_bytes:,} | {q} |")
        lines.append(f"\n{len(self.rows)} call sites, {len(self.distinct_workloads())} distinct "
                     f"workloads, {self.total_macs:,} MACs, {self.total_param_bytes:,} bytes fp32")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        return (f"LayerTable({len(self.rows)} call sites, "
                f"{len(self.distinct_workloads())} distinct workloads)")
