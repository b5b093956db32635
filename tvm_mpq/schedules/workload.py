"""Layer workloads: the shape of a conv2d or dense, independent of where it is used."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

W_BITS = (1, 2, 4, 8)
A_BITS = (1, 2, 4, 8)


def _pair(v: int | tuple[int, ...] | list[int], what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(e) for e in v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v!r}")
    return v  # type: ignore[return-value]


def _padding4(p: int | tuple[int, ...] | list[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, (h, w) or (t, l, b, r)."""
    if isinstance(p, int):
        return (p, p, p, p)
    p = tuple(int(e) for e in p)
    if len(p) == 1:
        return (p[0],) * 4
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (h, w) or (top, left, bottom, right), got {p!r}")


@dataclass(frozen=True)
class Conv2dWorkload:
    """An NCHW conv2d: input (n, c, h, w), weight (k, c // groups, kh, kw)."""

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1

    kind = "conv2d"

    @staticmethod
    def make(
        input_shape: tuple[int, ...],
        weight_shape: tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        groups: int = 1,
    ) -> Conv2dWorkload:
        """Build and validate from tensor shapes; ValueError names any mismatch."""
        if len(input_shape) != 4:
            raise ValueError(f"conv2d input must be NCHW (4-D), got shape {tuple(input_shape)}")
        if len(weight_shape) != 4:
            raise ValueError(f"conv2d weight must be OIHW (4-D), got shape {tuple(weight_shape)}")
        n, c, h, w = (int(v) for v in input_shape)
        k, cg, kh, kw = (int(v) for v in weight_shape)
        wl = Conv2dWorkload(n, c, h, w, k, kh, kw, _pair(stride, "stride"), _padding4(padding),
                            int(groups))
        if cg != wl.cg:
            raise ValueError(
                f"shape mismatch: weight has {cg} input channels per group, input has "
                f"{c} channels / groups={groups} = {c / max(groups, 1):g}")
        return wl

    def __post_init__(self) -> None:
        if min(self.n, self.c, self.h, self.w, self.k, self.kh, self.kw) < 1:
            raise ValueError(f"all conv2d dimensions must be >= 1: {self}")
        if self.groups < 1 or self.c % self.groups or self.k % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide both input channels ({self.c}) and "
                f"output channels ({self.k})")
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"bad stride {self.stride} or padding {self.padding}")
        if self.oh < 1 or self.ow < 1:
            raise ValueError(
                f"kernel {self.kh}x{self.kw} larger than padded input "
                f"{self.h + self.padding[0] + self.padding[2]}x"
                f"{self.w + self.padding[1] + self.padding[3]}")

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def kg(self) -> int:
        """Output channels per group."""
        return self.k // self.groups

    @property
    def hp(self) -> int:
        return self.h + self.padding[0] + self.padding[2]

    @property
    def wp(self) -> int:
        return self.w + self.padding[1] + self.padding[3]

    @property
    def oh(self) -> int:
        return (self.hp - self.kh) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.wp - self.kw) // self.stride[1] + 1

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.cg, self.kh, self.kw)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.oh, self.ow)

    @property
    def macs(self) -> int:
        return self.n * self.k * self.oh * self.ow * self.cg * self.kh * self.kw

    @property
    def is_depthwise(self) -> bool:
        return self.groups == self.c and self.cg == 1

    def key(self) -> str:
        """A stable, human-readable identifier (used as a database key)."""
        s, p = self.stride, self.padding
        return (f"conv2d_n{self.n}c{self.c}h{self.h}w{self.w}_k{self.k}r{self.kh}x{self.kw}"
                f"_s{s[0]}x{s[1]}_p{'x'.join(map(str, p))}_g{self.groups}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class DenseWorkload:
    """A dense layer: input (m, d), weight (n_out, d), output (m, n_out)."""

    m: int
    d: int
    n_out: int

    kind = "dense"

    @staticmethod
    def make(input_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> DenseWorkload:
        if len(input_shape) != 2:
            raise ValueError(f"dense input must be 2-D (batch, features), got {tuple(input_shape)}")
        if len(weight_shape) != 2:
            raise ValueError(f"dense weight must be 2-D (out, in), got {tuple(weight_shape)}")
        if int(input_shape[1]) != int(weight_shape[1]):
            raise ValueError(
                f"shape mismatch: input has {input_shape[1]} features, weight expects "
                f"{weight_shape[1]}")
        return DenseWorkload(int(input_shape[0]), int(input_shape[1]), int(weight_shape[0]))

    def __post_init__(self) -> None:
        if min(self.m, self.d, self.n_out) < 1:
            raise ValueError(f"all dense dimensions must be >= 1: {self}")

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.m, self.d)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.n_out, self.d)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.m, self.n_out)

    @property
    def macs(self) -> int:
        return self.m * self.d * self.n_out

    def key(self) -> str:
        return f"dense_m{self.m}d{self.d}n{self.n_out}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


Workload = Conv2dWorkload | DenseWorkload


def workload_from_dict(d: dict) -> Workload:
    """Inverse of ``Workload.to_dict``."""
    d = dict(d)
    kind = d.pop("kind")
    if kind == "conv2d":
        d["stride"] = tuple(d["stride"])
        d["padding"] = tuple(d["padding"])
        return Conv2dWorkload(**d)
    if kind == "dense":
        return DenseWorkload(**d)
    raise ValueError(f"unknown workload kind {kind!r}")


def workload_from_layer(info: Any) -> Workload:
    """The kernel workload of one conv2d / linear call site.

    Args:
        info: a :class:`~tvm_mpq.frontend.layers.LayerInfo` (or anything with its ``kind``,
            ``input_shape``, ``weight_shape`` and, for ``"conv2d"``, ``stride``, symmetric
            ``padding`` ``(ph, pw)`` and ``groups``).

    Returns:
        A :class:`Conv2dWorkload` for ``kind == "conv2d"``, else a :class:`DenseWorkload`:
        the one workload the compiler, the measurements and the cost model all key a layer by.
    """
    if info.kind == "conv2d":
        ph, pw = info.padding
        return Conv2dWorkload.make(info.input_shape, info.weight_shape, info.stride,
                                   (ph, pw, ph, pw), info.groups)
    return DenseWorkload.make(info.input_shape, info.weight_shape)
