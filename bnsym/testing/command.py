"""``bnsym check``: placeholder until the property library lands (issue 3)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target")


def run(args: argparse.Namespace) -> int:
    print("bnsym check: not implemented yet", file=sys.stderr)
    return 2
