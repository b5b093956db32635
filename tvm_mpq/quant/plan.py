"""Mixed-precision quantization plans: bit-widths and kernel variant per layer.

A :class:`QuantPlan` maps each quantizable layer (keyed by its torch module
name, in forward order) to a :class:`LayerConfig`. Layers absent from a plan,
and layers whose config is fp32, stay float.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from tvm_mpq.frontend import ImportedModel, LayerTable

FP32 = 32
"""Bit-width marker meaning "not quantized" (``"fp32"`` is accepted as well)."""

VALID_BITS: tuple[int, ...] = (1, 2, 4, 8)
VARIANTS: tuple[str, ...] = ("fp32", "int8", "bitserial", "unpack", "swar")


def normalize_bits(bits: int | str, what: str = "bits") -> int:
    """Return ``bits`` as an int in {1, 2, 4, 8, 32}; accept ``"fp32"``/``32``/``"8"``.

    Raises:
        ValueError: for anything else, naming the offending value.
    """
    if isinstance(bits, str):
        s = bits.strip().lower()
        if s in ("fp32", "float", "float32", "32"):
            return FP32
        try:
            bits = int(s)
        except ValueError:
            msg = f"invalid {what} {bits!r}: expected one of 1, 2, 4, 8 or 'fp32'"
            raise ValueError(msg) from None
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VALID_BITS + (FP32,):
        raise ValueError(f"invalid {what} {bits!r}: expected one of 1, 2, 4, 8 or 'fp32'")
    return int(bits)


@dataclass(frozen=True)
class LayerConfig:
    """Quantization config of one layer.

    Attributes:
        w_bits: weight bits in {1, 2, 4, 8}, or 32 (fp32).
        a_bits: input-activation bits in {1, 2, 4, 8}, or 32 (fp32).
        variant: kernel variant ("fp32", "int8", "bitserial", "unpack", "swar") or None:
            "the best variant for these bits on the target", resolved at
            compile time (see :func:`resolve_variant`).

    A layer is either fully fp32 (both bit-widths 32) or fully quantized:
    the integer kernels need integer operands on both sides.
    """

    w_bits: int = 8
    a_bits: int = 8
    variant: str | None = None

    def __post_init__(self) -> None:
        w = normalize_bits(self.w_bits, "w_bits")
        a = normalize_bits(self.a_bits, "a_bits")
        object.__setattr__(self, "w_bits", w)
        object.__setattr__(self, "a_bits", a)
        if (w == FP32) != (a == FP32):
            raise ValueError(
                f"w_bits={w}, a_bits={a}: a layer is either fp32 on both sides or quantized "
                "on both sides (weight-only / activation-only quantization is not supported)"
            )
        v = self.variant
        if v is not None and v not in VARIANTS:
            raise ValueError(f"invalid variant {v!r}: expected one of {VARIANTS} or None")
        if v == "fp32" and w != FP32:
            raise ValueError(f"variant 'fp32' needs fp32 bits, got w{w}a{a}")
        if w == FP32 and v not in (None, "fp32"):
            raise ValueError(f"fp32 layer cannot use variant {v!r}")

    @property
    def is_fp32(self) -> bool:
        """True when the layer stays float."""
        return self.w_bits == FP32

    def short(self) -> str:
        """Compact text, e.g. ``"w4a8"``, ``"w2a2:bitserial"``, ``"fp32"``."""
        s = "fp32" if self.is_fp32 else f"w{self.w_bits}a{self.a_bits}"
        return s if self.variant in (None, "fp32") else f"{s}:{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (fp32 bits written as ``"fp32"``)."""
        b = lambda x: "fp32" if x == FP32 else x  # noqa: E731
        return {"w_bits": b(self.w_bits), "a_bits": b(self.a_bits), "variant": self.variant}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerConfig:
        return cls(d["w_bits"], d["a_bits"], d.get("variant"))


FP32_CONFIG = LayerConfig(FP32, FP32, None)


def layer_weight_bytes(row: Any, w_bits: int) -> int:
    """Bytes of one layer's parameters with ``w_bits``-bit weights (:data:`FP32` = float).

    The one size rule (used by :meth:`QuantPlan.weight_bytes` and the search problem):
    weights take ``w_bits / 8`` bytes each, rounded up per layer; the bias stays fp32
    (4 bytes per element); per-channel scales and zero points are not counted.

    Args:
        row: a :class:`~tvm_mpq.frontend.layers.LayerInfo` (``weight_numel``, ``bias_numel``).
        w_bits: weight bits.
    """
    return math.ceil(row.weight_numel * w_bits / 8) + 4 * row.bias_numel


def _profile_has_popcount(profile: Any) -> bool:
    from tvm_mpq.targets import get_profile

    p = get_profile(profile)
    return p.is_host or p.has_zbb


#: Bitserial packs channels into words: below this many input channels per group
#: (depthwise: 1) a word is mostly empty and the int8 arithmetic of ``unpack`` is cheaper
#: (bench/riscv_kernels.py: bitserial depthwise 2-25x more instructions than int8).
MIN_BITSERIAL_CHANNELS = 8


def resolve_variant(w_bits: int | str, a_bits: int | str, profile_name: Any = "host",
                    channels_per_group: int | None = None) -> str:
    """Default kernel variant for a bit-width pair on a target profile.

    This is the rule used *before* per-layer measurements exist:

    - fp32 -> ``"fp32"``;
    - either side 8 bits (w8a8, w8a4, w4a8, ...) -> ``"int8"``;
    - both sides <= 4 bits -> ``"bitserial"`` when the profile has a fast
      popcount (the host, or RISC-V with ``+zbb``) and the layer has at least
      :data:`MIN_BITSERIAL_CHANNELS` input channels per group, else ``"unpack"``.

    Args:
        w_bits, a_bits: bit-widths (1, 2, 4, 8, 32 or "fp32").
        profile_name: a :mod:`tvm_mpq.targets` profile name or Profile.
        channels_per_group: the layer's input channels per group, if known
            (depthwise conv: 1).
    """
    w, a = normalize_bits(w_bits, "w_bits"), normalize_bits(a_bits, "a_bits")
    if w == FP32 or a == FP32:
        return "fp32"
    if max(w, a) == 8:
        return "int8"
    if channels_per_group is not None and channels_per_group < MIN_BITSERIAL_CHANNELS:
        return "unpack"
    return "bitserial" if _profile_has_popcount(profile_name) else "unpack"


def _quantizable_names(model: Any) -> list[str]:
    """Quantizable layer names, in forward order where it is known."""
    from tvm_mpq.frontend import ImportedModel, LayerTable, quantizable_modules

    if isinstance(model, ImportedModel):
        model = model.table
    if isinstance(model, LayerTable):
        return model.quantizable_names()
    return quantizable_modules(model)


class QuantPlan:
    """Per-layer quantization plan, keyed by torch module name (ordered).

    Build one with :meth:`uniform` or :meth:`fp32`, then edit with :meth:`set`.
    Plans compare equal when they hold the same layers, in the same order,
    with the same configs.
    """

    def __init__(self, configs: dict[str, LayerConfig] | Iterable[tuple[str, LayerConfig]]):
        items = configs.items() if isinstance(configs, dict) else configs
        self._cfg: dict[str, LayerConfig] = {}
        for name, cfg in items:
            if not isinstance(cfg, LayerConfig):
                raise TypeError(f"layer {name!r}: expected LayerConfig, got {type(cfg).__name__}")
            self._cfg[str(name)] = cfg

    # ---------------------------------------------------------------- builders
    @classmethod
    def uniform(
        cls,
        model: nn.Module | LayerTable | ImportedModel,
        w_bits: int | str = 8,
        a_bits: int | str = 8,
        variant: str | None = None,
    ) -> QuantPlan:
        """Same config for every quantizable Conv2d / Linear layer.

        Args:
            model: a torch module (layers in ``named_modules`` order, i.e.
                definition order, which matches forward order for usual CNNs),
                or a :class:`~tvm_mpq.frontend.layers.LayerTable` / ``ImportedModel``
                (exact forward order, only call sites the integer kernels support).
        """
        cfg = LayerConfig(w_bits, a_bits, variant)
        return cls((n, cfg) for n in _quantizable_names(model))

    @classmethod
    def fp32(cls, model: nn.Module | LayerTable | ImportedModel) -> QuantPlan:
        """Plan listing every quantizable layer as fp32 (the float baseline)."""
        return cls((n, FP32_CONFIG) for n in _quantizable_names(model))

    # ---------------------------------------------------------------- access
    def layers(self) -> list[str]:
        """Layer names, in order."""
        return list(self._cfg)

    def __getitem__(self, name: str) -> LayerConfig:
        try:
            return self._cfg[name]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._cfg

    def __iter__(self) -> Iterator[str]:
        return iter(self._cfg)

    def __len__(self) -> int:
        return len(self._cfg)

    def items(self) -> list[tuple[str, LayerConfig]]:
        return list(self._cfg.items())

    def quantized_layers(self) -> list[str]:
        """Names of the layers that are not fp32."""
        return [n for n, c in self._cfg.items() if not c.is_fp32]

    def _unknown(self, name: str) -> str:
        shown = ", ".join(list(self._cfg)[:8]) + (", ..." if len(self._cfg) > 8 else "")
        return f"unknown layer {name!r}; plan layers: [{shown}]"

    def set(
        self,
        name: str,
        w_bits: int | str | None = None,
        a_bits: int | str | None = None,
        variant: str | None = None,
    ) -> QuantPlan:
        """Change one layer in place (returns self, for chaining).

        Bits left as None keep their current value, except that setting one
        side to fp32 sets both (fp32 is per layer) and setting one side of an
        fp32 layer to an integer width requires the other too.

        Raises:
            ValueError: unknown layer, invalid bits or variant (message names them).
        """
        if name not in self._cfg:
            raise ValueError(self._unknown(name))
        old = self._cfg[name]
        try:
            w = old.w_bits if w_bits is None else normalize_bits(w_bits, "w_bits")
            a = old.a_bits if a_bits is None else normalize_bits(a_bits, "a_bits")
            if (w == FP32) != (a == FP32) and (w_bits is None or a_bits is None):
                given = w if a_bits is None else a
                if given != FP32:
                    raise ValueError(
                        "layer is fp32: give both w_bits and a_bits to quantize it")
                w = a = FP32  # fp32 is per layer: one side fp32 makes the layer fp32
            self._cfg[name] = LayerConfig(w, a, variant)
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
        return self

    def copy(self) -> QuantPlan:
        return QuantPlan(dict(self._cfg))

    def resolved(self, profile_name: Any = "host") -> QuantPlan:
        """Copy with every ``variant=None`` replaced by :func:`resolve_variant`."""
        return QuantPlan(
            (n, c if c.variant else LayerConfig(c.w_bits, c.a_bits,
                                                resolve_variant(c.w_bits, c.a_bits, profile_name)))
            for n, c in self._cfg.items()
        )

    # ---------------------------------------------------------------- size
    def weight_bytes(self, table: LayerTable | ImportedModel) -> int:
        """Bytes of the conv/linear parameters at the planned bit-widths.

        Weights take ``w_bits / 8`` bytes each (rounded up per layer); fp32
        layers and layers not in the plan take 4 bytes per weight; biases are
        kept in fp32 (4 bytes). Per-channel scales and zero points are not
        counted. A module called several times is counted once.
        """
        from tvm_mpq.frontend.importer import ImportedModel

        if isinstance(table, ImportedModel):
            table = table.table
        total, seen = 0, set()
        for row in table:
            if row.name in seen:
                continue
            seen.add(row.name)
            total += layer_weight_bytes(row, self._cfg[row.name].w_bits if row.name in self._cfg
                                        else FP32)
        return total

    # ---------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """``{"version": 1, "layers": [{"name": ..., "w_bits": ..., ...}, ...]}``."""
        return {"version": 1,
                "layers": [{"name": n, **c.to_dict()} for n, c in self._cfg.items()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantPlan:
        """Inverse of :meth:`to_dict` (also accepts a plain ``{name: config}`` mapping)."""
        if "layers" in d:
            return cls((e["name"], LayerConfig.from_dict(e)) for e in d["layers"])
        return cls((n, LayerConfig.from_dict(c)) for n, c in d.items())

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantPlan:
        """Read a plan written by :meth:`save`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    # ---------------------------------------------------------------- dunder
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantPlan):
            return NotImplemented
        return list(self._cfg.items()) == list(other._cfg.items())

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        # run-length encode consecutive identical configs: "w8a8 x3, w2a2, fp32 x2"
        runs: list[list[Any]] = []
        for c in self._cfg.values():
            if runs and runs[-1][0] == c:
                runs[-1][1] += 1
            else:
                runs.append([c, 1])
        body = ", ".join(c.short() + (f" x{k}" if k > 1 else "") for c, k in runs)
        return f"QuantPlan({len(self._cfg)} layers: {body})"

    def summary(self) -> str:
        """One line per layer: ``name: w4a8``."""
        return "\n".join(f"{n}: {c.short()}" for n, c in self._cfg.items())
