"""``bnsym check TARGET``: run the property library on an implementation from the command line.

Exit status: 0 when every property holds, 1 when one fails (the report names it, shows the minimal
counterexample and saves it as ``.npz`` with the command that replays it), 2 on a usage error (a target that
cannot be loaded or does not follow the protocol, a bad option, a file that is not a counterexample).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

from bnsym.conventions import CONVENTIONS
from bnsym.testing import DEFAULT_MAX_EXAMPLES, PROPERTIES
from bnsym.testing.adapters import TargetError, load
from bnsym.testing.isolation import DEFAULT_TIMEOUT, IsolatedImplementation
from bnsym.testing.options import MODES, CheckOptions
from bnsym.testing.runner import replay, run_properties, save_counterexample

__all__ = ["add_arguments", "run"]


def _integer(minimum: int, meaning: str):
    """An argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {meaning}, got {value}")
        return value
    return parse


_positive = _integer(1, "at least 1")
_seed = _integer(0, "non-negative")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="torch, jax, path/to/file.py:NAME or package.module:NAME; NAME is a function "
                                       "forward(x, gamma, beta, eps) or an object (or a class) with forward and "
                                       "optionally backward(dy, x, gamma, beta, eps)")
    parser.add_argument("--dtype", choices=("float64", "float32", "float16"), default="float64",
                        help="the dtype of the inputs (default float64)")
    parser.add_argument("--max-examples", type=_positive, default=DEFAULT_MAX_EXAMPLES,
                        help=f"examples per property (default {DEFAULT_MAX_EXAMPLES})")
    parser.add_argument("--seed", type=_seed, default=0, help="Hypothesis seed; the same seed, the same run "
                                                              "(default 0)")
    parser.add_argument("--property", action="append", choices=PROPERTIES, metavar="NAME", dest="properties",
                        help="run only this property (repeatable); one of: " + ", ".join(PROPERTIES))
    parser.add_argument("--save-dir", default=".", help="where failures' counterexamples are saved (default: the "
                                                         "current directory)")
    parser.add_argument("--replay", metavar="FILE.npz", help="re-run the property saved in a counterexample file")
    parser.add_argument("--mode", choices=MODES, default="train",
                        help="train (default): the training forward and backward; eval: the eval-mode methods")
    parser.add_argument("--convention", choices=tuple(CONVENTIONS),
                        help="also check the running statistics (train_forward, eval_forward) against this "
                             "framework's convention")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1,
                        help="2: also check the double backward of the mode (default 1)")
    parser.add_argument("--isolate", action="store_true",
                        help="run the implementation in a child process: a crash (SIGSEGV, SIGABRT, ...) or a call "
                             "that does not return within --timeout fails the property, and the run goes on")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help=f"with --isolate: seconds one call may take before its process is killed (default "
                             f"{DEFAULT_TIMEOUT:g})")


def _fail(message: str) -> int:
    print(f"bnsym check: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    # Hypothesis caches what it learns about the source code under ./.hypothesis even without an example
    # database; `bnsym check` should not leave that in the user's directory, so it keeps it in a temporary one
    # (unless HYPOTHESIS_STORAGE_DIRECTORY says where it should go).
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        return _run(args)
    with tempfile.TemporaryDirectory(prefix="bnsym-check-") as home:
        set_hypothesis_home_dir(home)
        try:
            return _run(args)
        finally:
            set_hypothesis_home_dir(None)


def _run(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.isolate:
        return _fail("--timeout needs --isolate (a call in the checker's own process cannot be stopped)")
    try:
        impl = IsolatedImplementation(args.target, timeout=args.timeout or DEFAULT_TIMEOUT) if args.isolate \
            else load(args.target)
    except (TargetError, TypeError) as error:
        return _fail(str(error))
    try:
        return _check(args, impl)
    finally:
        if args.isolate:
            impl.close()  # no child outlives the run


def _check(args: argparse.Namespace, impl) -> int:
    if args.replay:
        try:
            report = replay(impl, args.replay)
        except ValueError as error:
            return _fail(str(error))
        print(report)
        return 0 if report.ok else 1
    options = CheckOptions(args.mode, args.convention, args.order)
    report = run_properties(impl, dtype=args.dtype, max_examples=args.max_examples, seed=args.seed,
                            properties=args.properties, options=options)
    isolation = ""
    if args.isolate:  # a replay of a crash must not crash the checker
        isolation = " --isolate" + (f" --timeout {args.timeout:g}" if args.timeout is not None else "")
    report.replay_command = f"bnsym check {shlex.quote(args.target)}{isolation} --replay {{path}}"
    for result in report.results:
        if result.counterexample is not None:
            save_counterexample(result, Path(args.save_dir), options)
    print(report)
    return 0 if report.ok else 1

