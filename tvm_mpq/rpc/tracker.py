"""TVM's own RPC tracker: start/stop it, and query which servers are registered under which key.

The tracker is ``tvm.rpc.tracker.Tracker`` unchanged, so standard TVM RPC servers (our simulator
hosts, boards running ``tvm_rpc`` or ``python -m tvm.exec.rpc_server``) and standard clients
(MetaSchedule's ``RPCRunner``) all talk to it. Everything binds to loopback unless asked.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import threading
from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9190


class TrackerUnreachableError(ConnectionError):
    """No RPC tracker answers at ``host:port``."""

    def __init__(self, host: str, port: int, reason: str = "") -> None:
        self.host, self.port = host, port
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"no RPC tracker reachable at {host}:{port}{why}; start one with "
            f"`tvm-mpq rpc tracker --host {host} --port {port}` or pass --tracker HOST:PORT"
        )


def parse_addr(addr: str | tuple[str, int] | None, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"host:port"`` (or ``"host"``, or a tuple, or None) -> ``(host, port)``; loopback default."""
    if addr is None or addr == "":
        return DEFAULT_HOST, default_port
    if isinstance(addr, tuple):
        return str(addr[0]), int(addr[1])
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    try:
        return host or DEFAULT_HOST, int(port)
    except ValueError:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT") from None


def connect(host: str, port: int, timeout: float | None = 5.0) -> socket.socket:
    """Open a tracker connection (magic handshake done), raising :class:`TrackerUnreachableError`.

    Unlike ``tvm.rpc.connect_tracker`` (which retries a refused connection for 60 s) this fails
    fast, so a wrong address is reported at once.
    """
    from tvm.rpc import base

    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise TrackerUnreachableError(host, port, err.strerror or str(err)) from None
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (OSError, AssertionError, RuntimeError) as err:
        sock.close()
        raise TrackerUnreachableError(host, port, f"handshake failed: {err}") from None
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise TrackerUnreachableError(host, port, "the endpoint is not a TVM RPC tracker")
    return sock


@dataclass
class KeyStatus:
    """Servers registered under one key.

    Attributes:
        key: the device key, e.g. ``"spike-rv64gc_zbb"``.
        servers: ``"host:port"`` of each connected server.
        free: servers idle and ready to be handed out.
        pending: client requests waiting for a server of this key.
    """

    key: str
    servers: list[str] = field(default_factory=list)
    free: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        return len(self.servers)


@dataclass
class TrackerStatus:
    """Snapshot of a tracker: one :class:`KeyStatus` per key, sorted by key."""

    host: str
    port: int
    keys: dict[str, KeyStatus]

    def table(self) -> str:
        """Plain-text table: key, servers, free, pending (busy = total - free)."""
        lines = [f"tracker {self.host}:{self.port}"]
        if not self.keys:
            lines.append("(no servers registered)")
            return "\n".join(lines)
        w = max(len("key"), *(len(k) for k in self.keys))
        lines.append(f"{'key':<{w}}  {'total':>5}  {'free':>4}  {'busy':>4}  {'pending':>7}  servers")
        for k, s in self.keys.items():
            busy = max(s.total - s.free, 0)
            lines.append(
                f"{k:<{w}}  {s.total:>5}  {s.free:>4}  {busy:>4}  {s.pending:>7}  {', '.join(s.servers)}"
            )
        return "\n".join(lines)


def tracker_status(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 5.0) -> TrackerStatus:
    """Query a tracker: servers per key, free servers, queued requests.

    Raises:
        TrackerUnreachableError: nothing (or not a tracker) answers at ``host:port``.
    """
    from tvm.rpc import base

    sock = connect(host, port, timeout)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except OSError as err:
        raise TrackerUnreachableError(host, port, f"summary failed: {err}") from None
    finally:
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"tracker {host}:{port} answered {value!r} to SUMMARY")
    data = value[1]
    keys: dict[str, KeyStatus] = {}
    for item in data.get("server_info", []):
        key = item["key"].split(":", 1)[1]  # "server:spike-rv64gc" -> "spike-rv64gc"
        addr = item.get("addr") or [None, None]
        keys.setdefault(key, KeyStatus(key)).servers.append(f"{addr[0]}:{addr[1]}")
    for key, q in data.get("queue_info", {}).items():
        ks = keys.setdefault(key, KeyStatus(key))
        ks.free, ks.pending = int(q.get("free", 0)), int(q.get("pending", 0))
    # keys with neither servers nor waiting clients are leftovers of departed servers
    keys = {k: v for k, v in sorted(keys.items()) if v.total or v.pending or v.free}
    for v in keys.values():
        v.servers.sort()
    return TrackerStatus(host, port, keys)


def start_tracker(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, port_end: int | None = None,
                  silent: bool = True):
    """Start ``tvm.rpc.tracker.Tracker`` in a child process; returns it (``.host``, ``.port``).

    The first free port in ``[port, port_end)`` is taken (``port_end`` defaults to ``port + 1``:
    exactly the requested port). Stop it with :func:`stop_tracker`.
    """
    from tvm.rpc.tracker import Tracker

    if silent:
        logging.getLogger("RPCTracker").setLevel(logging.WARNING)
    return Tracker(host=host, port=port, port_end=port_end or port + 1, silent=silent)


def stop_tracker(tracker) -> None:
    """Stop a tracker started by :func:`start_tracker` (idempotent)."""
    if tracker is None:
        return
    try:
        tracker.terminate()
    except (OSError, AssertionError, struct.error):
        # the tracker process is already gone (e.g. a Ctrl-C reached the whole process group)
        if tracker.proc is not None:
            tracker.proc.kill()
            tracker.proc = None


def run_tracker_forever(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                        port_end: int | None = None) -> None:
    """Run a tracker in the foreground until SIGINT/SIGTERM (``tvm-mpq rpc tracker``)."""
    tracker = start_tracker(host, port, port_end, silent=False)
    print(f"RPC tracker listening on {tracker.host}:{tracker.port} (Ctrl-C to stop)", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            if not tracker.proc.is_alive() and not done.wait(0.5):  # a group signal kills it first
                raise RuntimeError("the tracker process exited unexpectedly")
    finally:
        stop_tracker(tracker)
