"""The ``tvm-mpq`` command line: one module per command group (``measure``, ``tune``,
``rpc``), composed by ``app`` (the parser and ``main``).

Names are imported lazily, so ``python -m tvm_mpq.cli.rpc`` runs its module once.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["SUBCOMMANDS", "build_parser", "main", "register_subcommand"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tvm_mpq.cli.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
