"""Cross-build a riscv64 Linux TVM runtime and C++ RPC server (``tvm_rpc``) for a dev board.

Route implemented: a TVM source tree (``--tvm-src``, same version as the installed wheel,
with its ``3rdparty/tvm-ffi`` submodule) configured with CMake for Debian's
``riscv64-linux-gnu-g++`` (runtime only: no LLVM, ``USE_CPP_RPC=ON``), building the targets
``tvm_runtime`` and ``tvm_rpc``. The board then runs
``LD_LIBRARY_PATH=. ./tvm_rpc server --tracker=HOST:PORT --key=board-rv64gc`` (see docs/rpc.md).

The wheel ships ``tvm/src/runtime`` and ``tvm_ffi/src`` but not everything the runtime
includes, nor the C++ RPC server application: :func:`wheel_route_missing` lists what a build
from the wheel alone would lack, and the error raised without ``--tvm-src`` prints it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

TVM_GIT = "https://github.com/apache/tvm"


class BuildError(RuntimeError):
    """The runtime cannot be built (missing source tree, tools, or a failed build step)."""


def wheel_version() -> str:
    """Version of the installed ``apache-tvm`` wheel, e.g. ``"0.27.0.post1"``."""
    from tvm import _version

    return str(_version.__version__)


def _site_dirs() -> tuple[Path, Path]:
    import tvm
    import tvm_ffi

    return Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent


def wheel_route_missing() -> list[str]:
    """What building the riscv64 runtime + RPC server from the wheels' shipped sources lacks.

    Scans every ``#include`` of ``tvm/src/runtime`` (non-GPU parts) and reports headers that
    resolve neither next to the including file nor in the wheels' include directories, plus
    the pieces no wheel ships at all (the C++ RPC server app, a runtime CMakeLists).
    """
    tvm_dir, ffi_dir = _site_dirs()
    src = tvm_dir / "src" / "runtime"
    inc_dirs = [tvm_dir / "include", ffi_dir / "include"]
    missing: set[str] = set()
    if not src.is_dir():
        return [f"{src} (the wheel ships no runtime sources)"]
    for f in sorted(src.rglob("*")):
        if f.suffix not in (".cc", ".h", ".cpp") or any(p in f.parts for p in ("cuda", "disco", "extra")):
            continue
        for inc in re.findall(r'#include\s+[<"]([^>"]+)[>"]', f.read_text(errors="replace")):
            if not inc.startswith(("tvm/", "dlpack/", ".", "support/")):
                continue  # system / standard headers
            if inc.startswith("."):
                target = (f.parent / inc).resolve()
                rel = os.path.relpath(target, tvm_dir)
                if not target.exists() and not rel.startswith("src/backend"):  # GPU/DSP only
                    missing.add(rel)
            elif not any((d / inc).exists() for d in inc_dirs):
                missing.add(f"include/{inc}")
    out = sorted(missing)
    out.append("apps/cpp_rpc (the C++ RPC server: tracker registration, session fork) - not shipped")
    if not (tvm_dir / "CMakeLists.txt").exists():
        out.append("CMakeLists.txt for the runtime (only tvm_ffi ships one) - not shipped")
    return out


def check_tvm_src(tvm_src: str | os.PathLike[str]) -> Path:
    """Validate a TVM source tree for this build; raise BuildError saying what is wrong."""
    root = Path(tvm_src).expanduser().resolve()
    need = {
        "CMakeLists.txt": "top-level CMake project",
        "src/runtime/rpc/rpc_endpoint.cc": "runtime RPC sources",
        "apps/cpp_rpc/main.cc": "C++ RPC server app",
        "3rdparty/tvm-ffi/CMakeLists.txt": "tvm-ffi submodule (clone with --recursive or run "
                                           "`git submodule update --init --recursive`)",
    }
    lacking = [f"{rel} ({why})" for rel, why in need.items() if not (root / rel).exists()]
    if not root.is_dir():
        raise BuildError(f"--tvm-src {root} does not exist; get the matching source with "
                         f"`git clone --recursive --branch v{_base_version()} {TVM_GIT}`")
    if lacking:
        raise BuildError(f"--tvm-src {root} is not a usable TVM source tree; missing: "
                         + "; ".join(lacking))
    ver = _source_version(root)
    if ver is not None and not wheel_version().startswith(ver.split(".dev")[0]):
        raise BuildError(f"--tvm-src {root} is TVM {ver} but the installed wheel is "
                         f"{wheel_version()}: the RPC protocol and module format must match; "
                         f"check out v{_base_version()}")
    return root


def _base_version() -> str:
    m = re.match(r"\d+\.\d+\.\d+", wheel_version())
    return m.group(0) if m else wheel_version()


def _source_version(root: Path) -> str | None:
    for rel in ("python/tvm/libinfo.py", "version.py", "include/tvm/runtime/base.h"):
        p = root / rel
        if p.exists():
            m = re.search(r'(?:__version__|TVM_VERSION)\s*=?\s*"([0-9][^"]*)"', p.read_text(errors="replace"))
            if m:
                return m.group(1)
    return None


def write_toolchain_file(path: str | os.PathLike[str], cxx: str = "riscv64-linux-gnu-g++") -> Path:
    """CMake toolchain file for Debian's riscv64 Linux cross compiler."""
    cc = cxx[:-3] + "gcc" if cxx.endswith("g++") else cxx
    prefix = cxx.rsplit("-", 1)[0]  # riscv64-linux-gnu
    text = f"""# generated by tvm_mpq.rpc.build_runtime
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR riscv64)
set(CMAKE_C_COMPILER {cc})
set(CMAKE_CXX_COMPILER {cxx})
set(CMAKE_FIND_ROOT_PATH /usr/{prefix})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
"""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def cmake_commands(tvm_src: str | os.PathLike[str], build_dir: str | os.PathLike[str],
                   toolchain: str | os.PathLike[str], jobs: int = 2) -> list[list[str]]:
    """The configure and build commands (runtime only, C++ RPC server on, no LLVM/GPU)."""
    configure = [
        "cmake", "-S", str(tvm_src), "-B", str(build_dir), f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
        "-DCMAKE_BUILD_TYPE=Release", "-DUSE_LLVM=OFF", "-DUSE_RPC=ON", "-DUSE_CPP_RPC=ON",
        "-DUSE_LIBBACKTRACE=OFF", "-DUSE_CUDA=OFF", "-DUSE_OPENCL=OFF", "-DUSE_VULKAN=OFF",
        "-DUSE_GTEST=OFF", "-DBUILD_STATIC_RUNTIME=OFF",
    ]
    build = ["cmake", "--build", str(build_dir), "--target", "tvm_runtime", "tvm_rpc",
             "--parallel", str(jobs)]
    return [configure, build]


def build_runtime(tvm_src: str | None = None, build_dir: str = "build/riscv64-runtime",
                  jobs: int = 2, cxx: str = "riscv64-linux-gnu-g++", verbose: bool = False) -> Path:
    """Cross-build ``tvm_rpc`` + ``libtvm_runtime.so`` for riscv64 Linux; returns ``tvm_rpc``'s path.

    Raises:
        BuildError: no/invalid ``tvm_src`` (the message lists what the wheel route lacks),
            missing cmake or cross compiler, or a failed build step (with its output tail).
    """
    if tvm_src is None:
        lacking = "\n  ".join(wheel_route_missing())
        raise BuildError(
            "a TVM source tree is needed: pass --tvm-src PATH (get it with `git clone --recursive "
            f"--branch v{_base_version()} {TVM_GIT}`).\nThe installed wheels ship only part of the "
            f"runtime sources; building from them alone lacks:\n  {lacking}")
    root = check_tvm_src(tvm_src)
    for tool in ("cmake", cxx):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found (Debian: apt-get install cmake g++-riscv64-linux-gnu)")
    bdir = Path(build_dir).resolve()
    toolchain = write_toolchain_file(bdir / "riscv64-linux-gnu.cmake", cxx)
    for cmd in cmake_commands(root, bdir, toolchain, jobs):
        r = subprocess.run(cmd, capture_output=not verbose, text=True)
        if r.returncode != 0:
            tail = "\n".join(((r.stdout or "") + (r.stderr or "")).splitlines()[-30:])
            raise BuildError(f"`{' '.join(cmd)}` failed ({r.returncode}):\n{tail}")
    found = [p for p in bdir.rglob("tvm_rpc") if p.is_file() and os.access(p, os.X_OK)]
    if not found:
        raise BuildError(f"the build finished but no tvm_rpc binary is under {bdir}")
    return found[0]


def qemu_user_command(binary: str | os.PathLike[str], tracker: str, key: str,
                      port: int = 9090) -> tuple[list[str], dict[str, str]]:
    """Command and environment to run a cross-built ``tvm_rpc`` under ``qemu-riscv64``
    (for testing the board path on an x86 host; QEMU wall time is not board timing)."""
    b = Path(binary).resolve()
    env = {**os.environ, "QEMU_LD_PREFIX": "/usr/riscv64-linux-gnu",
           "LD_LIBRARY_PATH": str(b.parent)}
    return (["qemu-riscv64", str(b), "server", f"--tracker={tracker}", f"--key={key}",
             f"--port={port}"], env)
