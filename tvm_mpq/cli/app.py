"""The ``tvm-mpq`` command line: one module per command group, registered here.

* ``measure`` (:mod:`tvm_mpq.cli.measure`): measure one kernel;
* ``tune`` (:mod:`tvm_mpq.cli.tune`): the end-to-end search;
* ``rpc`` (:mod:`tvm_mpq.cli.rpc`): tracker, measurement servers, board runtime.

Each module exposes a function that adds its subparser to the ``subparsers`` action; the
subparsers it adds ``set_defaults(func=handler)`` with ``handler(args) -> int`` (the exit
code). :data:`SUBCOMMANDS` maps each command to that function; :func:`register_subcommand`
adds one (extensions, tests).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tvm_mpq.cli import measure, rpc, tune

#: name -> function(subparsers) that adds the subcommand's parser.
SUBCOMMANDS: dict[str, Callable[[Any], None]] = {
    "measure": measure.add_parser,
    "tune": tune.add_parser,
    "rpc": rpc.add_rpc_parser,
}


def register_subcommand(name: str, add_parser: Callable[[Any], None]) -> None:
    """Register ``add_parser(subparsers)`` to add subcommand ``name`` (last one wins)."""
    SUBCOMMANDS[name] = add_parser


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every command of :data:`SUBCOMMANDS`."""
    from tvm_mpq import __version__

    parser = argparse.ArgumentParser(
        prog="tvm-mpq", description="Mixed-precision quantized kernels for RISC-V on TVM.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse errors exit with 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.error(f"subcommand {args.command!r} has no handler")
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
