"""tvm-mpq: hardware-aware mixed-precision quantization for RISC-V on Apache TVM."""

__version__ = "0.1.0"
