"""The ``bnsym`` command: ``bnsym derive`` regenerates (or checks) the generated files, ``bnsym check`` verifies a
normalisation-layer implementation (batch, layer, RMS, group or instance norm) against the property library."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def sympy_version() -> str:
    import sympy

    return sympy.__version__


def _derive(args: argparse.Namespace) -> int:
    from bnsym.tools import derive

    try:
        if args.layer is None:
            if args.out is not None:
                raise ValueError("--out is for a layer of your own (bnsym derive FILE.py:NAME --out DIR); bnsym's "
                                 "own generated files live in its source tree (--root)")
            root, files = derive.find_root(args.root), derive.GENERATED_FILES
        else:
            if args.root is not None:
                raise ValueError("--root is for bnsym's own generated files; a layer of your own is written to "
                                 "--out DIR")
            root, files = derive.own_layer_files(args.layer, args.out)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"bnsym derive: {error}", file=sys.stderr)
        return 2
    if args.layer is not None and not args.check:
        from bnsym.symbolic.checks import DeclarationError
        from bnsym.symbolic.cross_check import CrossCheckError
        try:
            print(derive.cross_checked(args.layer))
        except CrossCheckError as error:
            print(f"bnsym derive: {error}; nothing was written", file=sys.stderr)
            return 1
        except DeclarationError as error:  # found while deriving (a gradient the kernels cannot take), not at load
            print(f"bnsym derive: {error}; nothing was written", file=sys.stderr)
            return 2
    if args.check:
        stale = derive.stale_files(root, files)
        for _, diff in stale:
            sys.stdout.write(diff)
            if not diff.endswith("\n"):
                sys.stdout.write("\n")
        if stale:
            names = ", ".join(path for path, _ in stale)
            are = "file is" if len(stale) == 1 else "files are"
            print(f"bnsym derive --check: {len(stale)} generated {are} stale: {names}. "
                  "Regenerate them with `bnsym derive` and commit the result.", file=sys.stderr)
            recorded = derive.recorded_sympy_versions(root) - {sympy_version()}
            if recorded:
                print(f"Note: the checked-in files were generated with SymPy {', '.join(sorted(recorded))}, and this "
                      f"is SymPy {sympy_version()}; its printing may differ. The test extra pins the version the "
                      "project generates with (pip install -e '.[test]').", file=sys.stderr)
            return 1
        print(f"bnsym derive --check: all {len(files)} generated files are up to date.")
        return 0
    for path, changed in derive.regenerate(root, files):
        print(f"{'wrote' if changed else 'unchanged'}  {path}")
    if args.layer is not None:
        return 0
    if not args.quiet:
        from bnsym.tools.report import derivation_summary

        print()
        print(derivation_summary())
    return 0


def _compile(args: argparse.Namespace) -> int:
    import importlib.util
    import time

    from bnsym.spec import BUILT_IN
    from bnsym.tools import precompile

    if importlib.util.find_spec("numba") is None:
        print('bnsym compile: the compiled backend needs Numba, which is not installed: pip install -e ".[fast]" '
              "from a clone of bnsym", file=sys.stderr)
        return 2
    try:
        chosen = precompile.kernels(args.layer, args.dtype, args.layout)
    except ValueError as error:
        print(f"bnsym compile: {error}", file=sys.stderr)
        return 2
    missing = [k for k in chosen if not k.cached]
    processes = min(args.jobs, max(len(missing), 1))
    print(f"bnsym compile: {len(chosen)} kernels for {', '.join(args.layer or BUILT_IN)}; "
          f"{len(chosen) - len(missing)} in Numba's disk cache already, {len(missing)} to compile with "
          f"{processes} {'process' if processes == 1 else 'processes'}")
    failed = []
    started = time.perf_counter()

    def report(kernel, seconds: float, error: str) -> None:
        nonlocal done
        done += 1
        if error:
            failed.append((kernel, error))
        bar = precompile.progress_bar(done, len(missing))
        print(f"{bar}  {kernel.label}: {'FAILED' if error else f'{seconds:.1f} s'}", flush=True)

    done = 0
    precompile.compile_kernels(missing, workers=args.jobs, on_done=report)
    for kernel, error in failed:
        print(f"bnsym compile: {kernel.label} did not compile: {error}", file=sys.stderr)
    print(f"bnsym compile: done in {time.perf_counter() - started:.1f} s; {len(failed)} failed")
    return 1 if failed else 0


def _check(arguments: list[str]) -> int:
    # The property library (and Hypothesis) is imported only for `bnsym check`: `bnsym derive` must work, and stay
    # fast, without it. So `check` parses its own arguments.
    from bnsym.testing import command

    return command.run(check_parser().parse_args(arguments))


def check_parser() -> argparse.ArgumentParser:
    """The parser of ``bnsym check``'s own options (imports the property library)."""
    from bnsym.testing import command

    parser = argparse.ArgumentParser(prog="bnsym check", description=CHECK_DESCRIPTION)
    command.add_arguments(parser)
    return parser


CHECK_DESCRIPTION = "Verify a normalisation-layer implementation with bnsym's properties."
#: What `bnsym --help` says: plain text (the module docstring's markup is for Sphinx and editors).
DESCRIPTION = ("Normalisation layers derived symbolically, and checked: 'bnsym derive' regenerates (or, with "
               "--check, checks) the generated code and derivations; 'bnsym check TARGET' verifies a batch, layer, "
               "RMS, group or instance norm implementation (--layer) against the property library.")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from bnsym import __version__

    parser = argparse.ArgumentParser(prog="bnsym", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"bnsym {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    derive = commands.add_parser("derive", help="regenerate every generated file from the SymPy derivation",
                                 description="Regenerate bnsym/_generated/ and derivations/ from the derivation, "
                                             "then print the derived equations and a numerical check.")
    derive.add_argument("layer", nargs="?", metavar="FILE.py:NAME",
                        help="a layer of your own, declared in FILE.py as NAME (a bnsym.spec.LayerSpec): derive it "
                             "and write its kernel modules and derivation document to --out")
    derive.add_argument("--out", metavar="DIR",
                        help="with FILE.py:NAME: the directory of the layer's kernels package (its kernels_package; "
                             "default: that package's directory under the current one)")
    derive.add_argument("--check", action="store_true",
                        help="regenerate in memory, print a unified diff, exit 1 if any checked-in file is stale")
    derive.add_argument("--root", help="the source checkout to write into (default: the one bnsym runs from)")
    derive.add_argument("--quiet", action="store_true", help="only list the files written")
    derive.set_defaults(handler=_derive)

    from bnsym.spec import BUILT_IN
    from bnsym.tools.precompile import DTYPES, LAYOUTS

    compile_ = commands.add_parser(
        "compile", help="compile the compiled backend's kernels ahead of time (into Numba's disk cache)",
        description="Compile the Numba kernels of the chosen layers, dtypes and layouts (all by default) into "
                    "Numba's disk cache, so that no call compiles anything later. Kernels in the cache already "
                    "are skipped.")
    compile_.add_argument("--layer", action="append", choices=BUILT_IN,
                          help="a layer to compile (repeat for several; default: every layer)")
    compile_.add_argument("--dtype", action="append", choices=DTYPES, help="a dtype (repeat; default: both)")
    compile_.add_argument("--layout", action="append", choices=LAYOUTS,
                          help="an input layout (repeat; default: every layout)")
    compile_.add_argument("--jobs", "-j", type=_positive, default=2,
                          help="compiling processes at once (default: 2)")
    compile_.set_defaults(handler=_compile)

    check = commands.add_parser("check", help="verify an implementation with the property library (bnsym check "
                                               "--help for its options)", add_help=False)
    check.add_argument("arguments", nargs=argparse.REMAINDER)
    check.set_defaults(handler=lambda args: _check(args.arguments))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check"]:
        return _check(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
