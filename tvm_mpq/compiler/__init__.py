"""Compile stage: one mixed-precision Relax module for a plan (:func:`compile`,
:class:`CompiledModel`)."""

from tvm_mpq.compiler.compiled import CompiledModel, compile

__all__ = ["CompiledModel", "compile"]
