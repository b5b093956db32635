"""Cross-build a riscv64 Linux TVM runtime and C++ RPC server (``tvm_rpc``) for a dev board.

Two routes, both driven by ``tvm-mpq rpc build-runtime`` (:func:`build_runtime`):

* **wheel route** (default, needs no TVM checkout): compiles the runtime sources the installed
  wheels ship (``tvm/src/runtime``: CPU device, module, tensor, threading, RPC endpoint/session/
  socket, VM; ``tvm_ffi/src``) directly with Debian's ``riscv64-linux-gnu-g++`` through a
  generated Makefile, adding what the wheels lack from :data:`SUPPORT_DIR`
  (``tvm_mpq/rpc/runtime_support``, our own code): ``include/tvm/support/{io,serializer}.h``,
  ``src/support/{ring_buffer,arena,socket,bytes_io,base64,utils}.h`` and the RPC server
  ``rpc_server.cc`` (tracker registration, key handshake, one forked process per session
  serving the runtime's ``rpc.ServerLoop``). Output in ``build_dir``: ``tvm_rpc``,
  ``libtvm_runtime.so``, ``libtvm_ffi.so`` (``tvm_rpc`` finds the libraries next to itself
  through ``RPATH=$ORIGIN``). Not compiled: GPU/Hexagon/disco parts, ``rpc_pipe_impl.cc``
  and ``minrpc`` (local pipe/micro sessions, which need ``support/pipe.h``), libbacktrace.
* **source route** (``--tvm-src PATH``): a TVM source tree of the wheel's version, with its
  ``3rdparty/tvm-ffi`` submodule, configured with CMake for the cross compiler (runtime only,
  ``USE_CPP_RPC=ON``) building ``tvm_runtime`` and TVM's own ``apps/cpp_rpc`` server.

The board then runs ``./tvm_rpc server --tracker=HOST:9190 --key=board-rv64gc`` (docs/rpc.md);
:func:`qemu_user_command` runs the same binary under ``qemu-riscv64`` on an x86 host for
testing (QEMU wall time is not board latency). :func:`wheel_route_missing` lists what the
wheels alone lack (what :data:`SUPPORT_DIR` supplies).
"""

from __future__ import annotations

import filecmp
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

TVM_GIT = "https://github.com/apache/tvm"
DEFAULT_CXX = "riscv64-linux-gnu-g++"
APT_PACKAGES = "g++-riscv64-linux-gnu"  # Debian/Ubuntu package of the cross compiler
SUPPORT_DIR = Path(__file__).resolve().parent / "runtime_support"
# wheel runtime sources not compiled (relative to tvm/src/runtime): GPU/DSP/distributed
# parts, the pipe/minrpc sessions that need support/pipe.h, and the fp16 conversion fallbacks
# that need compiler-rt's builtin_fp16.h (libgcc provides the riscv64 ones), and the VM's
# LLM serving parts (KV caches, attention backends: they include CUDA's nvtx.h)
_SKIP_DIRS = frozenset({"extra", "cuda", "hexagon", "minrpc"})
_SKIP_RUNTIME = frozenset({"rpc/rpc_pipe_impl.cc", "builtin_fp16.cc", "vm/attn_backend.cc",
                           "vm/kv_state.cc", "vm/paged_kv_cache.cc", "vm/rnn_state.cc",
                           "vm/lm_support.cc"})
DEPLOY_FILES = ("tvm_rpc", "libtvm_runtime.so", "libtvm_ffi.so")
_EM_RISCV = 243  # ELF e_machine of RISC-V


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


def default_build_dir(cxx: str = DEFAULT_CXX) -> Path:
    """Stable cache directory of the wheel-route build for this wheel version and toolchain:
    ``$XDG_CACHE_HOME/tvm-mpq/runtime-<version>-<triple>`` (``~/.cache`` by default)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    triple = Path(cxx).name.rsplit("-", 1)[0] or "cross"
    return cache / "tvm-mpq" / f"runtime-{wheel_version()}-{triple}"


def wheel_route_missing() -> list[str]:
    """What building the riscv64 runtime + RPC server from the wheels' shipped sources lacks.

    Scans every ``#include`` of ``tvm/src/runtime`` (non-GPU parts) and reports headers that
    resolve neither next to the including file nor in the wheels' include directories, plus
    the pieces no wheel ships at all (the C++ RPC server app, a runtime CMakeLists).
    :data:`SUPPORT_DIR` supplies the ones the compiled sources need (:func:`support_covers`).
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


def support_covers() -> dict[str, str | None]:
    """Each item of :func:`wheel_route_missing` -> what supplies it in the wheel route (a path
    relative to :data:`SUPPORT_DIR`, or "generated Makefile"), or None where the wheel route
    does without it (the including sources are not compiled: minrpc, the pipe session)."""
    out: dict[str, str | None] = {}
    for item in wheel_route_missing():
        rel = item.split(" ", 1)[0]
        if rel.startswith("CMakeLists"):
            out[item] = "generated Makefile"
            continue
        cand = SUPPORT_DIR / ("rpc_server.cc" if rel.startswith("apps/cpp_rpc") else rel)
        out[item] = str(cand.relative_to(SUPPORT_DIR)) if cand.exists() else None
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


def write_toolchain_file(path: str | os.PathLike[str], cxx: str = DEFAULT_CXX) -> Path:
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
        # GCC's riscv64 sub-word atomics live in libatomic; TVM's CMake does not link it
        # (thread_pool.cc: undefined __atomic_fetch_add_1 with -Wl,--no-undefined). Appended
        # at the end of every link line, after the objects that need it.
        "-DCMAKE_CXX_STANDARD_LIBRARIES=-latomic",
    ]
    build = ["cmake", "--build", str(build_dir), "--target", "tvm_runtime", "tvm_rpc",
             "--parallel", str(jobs)]
    return [configure, build]


def check_cross_compiler(cxx: str = DEFAULT_CXX) -> str:
    """Absolute path of the cross compiler; BuildError naming the apt package if absent."""
    path = shutil.which(cxx)
    if path is None:
        raise BuildError(f"cross compiler {cxx!r} not found on PATH (Debian/Ubuntu: "
                         f"`sudo apt-get install -y {APT_PACKAGES}`; for the qemu-riscv64 test also "
                         "`qemu-user`)")
    return path


def wheel_sources() -> dict[str, list[Path]]:
    """The wheel sources the wheel route compiles: ``{"ffi": [...], "runtime": [...]}``."""
    tvm_dir, ffi_dir = _site_dirs()
    ffi_src = ffi_dir / "src" / "ffi"
    rt_src = tvm_dir / "src" / "runtime"
    if not ffi_src.is_dir() or not rt_src.is_dir():
        raise BuildError(f"the installed wheels ship no runtime sources ({rt_src}, {ffi_src}); "
                         "use --tvm-src")
    ffi = sorted(p for p in [*ffi_src.glob("*.cc"), *(ffi_src / "extra").glob("*.cc")]
                 if not p.name.endswith("_win.cc"))
    runtime = sorted(p for p in rt_src.rglob("*.cc")
                     if not _SKIP_DIRS.intersection(p.relative_to(rt_src).parts[:-1])
                     and p.relative_to(rt_src).as_posix() not in _SKIP_RUNTIME)
    return {"ffi": ffi, "runtime": runtime}


def _sync_tree(src: Path, dst: Path) -> None:
    """Copy src into dst, leaving files with identical content untouched (keeps make's mtimes)."""
    for f in src.rglob("*"):
        if f.is_dir() or "__pycache__" in f.parts:
            continue
        out = dst / f.relative_to(src)
        if out.exists() and filecmp.cmp(f, out, shallow=False):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out)


def stage_tree(build_dir: str | os.PathLike[str]) -> Path:
    """``build_dir/tree``: the wheel's ``src/runtime`` next to our ``src/support`` (so the
    runtime's ``#include "../../support/x.h"`` resolve), plus our ``include/tvm/support``."""
    tvm_dir, _ = _site_dirs()
    tree = Path(build_dir) / "tree"
    _sync_tree(tvm_dir / "src" / "runtime", tree / "src" / "runtime")
    _sync_tree(SUPPORT_DIR / "src" / "support", tree / "src" / "support")
    _sync_tree(SUPPORT_DIR / "include", tree / "include")
    return tree


def compile_flags(tree: str | os.PathLike[str]) -> list[str]:
    """C++ flags of the wheel route (include order: our support headers, then the wheels')."""
    tvm_dir, ffi_dir = _site_dirs()
    incs = [Path(tree) / "include", Path(tree) / "src", tvm_dir / "include", ffi_dir / "include",
            ffi_dir / "3rdparty" / "dlpack" / "include"]
    return ["-std=c++17", "-O2", "-fPIC", "-pthread", "-DNDEBUG", "-DTVM_FFI_USE_LIBBACKTRACE=0",
            "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=0", "-DTVM_FFI_CMAKE_LITTLE_ENDIAN=1",
            "-DTVM_FFI_EXPORTS", "-DTVM_RUNTIME_EXPORTS", *(f"-I{d}" for d in incs)]


def _mk(s: str | os.PathLike[str]) -> str:
    """Quote a path for a Makefile command line."""
    return shlex.quote(str(s)).replace("$", "$$")


def write_makefile(build_dir: str | os.PathLike[str], cxx: str = DEFAULT_CXX) -> Path:
    """Generate ``build_dir/Makefile`` of the wheel route (targets :data:`DEPLOY_FILES`)."""
    bdir = Path(build_dir).resolve()
    tree = stage_tree(bdir)
    srcs = wheel_sources()
    tvm_dir, ffi_dir = _site_dirs()
    rt_root = tvm_dir / "src" / "runtime"
    flags = " ".join(_mk(f) for f in compile_flags(tree))
    lines = [f"# generated by tvm_mpq.rpc.build_runtime (wheel route, TVM {wheel_version()})",
             f"CXX := {_mk(cxx)}", f"CXXFLAGS := {flags}", ""]
    objs: dict[str, list[str]] = {"ffi": [], "runtime": [], "server": []}
    rules: list[str] = []

    def add(group: str, src: Path, obj: str) -> None:
        objs[group].append(obj)
        rules.append(f"{obj}: {_mk(src)} Makefile\n\t@mkdir -p $(@D)\n"
                     "\t$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@")

    for f in srcs["ffi"]:
        add("ffi", f, f"obj/ffi/{f.relative_to(ffi_dir / 'src').with_suffix('.o')}")
    for f in srcs["runtime"]:
        rel = f.relative_to(rt_root)
        add("runtime", tree / "src" / "runtime" / rel, f"obj/runtime/{rel.with_suffix('.o')}")
    add("server", SUPPORT_DIR / "rpc_server.cc", "obj/server/rpc_server.o")
    rpath = "-Wl,-rpath,'$$ORIGIN'"
    lines += [
        f"all: {' '.join(DEPLOY_FILES)}", "",
        f"FFI_OBJS := {' '.join(objs['ffi'])}",
        f"RT_OBJS := {' '.join(objs['runtime'])}", "",
        "libtvm_ffi.so: $(FFI_OBJS) Makefile",
        "\t$(CXX) -shared -pthread -Wl,--no-undefined -o $@ $(FFI_OBJS) -ldl", "",
        "libtvm_runtime.so: $(RT_OBJS) libtvm_ffi.so Makefile",
        f"\t$(CXX) -shared -pthread -Wl,--no-undefined -o $@ $(RT_OBJS) -L. -ltvm_ffi {rpath} -ldl", "",
        "tvm_rpc: obj/server/rpc_server.o libtvm_runtime.so libtvm_ffi.so Makefile",
        f"\t$(CXX) -pthread -o $@ $< -L. -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi {rpath} -ldl", "",
        *rules, "",
        "-include $(FFI_OBJS:.o=.d) $(RT_OBJS:.o=.d) obj/server/rpc_server.d", "",
        ".PHONY: all",
    ]
    mf = bdir / "Makefile"
    text = "\n".join(lines) + "\n"
    if not mf.exists() or mf.read_text() != text:
        mf.write_text(text)
    return mf


def elf_machine(path: str | os.PathLike[str]) -> int | None:
    """ELF ``e_machine`` of a file (243 = RISC-V, 62 = x86-64), None if not ELF."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def build_from_wheel(build_dir: str | os.PathLike[str] | None = None, jobs: int = 2,
                     cxx: str = DEFAULT_CXX, verbose: bool = False) -> Path:
    """Wheel route: cross-build :data:`DEPLOY_FILES` into ``build_dir`` (default
    :func:`default_build_dir`, reused incrementally); returns ``tvm_rpc``'s path."""
    check_cross_compiler(cxx)
    if shutil.which("make") is None:
        raise BuildError("make not found (Debian: `sudo apt-get install -y make`)")
    bdir = Path(build_dir).expanduser().resolve() if build_dir else default_build_dir(cxx)
    bdir.mkdir(parents=True, exist_ok=True)
    write_makefile(bdir, cxx)
    cmd = ["make", "-C", str(bdir), f"-j{max(1, int(jobs))}", "all"]
    r = subprocess.run(cmd, capture_output=not verbose, text=True)
    if r.returncode != 0:
        out = (r.stdout or "") + (r.stderr or "")
        errs = [ln for ln in out.splitlines() if "error" in ln.lower()][:15]
        tail = "\n".join(out.splitlines()[-20:])
        raise BuildError(f"`{' '.join(cmd)}` failed ({r.returncode}); first errors:\n"
                         + "\n".join(errs) + f"\n--- output tail ---\n{tail}")
    for name in DEPLOY_FILES:
        f = bdir / name
        if not f.is_file() or elf_machine(f) != _EM_RISCV:
            raise BuildError(f"the build finished but {f} is missing or not a RISC-V ELF")
    return bdir / "tvm_rpc"


def cmake_required(root: str | os.PathLike[str]) -> tuple[int, ...]:
    """Highest ``cmake_minimum_required`` of the tree's top level and its tvm-ffi submodule."""
    need: tuple[int, ...] = (0,)
    for rel in ("CMakeLists.txt", "3rdparty/tvm-ffi/CMakeLists.txt"):
        p = Path(root) / rel
        if p.exists():
            m = re.search(r"cmake_minimum_required\s*\(\s*VERSION\s+([0-9.]+)", p.read_text(errors="replace"))
            if m:
                need = max(need, tuple(int(x) for x in m.group(1).split(".") if x))
    return need


def check_cmake(root: str | os.PathLike[str]) -> None:
    """BuildError if cmake is absent or older than the source tree requires."""
    if shutil.which("cmake") is None:
        raise BuildError("cmake not found (Debian: `sudo apt-get install -y cmake`)")
    out = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version\s+([0-9]+)\.([0-9]+)(?:\.([0-9]+))?", out)
    have = tuple(int(x) for x in m.groups() if x is not None) if m else (0,)
    need = cmake_required(root)
    if have < need:
        want = ".".join(map(str, need))
        raise BuildError(f"cmake {'.'.join(map(str, have))} is older than the {want} that {root} requires "
                         f"(3rdparty/tvm-ffi); install a newer one, e.g. `pip install 'cmake>={want}'` "
                         "into a virtualenv put first on PATH, or use the wheel route (no --tvm-src)")


def build_from_source(tvm_src: str | os.PathLike[str], build_dir: str | os.PathLike[str],
                      jobs: int = 2, cxx: str = DEFAULT_CXX, verbose: bool = False) -> Path:
    """Source route: CMake build of ``tvm_runtime`` + TVM's ``tvm_rpc`` from ``tvm_src``."""
    root = check_tvm_src(tvm_src)
    check_cross_compiler(cxx)
    check_cmake(root)
    bdir = Path(build_dir).expanduser().resolve()
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


def build_runtime(tvm_src: str | None = None, build_dir: str | None = None, jobs: int = 2,
                  cxx: str = DEFAULT_CXX, verbose: bool = False) -> Path:
    """Cross-build ``tvm_rpc`` + ``libtvm_runtime.so`` for riscv64 Linux; returns ``tvm_rpc``'s path.

    Without ``tvm_src`` the wheel route (:func:`build_from_wheel`, ``build_dir`` defaulting to
    :func:`default_build_dir`); with it the CMake source route (:func:`build_from_source`,
    ``build_dir`` defaulting to ``build/riscv64-runtime``).

    Raises:
        BuildError: invalid ``tvm_src``, missing cross compiler/make/cmake (naming the apt
            package), or a failed build step (with its first errors and output tail).
    """
    if tvm_src is None:
        return build_from_wheel(build_dir, jobs=jobs, cxx=cxx, verbose=verbose)
    return build_from_source(tvm_src, build_dir or "build/riscv64-runtime", jobs=jobs, cxx=cxx,
                             verbose=verbose)


def qemu_user_command(binary: str | os.PathLike[str], tracker: str, key: str, port: int = 9090,
                      extra: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """Command and environment to run a cross-built ``tvm_rpc`` under ``qemu-riscv64``
    (for testing the board path on an x86 host; QEMU wall time is not board timing).
    ``extra``: more ``tvm_rpc server`` options, e.g. ``["--work-dir=/tmp/x"]``."""
    b = Path(binary).resolve()
    env = {**os.environ, "QEMU_LD_PREFIX": "/usr/riscv64-linux-gnu",
           "LD_LIBRARY_PATH": str(b.parent)}
    return (["qemu-riscv64", str(b), "server", f"--tracker={tracker}", f"--key={key}",
             f"--port={port}", *extra], env)
