"""The runtime-free C artifact (public path kept; the code lives in :mod:`tvm_mpq.deploy`)."""

from tvm_mpq.deploy import (
    DoesNotFitError,
    StandaloneArtifact,
    StandaloneResult,
    arena_lower_bound,
    export_standalone,
    load_standalone,
    lower_for_standalone,
    plan_memory,
    run_standalone,
)

__all__ = [
    "DoesNotFitError", "StandaloneArtifact", "StandaloneResult", "arena_lower_bound",
    "export_standalone", "load_standalone", "lower_for_standalone", "plan_memory",
    "run_standalone",
]
