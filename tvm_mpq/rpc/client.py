"""Fan measurements out over the RPC servers of one tracker key, and time kernels on boards.

:class:`RPCMeasurer` sends each request (a JSON object, see
:func:`tvm_mpq.measure.campaign.measure_request_json`) to the remote global function
``tvm_mpq.measure_json`` of a simulator host (:mod:`tvm_mpq.rpc.server`). One worker thread per
server of the key asks the tracker for a session, sends one request, closes the session, and
repeats; the tracker hands each free server to one waiting thread, so all servers work in
parallel. A server lost mid-measurement (killed, crashed, network gone) makes the call fail on the
client: the request is re-queued for another server up to ``max_retries`` times, then recorded as
``run_error`` naming the lost server. The campaign always completes with one record per request.
:class:`~tvm_mpq.rpc.runner.RPCRunner` wraps it as a measurement runner, so that
``measure_many(..., RPCRunner(tracker, key), db=db)`` caches and stores as a local campaign.

:func:`measure_on_board` is the other path: a board running a stock TVM RPC server
(``tvm_rpc server``, ``python -m tvm.exec.rpc_server``) gets a cross-compiled shared library,
loads it with ``remote.load_module`` and times it with TVM's ``time_evaluator``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvm_mpq.measure.database import failed_record_dict
from tvm_mpq.measure.runner import last_line
from tvm_mpq.rpc.server import MEASURE_FUNC
from tvm_mpq.rpc.tracker import DEFAULT_HOST, DEFAULT_PORT, TrackerUnreachableError, tracker_status
from tvm_mpq.rpc.tracker import connect as _tracker_connect

log = logging.getLogger(__name__)



def _measure_json(sess: Any, request: dict[str, Any]) -> str:
    """The simulator host's job: its measurement function on the request (a record's JSON)."""
    return sess.get_function(MEASURE_FUNC)(json.dumps(request))


class NoServerError(RuntimeError):
    """The tracker has no server registered under the key."""


@dataclass
class _Item:
    index: int
    request: dict[str, Any]
    attempts: int = 0
    lost: tuple[str, ...] = ()


class RPCMeasurer:
    """Measure requests on the simulator hosts registered under ``key`` at a tracker.

    Args:
        tracker_host, tracker_port: the tracker (``tvm-mpq rpc tracker``).
        key: device key, e.g. ``"spike-rv64gc_zbb"`` (see ``tvm-mpq rpc status``).
        profile, backend: filled into requests that lack them (None: the server's own).
        max_retries: how many more servers a request may be tried on after its server was lost.
        timeout_s: limit of one measurement; the server ends the session after it and the
            request is recorded as ``timeout`` (not retried: it would hang again).
        queue_timeout_s: how long to wait for a server while the key has none registered
            before the remaining requests are recorded as failed.
        parallel: worker threads (None: as many as servers registered under the key).
        on_record: called with (index, record) as each record arrives (progress, database).
        job: what a worker does with a session and a request (default: the simulator host's
            ``tvm_mpq.measure_json``); it returns the record (a dict, or its JSON). An
            exception it raises is the transport's failure: the server counts as lost and the
            request is retried elsewhere, as for the simulator hosts (:class:`~tvm_mpq.rpc.
            board_runner.BoardRunner` times kernels on boards this way).
    """

    def __init__(self, tracker_host: str = DEFAULT_HOST, tracker_port: int = DEFAULT_PORT,
                 key: str = "spike-rv64gc_zbb", *, profile: str | None = None,
                 backend: str | None = None, max_retries: int = 2, timeout_s: float = 900.0,
                 queue_timeout_s: float = 60.0, parallel: int | None = None,
                 on_record: Callable[[int, dict[str, Any]], None] | None = None,
                 job: Callable[[Any, dict[str, Any]], dict[str, Any] | str] | None = None) -> None:
        self.tracker_host, self.tracker_port, self.key = tracker_host, int(tracker_port), key
        self.profile, self.backend = profile, backend
        self.max_retries, self.timeout_s = int(max_retries), float(timeout_s)
        self.queue_timeout_s, self.parallel, self.on_record = float(queue_timeout_s), parallel, on_record
        self.job = job or _measure_json
        self._local = threading.local()  # each worker thread's tracker connection

    # ---------------------------------------------------------------------------------------
    def servers(self) -> int:
        """Number of servers registered under the key (raises TrackerUnreachableError)."""
        ks = tracker_status(self.tracker_host, self.tracker_port).keys.get(self.key)
        return ks.total if ks else 0

    def measure(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request -> one record (see :meth:`measure_many`)."""
        return self.measure_many([request])[0]

    def measure_many(self, requests: Sequence[dict[str, Any] | str]) -> list[dict[str, Any]]:
        """Measure all requests in parallel over the key's servers; records in request order.

        Each request is a dict (or its JSON) as accepted by ``measure_request_json``. Every
        request gets a record: the server's on success or measured failure, else one built
        here (``run_error`` for a lost server or no server, ``timeout``) without numbers. Each
        record's ``extra["rpc"]`` says which server produced it and after how many attempts.

        Raises:
            TrackerUnreachableError: the tracker does not answer (nothing was measured).
        """
        reqs = [json.loads(r) if isinstance(r, str) else dict(r) for r in requests]
        for r in reqs:
            if self.profile is not None:
                r.setdefault("profile", self.profile)
            if self.backend is not None:
                r.setdefault("backend", self.backend)
        results: list[dict[str, Any] | None] = [None] * len(reqs)
        self._no_server: str | None = None  # set once a wait for a server of the key timed out
        if not reqs:
            return []
        n_servers = self.servers()  # fails fast if the tracker is unreachable
        workers = max(1, min(self.parallel or n_servers or 1, len(reqs)))
        queue = [_Item(i, r) for i, r in enumerate(reqs)]
        cond = threading.Condition()
        outstanding = [len(reqs)]

        def finish(item: _Item, rec: dict[str, Any]) -> None:
            with cond:
                results[item.index] = rec
                outstanding[0] -= 1
                cond.notify_all()
            if self.on_record is not None:
                self.on_record(item.index, rec)

        def requeue(item: _Item) -> None:
            with cond:
                queue.insert(0, item)  # retried before fresh requests: bounded latency per item
                cond.notify_all()

        def take() -> _Item | None:
            with cond:
                while not queue:
                    if outstanding[0] == 0:
                        return None
                    cond.wait(0.5)
                return queue.pop(0)

        def worker() -> None:
            while (item := take()) is not None:
                try:
                    self._run_item(item, finish, requeue)
                except Exception as err:  # noqa: BLE001 -- a worker must never lose a request
                    finish(item, failed_record_dict(item.request, "run_error",
                                               f"RPC client error: {type(err).__name__}: {err}",
                                               self._rpc_info(None, item)))
            self._drop_tracker_conn()

        threads = [threading.Thread(target=worker, name=f"rpc-{self.key}-{i}", daemon=True)
                   for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------
    def _rpc_info(self, server: str | None, item: _Item) -> dict[str, Any]:
        info: dict[str, Any] = {"key": self.key, "tracker": f"{self.tracker_host}:{self.tracker_port}",
                                "server": server, "attempts": item.attempts}
        if item.lost:
            info["lost_servers"] = list(item.lost)
        return info

    def _run_item(self, item: _Item, finish, requeue) -> None:
        gone = self._no_server
        if gone is not None and self.servers() == 0:  # no need to wait queue_timeout_s again
            finish(item, failed_record_dict(item.request, "run_error", gone, self._rpc_info(None, item)))
            return
        try:
            sess, server = self._request_session()
        except NoServerError as err:
            self._no_server = str(err)
            finish(item, failed_record_dict(item.request, "run_error", str(err), self._rpc_info(None, item)))
            return
        except TrackerUnreachableError as err:
            finish(item, failed_record_dict(item.request, "run_error", f"tracker lost: {err}",
                                       self._rpc_info(None, item)))
            return
        item.attempts += 1
        try:
            out = self.job(sess, item.request)
        except Exception as err:  # noqa: BLE001 -- the transport failed, not the measurement
            text = str(err)
            if "RPCSessionTimeoutError" in text:
                finish(item, failed_record_dict(
                    item.request, "timeout",
                    f"measurement exceeded {self.timeout_s:.0f} s on server {server} (key {self.key})",
                    self._rpc_info(server, item)))
                return
            why = last_line(text)
            item.lost = (*item.lost, server)
            log.warning("lost server %s (key %s) during a measurement: %s", server, self.key, why)
            if item.attempts <= self.max_retries:
                requeue(item)
            else:
                finish(item, failed_record_dict(
                    item.request, "run_error",
                    f"lost server {server} (key {self.key}) during the measurement: {why}; "
                    f"tried {item.attempts} time(s) on {', '.join(item.lost)}",
                    self._rpc_info(server, item)))
            return
        finally:
            del sess  # closes the session: the server forks a fresh child for the next one
        try:
            rec = dict(out) if isinstance(out, dict) else json.loads(out)
        except ValueError:
            rec = failed_record_dict(item.request, "run_error",
                                f"server {server} returned non-JSON: {str(out)[:200]!r}")
        rec["extra"] = {**(rec.get("extra") or {}), "rpc": self._rpc_info(server, item)}
        finish(item, rec)

    def _drop_tracker_conn(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _request_session(self):
        """Ask the tracker for a server of the key; returns (RPCSession, "host:port").

        Waits while servers exist but are busy; raises NoServerError after ``queue_timeout_s``
        with none registered.
        """
        from tvm import rpc
        from tvm.rpc import base

        host, port = self.tracker_host, self.tracker_port
        connect_failures = 0
        while True:
            # One tracker connection per worker thread, kept while waiting: closing it with a
            # request still queued could make the tracker hand a server to a closed socket.
            sock = getattr(self._local, "sock", None)
            if sock is None:
                sock = self._local.sock = _tracker_connect(host, port)
            none_since: float | None = None
            try:
                base.sendjson(sock, [base.TrackerCode.REQUEST, self.key, "", 1])
                while not select.select([sock], [], [], min(5.0, self.queue_timeout_s))[0]:
                    # nothing free yet: wait while servers exist, give up when none are left
                    if self.servers() > 0:
                        none_since = None
                        continue
                    none_since = none_since or time.monotonic()
                    if time.monotonic() - none_since >= self.queue_timeout_s:
                        self._drop_tracker_conn()
                        raise NoServerError(
                            f"no RPC server registered under key {self.key!r} at tracker "
                            f"{host}:{port} for {self.queue_timeout_s:.0f} s; start some with "
                            f"`tvm-mpq rpc serve --key {self.key} --profile PROFILE "
                            f"--tracker {host}:{port}`")
                value = base.recvjson(sock)
            except OSError as err:
                self._drop_tracker_conn()
                raise TrackerUnreachableError(host, port, f"request failed: {err}") from None
            if value[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"tracker {host}:{port} refused the request: {value!r}")
            url, sport, matchkey = value[1]
            server = f"{url}:{sport}"
            try:
                return rpc.connect(url, sport, matchkey, session_timeout=self.timeout_s), server
            except Exception as err:  # noqa: BLE001 -- server died between tracker and connect
                connect_failures += 1
                log.warning("cannot connect to server %s (key %s): %s", server, self.key, err)
                if connect_failures >= 5:
                    raise NoServerError(f"5 servers of key {self.key!r} handed out by tracker "
                                        f"{host}:{port} refused connections; last {server}: "
                                        f"{last_line(str(err))}") from None


# -------------------------------------------------------------------------------------------
# dev boards


def measure_on_board(session, lib_path: str, func_name: str, args: Sequence[np.ndarray],
                     number: int = 10, repeat: int = 5, min_repeat_ms: int = 0,
                     return_outputs: bool = False) -> dict[str, Any]:
    """Time one function of a cross-compiled library on a board running a TVM RPC server.

    Uploads ``lib_path`` (a shared library built with ``export_library(path,
    fcompile=tvm.support.cc.cross_compiler("riscv64-linux-gnu-g++"))``), loads it with
    ``session.load_module``, copies ``args`` to the board's CPU and runs TVM's
    ``time_evaluator`` there: ``repeat`` timings, each the mean of ``number`` calls.

    Args:
        session: a ``tvm.rpc`` session (``tvm.rpc.connect`` or ``TrackerSession.request``).
        lib_path: local path of the shared library.
        func_name: the function to time (e.g. a PrimFunc's global symbol).
        args: numpy arrays, inputs and output buffers in the function's parameter order.
        number, repeat, min_repeat_ms: as in ``Module.time_evaluator``.
        return_outputs: also return the arrays after one call (to check results).

    Returns:
        ``{"status": "ok", "seconds": median, "seconds_mean", "seconds_std", "seconds_min",
        "seconds_max", "spread": (max - min) / median, "results": [each repeat], "number",
        "repeat"}`` plus ``"outputs"`` (numpy arrays) if asked. Wall-clock figures of the
        board, unlike the simulators' instruction counts.
    """
    import tvm

    name = os.path.basename(lib_path)
    session.upload(lib_path)
    rmod = session.load_module(name)
    dev = session.cpu(0)
    targs = [tvm.runtime.tensor(np.ascontiguousarray(a), device=dev) for a in args]
    f = rmod.time_evaluator(func_name, dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    res = list(f(*targs).results)
    med = statistics.median(res)
    out: dict[str, Any] = {
        "status": "ok", "seconds": med, "seconds_mean": statistics.fmean(res),
        "seconds_std": statistics.pstdev(res) if len(res) > 1 else 0.0,
        "seconds_min": min(res), "seconds_max": max(res),
        "spread": (max(res) - min(res)) / med if med > 0 else 0.0,
        "results": res, "number": number, "repeat": repeat,
    }
    if return_outputs:
        out["outputs"] = [t.numpy() for t in targs]
    try:
        session.remove(name)
    except Exception:  # noqa: BLE001 -- cleanup only; the server's temp dir goes with the session
        pass
    return out
