"""Target profiles: one ISA configuration, and how to build for and simulate it.

A *profile* (ISA string, LLVM attributes, simulator flags) is distinct from a
*backend* (how a cost is obtained: spike, qemu, an RPC board, the host).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    """An ISA profile of a RISC-V core (or the host).

    Attributes:
        name: profile name, e.g. ``"rv64gc_zbb"``.
        xlen: 32 or 64 (0 for the host).
        mattr: LLVM target attributes.
        mabi: LLVM / GCC ABI name.
        march: GCC ``-march`` string for the bare-metal harness.
        spike_isa: ``spike --isa=`` string.
        qemu_cpu: ``qemu-system-riscv* -cpu`` string.
        vlen: vector register length in bits (0: no vector unit).
        mcpu: LLVM CPU whose scheduling model codegen uses (ISA features come from
            ``mattr`` only; the CPU must not add any). Rocket's in-order model keeps the
            live ranges of unrolled kernels short: up to 10% fewer instructions than the
            generic model on the bitserial kernels (fewer spills), never more on the others.
        llvm_options: LLVM command-line options codegen runs with (TVM's ``cl-opt``), see
            :data:`RISCV_LLVM_OPTIONS`.
    """

    name: str
    xlen: int
    mattr: tuple[str, ...] = ()
    mabi: str = ""
    march: str = ""
    spike_isa: str = ""
    qemu_cpu: str = ""
    vlen: int = 0
    mcpu: str = ""
    llvm_options: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_host(self) -> bool:
        return self.xlen == 0

    @property
    def has_zbb(self) -> bool:
        return "+zbb" in self.mattr

    @property
    def word_bits(self) -> int:
        """Natural machine-word width used for bit-packing."""
        return 32 if self.xlen == 32 else 64

    def target_dict(self, os: str = "linux") -> dict[str, Any]:
        """TVM target as a JSON dict.

        Args:
            os: ``"linux"`` (riscv*-unknown-linux-gnu) or ``"baremetal"``
                (riscv*-unknown-elf). Ignored for the host.
        """
        if self.is_host:
            return host_target_dict()
        if os not in ("linux", "baremetal"):
            raise ValueError(f"unknown os {os!r}: expected 'linux' or 'baremetal'")
        arch = "riscv64" if self.xlen == 64 else "riscv32"
        triple = f"{arch}-unknown-linux-gnu" if os == "linux" else f"{arch}-unknown-elf"
        tgt = {
            "kind": "llvm",
            "mtriple": triple,
            "mcpu": self.mcpu or ("generic-rv64" if self.xlen == 64 else "generic-rv32"),
            "mabi": self.mabi,
            "mattr": list(self.mattr),
            "num-cores": 1,  # MetaSchedule needs it; our RISC-V measurements are single-core
        }
        if self.llvm_options:
            tgt["cl-opt"] = list(self.llvm_options)
        return tgt

    def target(self, os: str = "linux"):
        """The :class:`tvm.target.Target` for this profile."""
        import tvm

        return tvm.target.Target(self.target_dict(os))


def host_target_dict() -> dict[str, Any]:
    """LLVM target for the machine we run on (its own CPU name, so e.g. AVX-512 popcount is used)."""
    import psutil
    from tvm.target import codegen

    cores = psutil.cpu_count(logical=False) or 1
    # LLVM's SLP vectorizer emits IR that fails verification for some swar dense kernels
    # on x86 ("Instruction does not dominate all uses", e.g. w1a1 4x17 -> 9): off for the host
    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores,
            "cl-opt": ["-vectorize-slp=false"]}


_RV64GC = ("+64bit", "+m", "+a", "+f", "+d", "+c")
# QEMU 7.2's generic rv64/rv32 CPUs enable Zba/Zbb/Zbc/Zbs (and rv32 enables A/F/D): switch
# off what the profile lacks so QEMU traps on the same instructions as Spike.
_NO_ZB = "zba=false,zbb=false,zbc=false,zbs=false"

#: LLVM options of every RISC-V profile. Without load clustering the machine scheduler no
#: longer pulls the loads of an unrolled register tile together ahead of their multiplies,
#: which spilled accumulators. Measured on Spike (retired instructions, bench/peer_kernels.py,
#: 36 kernels: 34 fewer, none more): 3x3 conv 1x64x28x28 -> 64 int8 rv32imc 79.0M -> 73.8M,
#: swar w8a8 rv64gc_zbb 44.2M -> 40.0M.
RISCV_LLVM_OPTIONS = ("-misched-cluster:bool=false",)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile("host", 0),
        Profile("rv64gc", 64, _RV64GC, "lp64d", "rv64imafdc_zicsr", "rv64gc", f"rv64,{_NO_ZB}",
                mcpu="rocket-rv64", llvm_options=RISCV_LLVM_OPTIONS),
        Profile(
            "rv64gc_zbb", 64, _RV64GC + ("+zbb",), "lp64d", "rv64imafdc_zicsr_zbb",
            "rv64gc_zbb", "rv64,zba=false,zbb=true,zbc=false,zbs=false", mcpu="rocket-rv64",
            llvm_options=RISCV_LLVM_OPTIONS,
        ),
        Profile(
            "rv64gcv", 64, _RV64GC + ("+v", "+zvl128b"), "lp64d", "rv64imafdcv_zicsr",
            "rv64gcv_zvl128b", f"rv64,v=true,vlen=128,vext_spec=v1.0,{_NO_ZB}", vlen=128,
            mcpu="rocket-rv64", llvm_options=RISCV_LLVM_OPTIONS,
        ),
        Profile(
            "rv32imc", 32, ("+m", "+c"), "ilp32", "rv32imc_zicsr", "rv32imc",
            f"rv32,a=false,f=false,d=false,{_NO_ZB}", mcpu="rocket-rv32",
            llvm_options=RISCV_LLVM_OPTIONS,
        ),
    ]
}


#: user-facing target names -> profile names (accepted wherever a target is taken)
TARGET_ALIASES: dict[str, str] = {
    "riscv": "rv64gc_zbb", "riscv64": "rv64gc", "riscv64-zbb": "rv64gc_zbb",
    "riscv64-gc": "rv64gc", "riscv64-v": "rv64gcv", "riscv64-rvv": "rv64gcv",
    "riscv32": "rv32imc", "host": "host", "llvm": "host",
}


def get_profile(name: str | Profile) -> Profile:
    """The profile of ``name``: a profile name (``"rv64gc_zbb"``), an alias from
    :data:`TARGET_ALIASES` (``"riscv"``, ``"riscv64"``, ...) or a :class:`Profile`.

    Raises:
        ValueError: unknown name (the message lists aliases and profiles).
    """
    if isinstance(name, Profile):
        return name
    key = TARGET_ALIASES.get(str(name).lower(), str(name))
    if key not in PROFILES:
        raise ValueError(f"unknown target profile {name!r}; use an alias {sorted(TARGET_ALIASES)} or a "
                         f"profile name {sorted(PROFILES)}")
    return PROFILES[key]
