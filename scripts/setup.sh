#!/usr/bin/env bash
# One-command, idempotent setup on a fresh Debian machine:
#   1. Debian packages: RISC-V cross toolchains, QEMU, dtc (for Spike), Fashion-MNIST.
#   2. A virtual environment at .venv with tvm-mpq installed in editable mode.
# Safe to re-run; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  g++-riscv64-linux-gnu        # riscv64 Linux cross compiler (Relax VM .so, static executables)
  gcc-riscv64-unknown-elf      # bare-metal compiler for the Spike/QEMU harness
  picolibc-riscv64-unknown-elf # libc for the bare-metal harness
  qemu-user                    # qemu-riscv64: runs riscv64 Linux binaries
  qemu-system-misc             # qemu-system-riscv64: bare metal with -icount
  device-tree-compiler         # dtc: Spike forks it at start-up
  dataset-fashion-mnist        # offline Fashion-MNIST (60k/10k)
  make                         # runs the Makefile of `tvm-mpq rpc build-runtime` (board runtime)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "[setup] Debian packages present"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build on this disk; anything else may pull CUDA.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
# Optional, for the tests and the benchmark on torchvision's architectures: its wheel is a
# CUDA build, so it goes without dependencies into a folder off the default path
# (tvm_mpq.zoo.torchvision_zoo explains and imports it); the tests skip when it is absent.
if [ ! -d .venv/optional/torchvision ]; then
  .venv/bin/python -m pip install -q --no-deps --target .venv/optional torchvision==0.28.0 \
    || echo "[setup] torchvision not installed: its architecture tests will be skipped"
fi
echo "[setup] done: activate with  . .venv/bin/activate"
