"""Measurement on RISC-V targets: bare-metal Spike/QEMU runs, the measurement database,
RPC fan-out to simulator hosts and boards.

Modules: ``baremetal`` (run kernels on Spike / QEMU icount), ``simulators`` (tool lookup),
``ms_runner`` (MetaSchedule runner by instruction count), ``database`` (SQLite records),
``measure`` (the one measurement interface), ``tracker`` / ``server`` / ``client`` (TVM RPC).
Import from the submodules; nothing heavy is imported here.
"""
