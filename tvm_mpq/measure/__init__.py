"""Measurement stage: kernels run on the target, costs recorded.

Modules, by role (as MetaSchedule's runner/ and database/ packages):

* ``runner`` — the :class:`~tvm_mpq.measure.runner.Runner` base and ``create_runner``;
  ``local_runner`` (prepare, tune, run in chunks on this machine), ``sim_runner`` (Spike /
  QEMU icount: instruction counts), ``host_runner`` (wall time), ``qemu_user_runner`` (the
  standalone artifact's Linux build); the RPC runner is :mod:`tvm_mpq.rpc.runner`.
* ``campaign`` — ``measure`` / ``measure_many``: the database cache, resume, progress.
* ``database`` — SQLite records, ``MeasureKey`` (a ``key.KernelKey`` + backend + schedule),
  the one builder of failed records.
* ``key`` — ``KernelKey``, the kernel identity shared with the cost model and the search.
* ``baremetal`` — the bare-metal harness: build one ELF of many kernels and run it;
  ``harness_output`` reads its output back; ``harness/`` holds the C sources.
* ``toolchain`` — compiler, libc and simulator lookup, simulator runs, build flags.
* ``ms_runner`` — MetaSchedule builder/runner by instruction count.
* ``overhead`` — the quantize/dequantize passes around a kernel, measured.

Import from the submodules; nothing heavy is imported here.
"""
