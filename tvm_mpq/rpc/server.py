"""Simulator-host measurement server: a standard TVM RPC server with our measurement function.

Each server process is TVM's own RPC server (``tvm.rpc.server.PopenRPCServerState``, the code
behind ``python -m tvm.exec.rpc_server``), run in the foreground of a process that first imports
``tvm_mpq`` and registers two global functions:

* ``tvm_mpq.measure_json(request_json: str) -> str``: one measurement request (JSON) -> one
  measurement record (JSON), by default :func:`tvm_mpq.measure.campaign.measure_request_json`;
* ``tvm_mpq.server_info() -> str``: JSON with key, profile, backend, pid, host name.

TVM's server forks one child per client session, so functions registered before serving are
visible in every session (that is how ``rpc.Server(server_init_callback=...)`` works too). A
client reaches them with ``session.get_function("tvm_mpq.measure_json")``.

One server serves one session at a time; ``-n N`` starts N servers under one key, each its own
process group so that killing one takes its simulator children with it.

What a client can do (docs/rpc.md): a TVM RPC server runs the native code a client uploads, so
it belongs on a trusted network (it binds 127.0.0.1 unless ``--host`` says otherwise). Its file
operations (upload, download, remove, load_module) are confined to the session's work
directory here (:func:`confine_path`): absolute paths and ``..`` that leave it are refused.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tvm_mpq.measure.database import failed_record_dict
from tvm_mpq.measure.runner import SIM_BACKENDS
from tvm_mpq.rpc.tracker import DEFAULT_HOST, DEFAULT_PORT, parse_addr

MEASURE_FUNC = "tvm_mpq.measure_json"
INFO_FUNC = "tvm_mpq.server_info"
DEFAULT_IMPL = "tvm_mpq.measure.campaign:measure_request_json"
SELFTEST_IMPL = "tvm_mpq.rpc.server:selftest_measure"
DEFAULT_SERVER_PORT = 9090


def _port_end(port: int, port_end: int | None) -> int:
    """End of the port search: the given one, or 100 ports above ``port`` when it is not above."""
    return port_end if port_end is not None and port_end > port else port + 100


def default_key(profile: str, backend: str = "spike") -> str:
    """Tracker key of a simulator host: ``"<backend>-<profile>"``, e.g. ``"spike-rv64gc_zbb"``."""
    return f"{backend}-{profile}"


def selftest_measure(request_json: str) -> str:
    """Plumbing self-test (``--impl selftest``): sleeps ``request["sleep_s"]`` and echoes.

    Its records have ``status: "selftest"`` and no counts: they test the RPC path (fan-out,
    retries, lost servers), never a kernel.
    """
    req = json.loads(request_json)
    time.sleep(float(req.get("sleep_s", 0.0)))
    if req.get("raise"):
        raise RuntimeError(str(req["raise"]))
    return json.dumps({
        "status": "selftest", "instructions": None, "cycles": None,
        "message": "selftest echo (no measurement)", "pid": os.getpid(), "echo": req,
    })


def _resolve_impl(spec: str) -> Callable[[str], str]:
    if spec == "selftest":
        spec = SELFTEST_IMPL
    mod_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--impl {spec!r}: expected MODULE:FUNCTION")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as err:
        raise RuntimeError(f"cannot import the measurement function {spec}: {err}") from err
    return getattr(mod, attr)


def make_measure_func(impl: Callable[[str], str], profile: str, backend: str) -> Callable[[str], str]:
    """Wrap ``impl`` for remote calls: default profile/backend filled in, mismatches refused,
    and any exception turned into a ``run_error`` record (a failure is never a number)."""

    def measure_json(request_json: str) -> str:
        try:
            req = json.loads(request_json)
        except ValueError as err:
            return json.dumps(failed_record_dict({}, "run_error", f"bad request JSON: {err}"))
        for name, mine in (("profile", profile), ("backend", backend)):
            theirs = req.setdefault(name, mine)
            if mine and theirs != mine:
                why = f"this server measures {name} {mine!r}, the request asks {theirs!r}"
                return json.dumps(failed_record_dict(req, "run_error", why))
        try:
            return impl(json.dumps(req))
        except Exception as err:  # noqa: BLE001 -- reported in the record, the server keeps serving
            why = f"{type(err).__name__} on {socket.gethostname()}: {err}"
            return json.dumps(failed_record_dict(req, "run_error", why))

    return measure_json


def confine_path(root: str, path: str) -> str:
    """``path`` of a client's file operation, resolved inside the work directory ``root``.

    Raises:
        ValueError: an absolute path, or one that leaves ``root`` (``..``, symlinks).
    """
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, path))
    if os.path.isabs(path) or os.path.commonpath([base, full]) != base:
        raise ValueError(f"path {path!r} is outside this server's work directory")
    return full


def _confined_env(orig_env: Callable[..., object]) -> Callable[..., object]:
    """TVM's session environment with its file operations confined (:func:`confine_path`);
    linking uploaded objects on the server is not offered."""

    def env(load_library, work_path=None):
        import tvm_ffi
        from tvm.runtime.module import load_module

        temp = orig_env(load_library, work_path)  # (the closures keep it, and its directory)

        def refuse(_name):
            raise ValueError("download_linked_module is not offered by this server")

        tvm_ffi.register_global_func("tvm.rpc.server.workpath",
                                     lambda p: confine_path(temp.temp_dir, p), override=True)
        tvm_ffi.register_global_func("tvm.rpc.server.load_module",
                                     lambda p: load_module(confine_path(temp.temp_dir, p)),
                                     override=True)
        tvm_ffi.register_global_func("tvm.rpc.server.download_linked_module", refuse,
                                     override=True)
        return temp

    return env


def _die_with_parent() -> None:
    # A session child must not outlive its server: a killed server then really loses the
    # measurement (and the client sees the connection drop) instead of leaving an orphan.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def serve_one(key: str, profile: str, backend: str = "spike",
              tracker: str | tuple[str, int] | None = None, host: str = DEFAULT_HOST,
              port: int = DEFAULT_SERVER_PORT, port_end: int | None = None,
              impl: str = DEFAULT_IMPL, custom_addr: str | None = None, silent: bool = False) -> None:
    """Run one measurement server in the foreground until SIGTERM/SIGINT.

    Prints ``RPC server <key> on <host>:<port> pid <pid>`` once bound (the supervisor waits for it).
    """
    import tvm_ffi
    from tvm.rpc import server as tvm_server

    from tvm_mpq.targets import get_profile

    get_profile(profile)  # fail early on a typo
    func = make_measure_func(_resolve_impl(impl), profile, backend)
    info = json.dumps({"key": key, "profile": profile, "backend": backend, "impl": impl,
                       "pid": os.getpid(), "host": socket.gethostname()})
    tvm_ffi.register_global_func(MEASURE_FUNC, func, override=True)
    tvm_ffi.register_global_func(INFO_FUNC, lambda: info, override=True)

    orig_loop = tvm_server._serve_loop

    def _serve_loop(sock, load_library, work_path):
        _die_with_parent()
        orig_loop(sock, load_library, work_path)

    tvm_server._serve_loop = _serve_loop  # looked up at fork time by tvm.rpc.server._serving
    if not getattr(tvm_server._server_env, "_confined", False):  # (per session, in the child)
        tvm_server._server_env = _confined_env(tvm_server._server_env)
        tvm_server._server_env._confined = True
    if silent:
        tvm_server.logger.setLevel(logging.WARNING)
    tracker_addr = parse_addr(tracker, DEFAULT_PORT) if tracker is not None else None
    state = tvm_server.PopenRPCServerState(
        host, port, _port_end(port, port_end), False, tracker_addr, key, None, custom_addr, silent)
    print(f"RPC server {key} on {host}:{state.port} pid {os.getpid()}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and state.thread.is_alive():
        stop.wait(1.0)
    # the listen thread blocks in accept() forever: leave without joining it
    logging.shutdown()
    os._exit(0 if stop.is_set() else 1)


@dataclass
class ServerGroup:
    """N server processes for one key, started by :func:`start_servers`."""

    key: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    _logs: list = field(default_factory=list, repr=False)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill server ``i`` with its session child and simulators (its process group)."""
        p = self.procs[i]
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def stop(self) -> None:
        """Stop all servers (SIGTERM, then SIGKILL after 5 s)."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for i, p in enumerate(self.procs):
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill(i)
        # the session children die with their servers; sweep the groups anyway
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for f in self._logs:
            if f is not None:
                f.close()

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_servers(key: str, profile: str, n: int = 1, backend: str = "spike",
                  tracker: str | tuple[str, int] | None = None, host: str = DEFAULT_HOST,
                  port: int = DEFAULT_SERVER_PORT, port_end: int | None = None,
                  impl: str = DEFAULT_IMPL, silent: bool = True, startup_timeout: float = 120,
                  log_dir: str | None = None) -> ServerGroup:
    """Start ``n`` server processes (``python -m tvm_mpq.rpc.server``) and wait until bound.

    Each is a process-group leader. Registration with the tracker follows within a second of
    binding; use :func:`wait_for_servers` to wait for it. Raises RuntimeError (with the server's
    output) if one exits during start-up.
    """
    group = ServerGroup(key)
    cmd_base = [sys.executable, "-m", "tvm_mpq.rpc.server", "--key", key, "--profile", profile,
                "--backend", backend, "--host", host, "--impl", impl]
    if tracker is not None:
        th, tp = parse_addr(tracker)
        cmd_base += ["--tracker", f"{th}:{tp}"]
    if silent:
        cmd_base.append("--silent")
    try:
        # all start at once (importing TVM takes seconds); concurrent port searches are safe:
        # bind() is atomic and a loser moves on to the next port
        for i in range(n):
            cmd = cmd_base + ["--port", str(port), "--port-end", str(_port_end(port, port_end))]
            out = open(os.path.join(log_dir, f"{key}-{i}.log"), "w+") if log_dir else None  # noqa: SIM115
            group.procs.append(subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=out or subprocess.STDOUT, text=True,
                start_new_session=True))
            group._logs.append(out)
        deadline = time.monotonic() + startup_timeout
        for p, out in zip(group.procs, group._logs, strict=True):
            try:
                group.ports.append(_wait_bound(p, max(deadline - time.monotonic(), 1.0)))
            except RuntimeError as err:
                raise RuntimeError(f"{err}{f' (log: {out.name})' if out else ''}") from None
            # drain stdout so a chatty server never blocks on a full pipe
            threading.Thread(target=_drain, args=(p.stdout, out), daemon=True).start()
    except BaseException:
        group.stop()
        raise
    return group


def _wait_bound(p: subprocess.Popen, timeout: float) -> int:
    lines: list[str] = []
    result: list[int] = []

    def read() -> None:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("RPC server ") and " on " in line:
                result.append(int(line.split(" on ", 1)[1].split()[0].rsplit(":", 1)[1]))
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if result:
        return result[0]
    tail = "".join(lines[-20:])
    if not t.is_alive():  # stdout closed: the process is exiting
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if p.poll() is None:
        raise RuntimeError(f"RPC server did not bind within {timeout:.0f} s:\n{tail}")
    raise RuntimeError(f"RPC server exited with code {p.returncode}:\n{tail}")


def _drain(stream, sink) -> None:
    try:
        for line in stream:
            if sink is not None:
                sink.write(line)
                sink.flush()
    except (OSError, ValueError):  # the log was closed by stop()
        pass


def wait_for_servers(tracker: str | tuple[str, int], key: str, n: int, timeout: float = 60) -> None:
    """Block until ``n`` servers of ``key`` are registered and free at the tracker."""
    from tvm_mpq.rpc.tracker import tracker_status

    host, port = parse_addr(tracker)
    deadline = time.monotonic() + timeout
    while True:
        ks = tracker_status(host, port).keys.get(key)
        if ks is not None and ks.total >= n and ks.free >= n:
            return
        if time.monotonic() > deadline:
            have = f"{ks.total} registered, {ks.free} free" if ks else "none registered"
            raise TimeoutError(f"waited {timeout:.0f} s for {n} servers of key {key!r} at "
                               f"{host}:{port}: {have}")
        time.sleep(0.25)


def serve(key: str, profile: str, n: int = 1, **kwargs) -> int:
    """``tvm-mpq rpc serve``: start ``n`` servers, print where they listen, supervise until
    SIGINT/SIGTERM (then stop them). Returns the exit code."""
    group = start_servers(key, profile, n, silent=kwargs.pop("silent", False), **kwargs)
    print(f"{n} RPC server(s) for key {key!r} (profile {profile}) on ports "
          f"{', '.join(map(str, group.ports))}; Ctrl-C to stop", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            dead = [i for i, p in enumerate(group.procs) if p.poll() is not None]
            if len(dead) == len(group.procs):
                print("all RPC servers exited", file=sys.stderr)
                return 1
    finally:
        group.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m tvm_mpq.rpc.server`` (one server, foreground)."""
    ap = argparse.ArgumentParser(prog="python -m tvm_mpq.rpc.server", description=__doc__.split("\n")[0])
    ap.add_argument("--key", help="tracker key (default: <backend>-<profile>)")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--backend", default="spike", choices=SIM_BACKENDS)
    ap.add_argument("--tracker", help="HOST:PORT of the tracker (none: serve direct connections)")
    ap.add_argument("--host", default=DEFAULT_HOST)
    ap.add_argument("--port", type=int, default=DEFAULT_SERVER_PORT)
    ap.add_argument("--port-end", type=int, default=None, help="end of the port search (default port+100)")
    ap.add_argument("--custom-addr", help="address reported to the tracker (NAT, containers)")
    ap.add_argument("--impl", default=DEFAULT_IMPL,
                    help="MODULE:FUNCTION (str -> str) behind tvm_mpq.measure_json, or 'selftest'")
    ap.add_argument("--silent", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.silent else logging.INFO)
    try:
        serve_one(a.key or default_key(a.profile, a.backend), a.profile, a.backend, a.tracker, a.host,
                  a.port, a.port_end, a.impl, a.custom_addr, a.silent)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
