"""``tvm-mpq measure``: measure one kernel (instruction count or wall time) and store it.

    tvm-mpq measure conv2d --input 1x64x28x28 --out-channels 64 --kernel 3 --padding 1 \\
        --w-bits 2 --a-bits 2 --variant bitserial --profile rv64gc_zbb --backend spike --json
    tvm-mpq measure dense --input 1x256 --out-features 10 --w-bits 4 --a-bits 4 --variant unpack
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

_BITS = (1, 2, 4, 8)


# --------------------------------------------------------------------------------------------
# argument types


def _shape(ndim: int, example: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        parts = text.lower().replace(",", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            dims = ()
        if len(dims) != ndim or min(dims, default=0) < 1:
            raise argparse.ArgumentTypeError(
                f"expected {ndim} positive integers like {example}, got {text!r}")
        return dims

    parse.__name__ = f"{ndim}-D shape"
    return parse


def _pair(text: str) -> tuple[int, int]:
    """``3`` or ``3x3``."""
    parts = text.lower().split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) not in (1, 2) or min(vals, default=-1) < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer or HxW like 3x3, got {text!r}")
    return (vals[0], vals[-1])


def _padding(text: str) -> tuple[int, ...]:
    """``1``, ``1x1`` (h, w) or ``1x1x1x1`` (top, left, bottom, right)."""
    parts = text.lower().split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) not in (1, 2, 4) or min(vals, default=-1) < 0:
        raise argparse.ArgumentTypeError(
            f"expected padding P, PHxPW or TOPxLEFTxBOTTOMxRIGHT (non-negative), got {text!r}")
    return vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


# --------------------------------------------------------------------------------------------
# measure


def add_parser(sub: Any) -> None:
    """Add the ``measure`` command (``conv2d`` / ``dense``) to ``sub``."""
    from tvm_mpq.measure.database import default_db_path
    from tvm_mpq.measure.runner import BACKENDS
    from tvm_mpq.schedules.registry import variants
    from tvm_mpq.targets import PROFILES

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("kernel and target")
    g.add_argument("--variant", required=True, choices=variants(), help="kernel variant")
    g.add_argument("--w-bits", type=int, required=True, choices=_BITS, help="weight bits")
    g.add_argument("--a-bits", type=int, required=True, choices=_BITS, help="activation bits")
    g.add_argument("--profile", choices=list(PROFILES), default=None,
                   help="target profile (default rv64gc_zbb; 'host' with --backend host)")
    g.add_argument("--backend", choices=BACKENDS, default="spike",
                   help="spike/qemu: retired instructions; host: wall time (default spike)")
    g = common.add_argument_group("measurement")
    g.add_argument("--tune-trials", type=_non_negative, default=0,
                   help="MetaSchedule trials before measuring (0: default schedule)")
    g.add_argument("--db", default=None,
                   help=f"measurement database (default $TVM_MPQ_DB or {default_db_path()})")
    g.add_argument("--no-db", action="store_true", help="neither read nor write a database")
    g.add_argument("--force", action="store_true", help="measure again even if cached")
    g.add_argument("--work-dir", default=None, help="root of MetaSchedule work directories")
    g.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    g.add_argument("--json", action="store_true", help="print the record as JSON")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="show MetaSchedule's progress logs while tuning")

    p = sub.add_parser("measure", help="measure one kernel (instruction count or wall time)",
                       description="Measure one quantized kernel and store the record.")
    kinds = p.add_subparsers(dest="kind", metavar="{conv2d,dense}", required=True)
    c = kinds.add_parser("conv2d", parents=[common], help="an NCHW conv2d",
                         description="Measure an NCHW conv2d kernel.")
    c.add_argument("--input", type=_shape(4, "1x64x28x28"), required=True, metavar="NxCxHxW")
    c.add_argument("--out-channels", type=_positive, required=True)
    c.add_argument("--kernel", type=_pair, default=(3, 3), metavar="K|KHxKW", help="default 3")
    c.add_argument("--stride", type=_pair, default=(1, 1), metavar="S|SHxSW", help="default 1")
    c.add_argument("--padding", type=_padding, default=(0,), metavar="P|PHxPW|TxLxBxR",
                   help="default 0")
    c.add_argument("--groups", type=_positive, default=1, help="default 1 (= C: depthwise)")
    c.set_defaults(func=_run_measure, parser=c)
    d = kinds.add_parser("dense", parents=[common], help="a dense layer (x @ w.T)",
                         description="Measure a dense kernel.")
    d.add_argument("--input", type=_shape(2, "1x256"), required=True, metavar="MxD")
    d.add_argument("--out-features", type=_positive, required=True)
    d.set_defaults(func=_run_measure, parser=d)


def _workload(args: argparse.Namespace):
    from tvm_mpq.schedules.workload import Conv2dWorkload, DenseWorkload

    if args.kind == "dense":
        m, dim = args.input
        return DenseWorkload.make((m, dim), (args.out_features, dim))
    n, c, h, w = args.input
    if c % args.groups:
        raise ValueError(f"--groups {args.groups} does not divide the {c} input channels")
    kh, kw = args.kernel
    if min(kh, kw) < 1:
        raise ValueError(f"--kernel must be >= 1, got {kh}x{kw}")
    if min(args.stride) < 1:
        raise ValueError(f"--stride must be >= 1, got {args.stride}")
    return Conv2dWorkload.make((n, c, h, w), (args.out_channels, c // args.groups, kh, kw),
                               args.stride, args.padding, args.groups)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to fd 1 (TVM's C++ logs included) to stderr, so that in
    ``--json`` mode stdout carries only the JSON record."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_measure(args: argparse.Namespace) -> int:
    from tvm_mpq.measure.campaign import format_record, measure
    from tvm_mpq.measure.database import MeasurementDB
    from tvm_mpq.measure.runner import create_runner
    from tvm_mpq.measure.toolchain import ToolchainError

    parser: argparse.ArgumentParser = args.parser
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    if not args.verbose and ms_log.level == logging.NOTSET:
        # MetaSchedule prints a table per iteration; its log files in --work-dir keep it all
        ms_log.setLevel(logging.WARNING)
    runner = create_runner(args.backend)
    profile = args.profile or runner.default_profile
    try:
        runner.check_profile(profile)
        wl = _workload(args)
    except ValueError as e:
        parser.error(str(e))
    db = None if args.no_db else MeasurementDB(args.db) if args.db else MeasurementDB()
    try:
        with _stdout_to_stderr() if args.json else contextlib.nullcontext():
            rec = measure(wl, args.variant, args.w_bits, args.a_bits, profile, runner, db=db,
                          tune_trials=args.tune_trials, work_dir=args.work_dir, seed=args.seed,
                          force=args.force)
    except ToolchainError as e:
        print(f"tvm-mpq: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        parser.error(str(e))
    finally:
        if db is not None:
            db.close()
    if args.json:
        print(json.dumps(rec.to_dict(), sort_keys=True))
    else:
        print(format_record(rec))
    return 0 if rec.ok else 1
