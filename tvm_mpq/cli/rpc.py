"""``tvm-mpq rpc ...`` subcommands: tracker, serve, status, build-runtime.

``tvm_mpq.cli.app`` calls :func:`add_rpc_parser` with its subparsers; each subcommand sets
``func`` (``args -> exit code``). Also runnable alone:
``python -m tvm_mpq.cli.rpc status``. Every address defaults to loopback.
"""

from __future__ import annotations

import argparse
import sys

from tvm_mpq.rpc.tracker import DEFAULT_HOST, DEFAULT_PORT, TrackerUnreachableError, parse_addr

_TRACKER_HELP = f"tracker address HOST:PORT (default {DEFAULT_HOST}:{DEFAULT_PORT})"


def _cmd_tracker(a: argparse.Namespace) -> int:
    from tvm_mpq.rpc.tracker import run_tracker_forever

    run_tracker_forever(a.host, a.port, a.port_end)
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from tvm_mpq.rpc.server import default_key, serve

    host, port = parse_addr(a.tracker)
    try:
        return serve(a.key or default_key(a.profile, a.backend), a.profile, a.n, backend=a.backend,
                     tracker=(host, port), host=a.host, port=a.port, port_end=a.port_end,
                     impl=a.impl, silent=not a.verbose, log_dir=a.log_dir)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _cmd_status(a: argparse.Namespace) -> int:
    from tvm_mpq.rpc.tracker import tracker_status

    host, port = parse_addr(a.tracker)
    try:
        st = tracker_status(host, port)
    except TrackerUnreachableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if a.json:
        import json
        from dataclasses import asdict

        print(json.dumps({"tracker": f"{host}:{port}",
                          "keys": {k: {**asdict(v), "total": v.total} for k, v in st.keys.items()}},
                         indent=2))
    else:
        print(st.table())
    return 0


def _cmd_build_runtime(a: argparse.Namespace) -> int:
    from tvm_mpq.rpc.build_runtime import BuildError, build_runtime

    try:
        out = build_runtime(tvm_src=a.tvm_src, build_dir=a.build_dir, jobs=a.jobs,
                            cxx=a.cxx, verbose=a.verbose)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    libs = sorted(out.parent.glob("lib*.so")) + sorted((out.parent / "lib").glob("lib*.so"))
    files = " ".join(map(str, libs)) or "(libraries in the build dir)"
    print(f"built {out}\nruntime libraries: {files}\n"
          f"on the board: copy these into one directory and run\n"
          f"  LD_LIBRARY_PATH=. ./tvm_rpc server --tracker=HOST:9190 --key=board-rv64gc   (docs/rpc.md)")
    return 0


def add_rpc_parser(subparsers) -> None:
    """Register ``rpc`` and its subcommands on ``subparsers`` (an argparse subparsers action)."""
    from tvm_mpq.measure.runner import SIM_BACKENDS
    from tvm_mpq.rpc.server import DEFAULT_IMPL, DEFAULT_SERVER_PORT

    rpc = subparsers.add_parser("rpc", help="RPC tracker, measurement servers, boards",
                                description="Distributed measurement over TVM RPC (docs/rpc.md).")
    sub = rpc.add_subparsers(dest="rpc_command", metavar="{tracker,serve,status,build-runtime}")
    sub.required = True

    p = sub.add_parser("tracker", help="run a TVM RPC tracker in the foreground")
    p.add_argument("--host", default=DEFAULT_HOST, help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--port-end", type=int, default=None,
                   help="search free ports up to this one (default: exactly --port)")
    p.set_defaults(func=_cmd_tracker)

    p = sub.add_parser("serve", help="run N simulator measurement servers under one key")
    p.add_argument("--profile", required=True, help="target profile, e.g. rv64gc_zbb")
    p.add_argument("--key", help="tracker key (default <backend>-<profile>, e.g. spike-rv64gc_zbb)")
    p.add_argument("--backend", default="spike", choices=SIM_BACKENDS)
    p.add_argument("-n", type=int, default=1, help="server processes (parallel measurements)")
    p.add_argument("--tracker", default=None, help=_TRACKER_HELP)
    p.add_argument("--host", default=DEFAULT_HOST, help="address the servers bind to")
    p.add_argument("--port", type=int, default=DEFAULT_SERVER_PORT)
    p.add_argument("--port-end", type=int, default=None,
                   help="search free ports up to this one (default --port + 100)")
    p.add_argument("--impl", default=DEFAULT_IMPL, help=argparse.SUPPRESS)
    p.add_argument("--log-dir", help="write each server's log to DIR/<key>-<i>.log")
    p.add_argument("-v", "--verbose", action="store_true", help="log every session")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("status", help="servers per key at a tracker")
    p.add_argument("--tracker", default=None, help=_TRACKER_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "build-runtime", help="cross-build a riscv64 Linux TVM runtime + RPC server (tvm_rpc) for a board",
        description="Cross-build libtvm_ffi.so, libtvm_runtime.so and the tvm_rpc server for riscv64 "
                    "Linux with Debian's riscv64-linux-gnu-g++ (apt-get install g++-riscv64-linux-gnu). "
                    "Default: from the installed wheels' runtime sources plus tvm-mpq's own replacement "
                    "headers and server (no TVM checkout needed), cached in "
                    "~/.cache/tvm-mpq/runtime-<version>-riscv64-linux-gnu. With --tvm-src: CMake build "
                    "of a TVM source tree of the wheel's version (needs cmake >= 3.26). Copy the three "
                    "files to the board and run `./tvm_rpc server --tracker=HOST:9190 --key=KEY` "
                    "(docs/rpc.md).")
    p.add_argument("--tvm-src", help="build from this TVM source tree (same version as the installed "
                                     "wheel, with 3rdparty/tvm-ffi) with CMake instead of the wheel sources")
    p.add_argument("--build-dir", default=None,
                   help="output directory (default: the cache dir above; build/riscv64-runtime with "
                        "--tvm-src)")
    p.add_argument("--cxx", default="riscv64-linux-gnu-g++", help="cross C++ compiler")
    p.add_argument("-j", "--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    p.set_defaults(func=_cmd_build_runtime)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m tvm_mpq.cli.rpc {tracker,serve,status,build-runtime}``."""
    ap = argparse.ArgumentParser(prog="tvm-mpq")
    add_rpc_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["rpc", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
