"""A kernel definition: TE computation + how to turn user integers into its arguments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tvm_mpq.schedules.workload import Workload


@dataclass
class KernelDef:
    """One (workload, variant, bits) kernel as a TE computation.

    ``tensors`` are the PrimFunc parameters in order: activation input, prepared
    (pre-packed) weight, output. ``prepare_weight`` maps the user's integer
    weight to the weight argument (done once, at compile time, in a model);
    ``prepare_input`` maps user activations to the input argument dtype.
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

    @property
    def output(self):
        return self.tensors[-1]

    @property
    def out_dtype(self) -> str:
        return str(self.output.dtype)

    def prim_func(self, name: str = "kernel"):
        """The (unscheduled) PrimFunc, with ``global_symbol`` = name."""
        from tvm import te

        return te.create_prim_func(self.tensors).with_attr("global_symbol", name)

    def make_args(self, x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
        """Numpy arguments (input, prepared weight, output buffer) for a call."""
        out = np.zeros([int(d) for d in self.output.shape], self.out_dtype)
        return [self.prepare_input(x), self.prepare_weight(w), out]

    def describe(self) -> str:
        return f"{self.workload.key()} {self.variant} w{self.w_bits}a{self.a_bits}"
