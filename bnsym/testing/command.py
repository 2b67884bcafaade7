"""``bnsym check TARGET``: run the property library on an implementation from the command line.

``--layer`` (default batch_norm) names the layer, whose protocol the target follows and whose properties run
(:mod:`bnsym.testing.protocols`). ``--shards K`` is the sharded mode of the same check (:mod:`bnsym.testing.sharded`):
the target follows the sharded protocol, and every other option either works with it (``--json``, ``--plot``,
``--isolate``, ``--timeout``, ``--regime``, ``--replay``, ...) or is a usage error that says why.

Exit status: 0 when every property holds; 1 when one fails (the report names it, shows the minimal
counterexample and saves it with the command that replays it); 2 on a usage error (a target that cannot be loaded
or does not follow the protocol, a bad option, options that conflict with a ``--replay`` file, a file that is not a
counterexample); 5 when nothing was checked (every property skipped or left out), as pytest exits when it collects
no test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

from bnsym.conventions import CONVENTIONS
from bnsym.spec.loading import layer_name
from bnsym.testing import DEFAULT_MAX_EXAMPLES, LAYERS, properties_of, selected_regimes
from bnsym.testing.adapters import TargetError, load, probe_protocol
from bnsym.testing.counterexamples import (
    DEFAULT_DIRECTORY,
    NotACounterexample,
    load_counterexample,
    replay,
    save_counterexample,
)
from bnsym.testing.crash_report import report_crashes
from bnsym.testing.files import write_atomically
from bnsym.testing.isolation import DEFAULT_TIMEOUT, ImplementationCrashed, IsolatedImplementation
from bnsym.testing.layer_guess import suggestion
from bnsym.testing.options import MODES, CheckOptions
from bnsym.testing.properties import registry
from bnsym.testing.protocols import DEFAULT_LAYER, layer_names
from bnsym.testing.proved import StaleInvarianceData
from bnsym.testing.results import FAILED
from bnsym.testing.runner import properties_of_run, run_properties
from bnsym.testing.sharded import shardable, sharded_regimes
from bnsym.testing.sharded_adapters import load as load_sharded
from bnsym.testing.strategies import layer_regimes

__all__ = ["add_arguments", "run"]

_DEFAULTS = {"dtype": "float64", "mode": "train", "order": 1, "max_examples": DEFAULT_MAX_EXAMPLES, "seed": 0,
             "layer": DEFAULT_LAYER}
#: Every layer's properties and regimes, in order, without repeats (the choices of --property and --regime).
_ALL_PROPERTIES = tuple(dict.fromkeys(name for layer in LAYERS for name in properties_of(layer)))
_ALL_REGIMES = tuple(dict.fromkeys([*(regime for layer in LAYERS for regime in layer_regimes(layer)),
                                    *(regime for layer in LAYERS if shardable(layer)
                                      for regime in sharded_regimes(layer))]))


def _fill_defaults(args: argparse.Namespace) -> None:
    for key, value in _DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


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


def _layer(text: str) -> str:
    """--layer: a registered layer's name, or FILE.py:NAME (loaded and registered); the layer's name."""
    try:
        return layer_name(text)
    except (ValueError, TypeError, OSError, SyntaxError, ImportError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Options default to None so that --replay can tell an option given from one left alone; _DEFAULTS fills them.
    # The layers registered now, not when bnsym.testing was imported: a layer loaded from a file and unregistered
    # since (as tests do) has no regimes left to list.
    layers = layer_names()
    parser.add_argument("target", nargs="?",
                        help="bnsym (its own kernels), torch, jax, path/to/file.py:NAME or package.module:NAME; "
                             "NAME is a function forward(x, gamma, beta, eps) or an object (or a class) with forward "
                             "and optionally backward(dy, x, gamma, beta, eps), in the layer's form (--layer)")
    parser.add_argument("--layer", type=_layer, metavar="LAYER",
                        help=f"the layer the target implements, whose protocol it follows: {', '.join(layers)} "
                             "(default batch_norm), or a layer of your own declared in a file, FILE.py:NAME; "
                             "layer_norm forward(x, gamma, beta, eps) over the trailing axes gamma.shape names; "
                             "rms_norm forward(x, gamma, eps); group_norm forward(x, gamma, beta, eps, num_groups); "
                             "instance_norm forward(x, gamma, beta, eps); backward(dy, <forward's arguments>)")
    parser.add_argument("--dtype", choices=("float64", "float32", "float16"),
                        help="the dtype of the inputs (default float64)")
    parser.add_argument("--max-examples", type=_positive,
                        help=f"examples per property (default {DEFAULT_MAX_EXAMPLES}), plus one of each input regime "
                             "the draws miss")
    parser.add_argument("--seed", type=_seed, help="Hypothesis seed; the same seed, the same run (default 0)")
    parser.add_argument("--property", action="append", choices=_ALL_PROPERTIES, metavar="NAME",
                        dest="properties", help="run only this property (repeatable); one of the layer's, which "
                                                "`bnsym check --layer L --list-properties` lists")
    parser.add_argument("--list-properties", action="store_true",
                        help="list the properties of --layer (with --shards: the sharded ones), what each checks "
                             "and the options that select it, then exit")
    parser.add_argument("--regime", action="append", choices=_ALL_REGIMES, metavar="REGIME", dest="regimes",
                        help="draw inputs only from this regime (repeatable); one of the layer's: "
                             + "; ".join(f"{layer}: {', '.join(layer_regimes(layer))}" for layer in layers)
                             + "; with --shards also: "
                             + ", ".join(dict.fromkeys(r for layer in layers if shardable(layer)
                                                       for r in sharded_regimes(layer) if r not in
                                                       layer_regimes(layer))))
    parser.add_argument("--exclude-regime", action="append", choices=_ALL_REGIMES, metavar="REGIME",
                        dest="exclude_regimes", help="leave this input regime out (repeatable)")
    parser.add_argument("--save-dir", help=f"the folder failures' counterexamples are saved in (default "
                                           f"./{DEFAULT_DIRECTORY}/)")
    parser.add_argument("--replay", metavar="FILE.npz", help="re-run the property saved in a counterexample file, "
                                                             "with the file's options")
    parser.add_argument("--mode", choices=MODES,
                        help="train (default): the training forward and backward; eval: the eval-mode methods")
    parser.add_argument("--convention", choices=tuple(CONVENTIONS),
                        help="also check the running statistics (train_forward, eval_forward) against this "
                             "convention (bnsym.conventions)")
    parser.add_argument("--order", type=int, choices=(1, 2), help="2: also check the double backward of the mode "
                                                                  "(default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the whole result as JSON (for CI)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw each property's margin per input regime "
                                                           "(needs matplotlib: pip install -e '.[plot]')")
    parser.add_argument("--isolate", action="store_true",
                        help="run the implementation in a child process: a crash (SIGSEGV, SIGABRT, ...) or a call "
                             "that does not return within --timeout fails the property, and the run goes on")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help=f"with --isolate: seconds one call may take before its process is killed (default "
                             f"{DEFAULT_TIMEOUT:g})")
    # ----- the sharded mode (bnsym.testing.sharded) -----
    parser.add_argument("--shards", type=_positive, metavar="K",
                        help="check a data-parallel layer (one whose groups span samples, such as batch norm) with "
                             "every batch split into K shards (the sharded protocol: sharded_forward(xs, ...), "
                             "sharded_backward(dys, xs, ...)); built-in targets bnsym-torch, torch-sync and jax")


def _fail(message: str) -> int:
    print(f"bnsym check: {message}", file=sys.stderr)
    return 2


def _list_properties(args: argparse.Namespace) -> int:
    """Print the properties of the layer (with --shards, those of a sharded run), one a line with what it checks and
    the options that select it; exit status 0 (2 when the layer has no sharded run)."""
    layer = args.layer or DEFAULT_LAYER
    if args.shards is None:
        options, names = CheckOptions(layer=layer), properties_of(layer)
    else:
        try:
            options = CheckOptions(layer=layer, shards=args.shards)
        except ValueError as error:
            return _fail(str(error))
        names = tuple(properties_of_run(options))
    for name in names:
        prop = registry(layer)[name]
        selected = "" if prop.when(options) else f" [runs with {prop.selected_by}]"
        print(f"{name}: {prop.description}{selected}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return _run_or_list(args)
    except StaleInvarianceData as error:  # the layer's generated package must be derived again: a usage error
        return _fail(str(error))


def _run_or_list(args: argparse.Namespace) -> int:
    # Hypothesis caches what it learns about the source code under ./.hypothesis even without an example
    # database; `bnsym check` should not leave that in the user's directory, so it keeps it in a temporary one
    # (unless HYPOTHESIS_STORAGE_DIRECTORY says where it should go).
    if args.list_properties:
        return _list_properties(args)
    if args.target is None:
        return _fail("the target is missing: bnsym check TARGET (bnsym, torch, jax, path/to/file.py:NAME or "
                     "package.module:NAME); bnsym check --help says more")
    # In the checker's own process, a segfault of the implementation says where it happened and what --isolate
    # does; with --isolate, the child's crash is a finding and its dump goes to the report.
    with nullcontext() if args.isolate else report_crashes():
        if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
            return _run(args)
        with tempfile.TemporaryDirectory(prefix="bnsym-check-") as home:
            set_hypothesis_home_dir(home)
            try:
                return _run(args)
            finally:
                set_hypothesis_home_dir(None)


def _replay_conflicts(args: argparse.Namespace, name: str, dtype: str, options: CheckOptions) -> list[str]:
    from_file = {"dtype": dtype, "mode": options.mode, "convention": options.convention, "order": options.order,
                 "layer": options.layer, "shards": options.shards or "none (an unsharded run)"}
    conflicts = [f"--{key} {getattr(args, key)} (the file's is {value})" for key, value in from_file.items()
                 if getattr(args, key) is not None and getattr(args, key) != value]
    if args.properties and args.properties != [name]:
        conflicts.append(f"--property {' --property '.join(args.properties)} (the file's is {name})")
    for option in ("max_examples", "seed", "regimes", "exclude_regimes"):
        if getattr(args, option) is not None:
            conflicts.append(f"--{option.replace('_', '-')} (a replay runs the file's one example)")
    return conflicts


def _write_json(report, path: str) -> None:
    def write(stream):
        json.dump(report.to_dict(), stream, indent=2, default=float)
        stream.write("\n")

    write_atomically(path, write, binary=False)


def _outputs(report, args) -> None:
    """Write the --json and --plot files, each followed by a line saying where it went."""
    if args.json:
        _write_json(report, args.json)
        print(f"result written as JSON to {args.json}")
    if args.plot:
        from bnsym.testing.plot import plot_margins

        plot_margins(report, args.plot)
        print(f"margins plotted to {args.plot}")


def _run(args: argparse.Namespace) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _fail("--plot needs matplotlib: pip install -e '.[plot]'")
    if args.replay:
        try:
            name, example, options = load_counterexample(args.replay)
        except NotACounterexample as error:
            return _fail(str(error))
        conflicts = _replay_conflicts(args, name, example.dtype.name, options)
        if conflicts:
            return _fail(f"--replay {args.replay} runs the file's property with the file's options; these conflict "
                         f"with it: {'; '.join(conflicts)}")
    if args.timeout is not None and not args.isolate:
        return _fail("--timeout needs --isolate (a call in the checker's own process cannot be stopped)")
    layer = options.layer if args.replay else args.layer or DEFAULT_LAYER
    shards = options.shards if args.replay else args.shards
    if not args.replay:
        problem = _layer_problem(args, layer)
        if problem:
            return _fail(problem)
    try:
        if args.isolate:
            impl = IsolatedImplementation(args.target, timeout=args.timeout or DEFAULT_TIMEOUT, layer=layer,
                                          shards=shards)
        else:
            impl = load(args.target, layer) if shards is None else load_sharded(args.target, shards, layer)
    except (TargetError, TypeError) as error:
        return _fail(_with_suggestion(args, layer, error))
    try:
        if shards is None:  # the sharded protocol has no single forward to probe: its properties report mistakes
            try:
                probe_protocol(impl)
            except TargetError as error:
                return _fail(_with_suggestion(args, layer, error))
            except ImplementationCrashed:
                pass  # the properties report the crash, with its example and replay file
        return _check(args, impl)
    finally:
        if args.isolate or shards is not None:
            impl.close()  # no child, and no worker of a sharded implementation, outlives the run


def _with_suggestion(args: argparse.Namespace, layer: str, error: Exception) -> str:
    """The usage error's line, led by "did you mean `--layer L`?" when the target computes another layer (not with
    --isolate, where loading the target in this process could crash it, nor with --replay)."""
    hint = "" if args.isolate or args.replay or args.shards is not None else suggestion(args.target, layer)
    return f"{hint}\n(checked as {layer}: {error})" if hint else str(error)


def _layer_problem(args: argparse.Namespace, layer: str) -> str:
    """What the options ask that the layer (or a sharded run of it) does not have (a usage error), or ""."""
    known = properties_of(layer)
    unknown = [name for name in args.properties or () if name not in known]
    if unknown:
        return f"{', '.join(unknown)}: not a property of {layer}; its properties: {', '.join(known)}"
    try:
        options = CheckOptions(args.mode or "train", args.convention, args.order or 1, layer, args.shards)
        selected_regimes(args.regimes, args.exclude_regimes, layer, args.shards)
    except ValueError as error:
        if args.shards is None and set(args.regimes or ()) - set(layer_regimes(layer)) and shardable(layer):
            return f"{error} (the sharded regimes run with --shards K)"
        return str(error)
    of_run = properties_of_run(options)
    elsewhere = [name for name in args.properties or () if name not in of_run]
    if elsewhere and args.shards is not None:
        return (f"{', '.join(elsewhere)}: not a property of a sharded run; with --shards the properties are "
                f"{', '.join(of_run)}")
    if elsewhere:
        return "; ".join(f"{name} runs with {registry(layer)[name].selected_by}" for name in elsewhere)
    return ""


def _check(args: argparse.Namespace, impl) -> int:
    if args.replay:
        report = replay(impl, args.replay)
        print(report)
        _outputs(report, args)
        return report.exit_status
    _fill_defaults(args)
    options = CheckOptions(args.mode, args.convention, args.order, args.layer, args.shards)
    try:
        regimes = selected_regimes(args.regimes, args.exclude_regimes, args.layer, args.shards)
    except ValueError as error:
        return _fail(str(error))
    report = run_properties(impl, dtype=args.dtype, max_examples=args.max_examples, seed=args.seed,
                            properties=args.properties, options=options, regimes=regimes)
    isolation = ""
    if args.isolate:  # a replay of a crash must not crash the checker
        isolation = " --isolate" + (f" --timeout {args.timeout:g}" if args.timeout is not None else "")
    report.replay_command = f"bnsym check {shlex.quote(args.target)}{isolation} --replay {{path}}"
    report.save_dir = Path(args.save_dir) if args.save_dir else DEFAULT_DIRECTORY
    for result in report.results:
        if result.counterexample is not None and result.status == FAILED:
            save_counterexample(result, report.save_dir, options, args.target)
    print(report)
    if "forward_reference" in report.failed and not args.isolate:  # the wrong --layer, perhaps
        hint = suggestion(args.target, args.layer)
        if hint:
            print(hint)
    _outputs(report, args)
    return report.exit_status
