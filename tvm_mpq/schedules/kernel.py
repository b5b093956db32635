"""A kernel definition: TE computation + how to turn user integers into its arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tvm_mpq.schedules.workload import Workload


@dataclass(frozen=True)
class Epilogue:
    """A pass fused after a kernel's int32 output (e.g. the requantize epilogue to uint8).

    Attributes:
        params: its own TE placeholders (per-channel constants), passed after the weight.
        result: the TE tensor the fused function stores, computed from the kernel's output.
        key: what the computation depends on besides the params (e.g. clamp bounds and
            form): fused functions with equal kernels and keys are the same function.
    """

    params: list
    result: Any
    key: str

    @property
    def name(self) -> str:
        """Its block's name (the schedule inlines it into the kernel's write-back)."""
        return str(self.result.op.name)


@dataclass
class KernelDef:
    """One (workload, variant, bits) kernel as a TE computation.

    ``tensors`` are the kernel's tensors in order: activation input, prepared
    (pre-packed) weight, output. ``prepare_weight`` maps the user's integer
    weight to the weight argument (done once, at compile time, in a model);
    ``prepare_input`` maps user activations to the input argument dtype. With an
    ``epilogue`` (:meth:`with_epilogue`) the function stores the epilogue's result instead
    of the output (:attr:`params`); the schedules still address the kernel's own stages.
    """

    workload: Workload
    variant: str
    w_bits: int
    a_bits: int
    tensors: list
    prepare_weight: Callable[[np.ndarray], np.ndarray]
    prepare_input: Callable[[np.ndarray], np.ndarray]
    word_bits: int = 64
    pad_value: int = 0
    attrs: dict = field(default_factory=dict)
    epilogue: Epilogue | None = None

    @property
    def output(self):
        """The kernel's output stage (int32 accumulators, or fp32)."""
        return self.tensors[-1]

    @property
    def out_dtype(self) -> str:
        return str(self.output.dtype)

    @property
    def result(self):
        """The tensor the function stores: the epilogue's result, else :attr:`output`."""
        return self.output if self.epilogue is None else self.epilogue.result

    @property
    def params(self) -> list:
        """The PrimFunc parameters: input, weight, the epilogue's params, :attr:`result`."""
        if self.epilogue is None:
            return list(self.tensors)
        return [*self.tensors[:-1], *self.epilogue.params, self.epilogue.result]

    def with_epilogue(self, fn: Callable[[Any, list], Any], params: list,
                      key: str) -> KernelDef:
        """This kernel with ``fn(output, params)`` fused after its output (see
        :class:`Epilogue`)."""
        if self.epilogue is not None:
            raise ValueError(f"{self.describe()} already has an epilogue")
        return replace(self, epilogue=Epilogue(list(params), fn(self.output, list(params)),
                                               key))

    def prim_func(self, name: str = "kernel"):
        """The (unscheduled) PrimFunc, with ``global_symbol`` = name."""
        from tvm import te

        return te.create_prim_func(self.params).with_attr("global_symbol", name)

    def make_args(self, x: np.ndarray, w: np.ndarray,
                  extra: list[np.ndarray] = ()) -> list[np.ndarray]:
        """Numpy arguments (input, prepared weight, ``extra``: the epilogue's params, output
        buffer) for a call."""
        want = 0 if self.epilogue is None else len(self.epilogue.params)
        if len(extra) != want:
            raise ValueError(f"{self.describe()}: {len(extra)} epilogue arguments given for "
                             f"{want}")
        res = self.result
        out = np.zeros([int(d) for d in res.shape], str(res.dtype))
        return [self.prepare_input(x), self.prepare_weight(w), *extra, out]

    def describe(self) -> str:
        s = f"{self.workload.key()} {self.variant} w{self.w_bits}a{self.a_bits}"
        return s if self.epilogue is None else f"{s} +{self.epilogue.name}[{self.epilogue.key}]"
