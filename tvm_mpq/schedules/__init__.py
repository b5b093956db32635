"""Quantized conv2d/dense kernels: fp32, int8, bit-serial and sub-byte-unpack variants.

Each variant is a TE computation with a tunable schedule; every integer result is
bit-exact against the numpy reference in :mod:`.reference`.
"""

#: Revision of the kernel definitions and default schedules. Measurements depend on it: a
#: measurement database records the revision it was filled with and refuses another one
#: (``tvm_mpq.measure.database``). 2: planes-innermost bitserial layouts, blocked activation
#: packing, grouped plane accumulators, rocket-rv64 scheduling model. 3: bitserial tiles on
#: scalar cores without popcount too. 4 (never released in a result): a local-buffer
#: workaround for the swar miscompile fixed in 5. 5: swar window sums from the padded input
#: (the packed form was miscompiled by TVM 0.27 for small windows). 6: register-tiled
#: default schedules for fp32 / int8 / unpack (``tiles.direct_tile``); swar packs
#: output columns where that fills more lanes (``swar.swar_layout``). 7: swar pixel lanes
#: summed over blocks of input channels where narrower lanes fit more per word
#: (``swar.lane_block``). 8: swar channel lanes hold signed weights read back with a lane bias
#: (no window sums; the read-out fused into pointwise / dense tiles), are summed over blocks
#: of packed words in dense layers (``swar.channel_block``), and a tile's packed weights sit
#: side by side (``swar.channel_ktile``). 9: depthwise swar kernels read their lanes out lane
#: by lane; the pixel lanes' signed read-out stays exact under a fused epilogue. 10: compiled
#: without load clustering (``targets.RISCV_LLVM_OPTIONS``); int8 / unpack tiles chosen per
#: layer by loads per MAC (``tiles.direct_tile``). 11: int8 / unpack tiles with a kernel window
#: span 2 output rows and unroll 4 input channels; int8 weights of one-pixel outputs (dense)
#: blocked by 16 output features (``conv2d.feature_block``).
KERNELS_REVISION = 11

from tvm_mpq.schedules.build import build_kernel, resolve_target  # noqa: E402
from tvm_mpq.schedules.host_run import run_conv2d, run_dense  # noqa: E402
from tvm_mpq.schedules.kernel import KernelDef  # noqa: E402
from tvm_mpq.schedules.reference import conv2d_ref, dense_ref  # noqa: E402
from tvm_mpq.schedules.registry import make_kernel, variants  # noqa: E402
from tvm_mpq.schedules.workload import A_BITS, W_BITS, Conv2dWorkload, DenseWorkload  # noqa: E402

__all__ = [
    "A_BITS", "KERNELS_REVISION", "W_BITS", "Conv2dWorkload", "DenseWorkload", "KernelDef",
    "build_kernel",
    "conv2d_ref", "dense_ref", "make_kernel", "resolve_target", "run_conv2d", "run_dense",
    "variants",
]
