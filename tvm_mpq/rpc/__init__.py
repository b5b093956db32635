"""Measurement over TVM RPC: a tracker, simulator-host servers, the RPC runner, boards.

Modules: ``tracker`` (start / query a TVM RPC tracker), ``server`` (simulator hosts: a TVM
RPC server exposing ``tvm_mpq.measure_json``), ``client`` (``RPCMeasurer``: fan requests out
over the servers of a key, with retries; ``measure_on_board``: time a library on a board),
``runner`` (``RPCRunner``: a :class:`~tvm_mpq.measure.runner.Runner` for
``tvm_mpq.measure.campaign.measure_many`` and ``tune(backend="rpc")``), ``remote``
(``run_remote`` / ``RemoteModel``: a compiled model run on a board server through the Relax
VM), ``build_runtime`` (cross-build the TVM runtime and
RPC server for a riscv64 Linux board). The kernels, harness, database and campaign live in
:mod:`tvm_mpq.measure`. Import from the submodules; nothing heavy is imported here.
"""

from typing import Any

__all__ = ["run_remote"]


def run_remote(compiled: Any, x: Any, **kwargs: Any) -> Any:
    """:func:`tvm_mpq.rpc.remote.run_remote` (imported on first use)."""
    from tvm_mpq.rpc.remote import run_remote as _run

    return _run(compiled, x, **kwargs)
