"""Measurement over TVM RPC: a tracker, simulator-host servers, the RPC runner, boards.

Modules: ``tracker`` (start / query a TVM RPC tracker), ``server`` (simulator hosts: a TVM
RPC server exposing ``tvm_mpq.measure_json``), ``client`` (``RPCMeasurer``: fan requests out
over the servers of a key, with retries; ``measure_on_board``: time a library on a board),
``runner`` (``RPCRunner``: a :class:`~tvm_mpq.measure.runner.Runner` for
``tvm_mpq.measure.campaign.measure_many``), ``build_runtime`` (cross-build the TVM runtime and
RPC server for a riscv64 Linux board). The kernels, harness, database and campaign live in
:mod:`tvm_mpq.measure`. Import from the submodules; nothing heavy is imported here.
"""
