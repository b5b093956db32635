"""The ``tvm-mpq`` command line: one module per command group (``measure``, ``tune``,
``rpc``), composed by ``main``."""

from tvm_mpq.cli.main import SUBCOMMANDS, build_parser, main, register_subcommand

__all__ = ["SUBCOMMANDS", "build_parser", "main", "register_subcommand"]
