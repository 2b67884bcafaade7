"""The benchmark's rows of the variants (``VARIANTS`` in benchmarks/run.py) compute what their table claims: on a
small shape of the same rank, bnsym's functions and each row's PyTorch composition agree (y and every gradient, for
random upstream gradients), and every built-in variant has a row. Nothing is timed, and bnsym runs its NumPy
kernels (the benchmark's compiled ones are the same derivation, compared element by element in
tests/test_backends.py)."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

import bnsym
from bnsym.spec import BUILT_IN, spec

pytest.importorskip("torch")

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def run():
    loader = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    module = importlib.util.module_from_spec(loader)
    sys.modules[loader.name] = module  # its dataclasses look their module up while it loads
    try:
        loader.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[loader.name]


def test_every_built_in_variant_has_a_row(run):
    variants = [name for name in BUILT_IN if spec(name).forward is not None]
    rows = {row.layer for row in run.VARIANTS}
    assert set(variants) <= rows, f"no row in benchmarks/run.py VARIANTS for {sorted(set(variants) - rows)}"


def test_each_row_agrees_with_its_pytorch_composition(run, monkeypatch):
    monkeypatch.setattr(run, "FAMILY_BACKEND", "numpy")
    checked = 0
    for row in run.VARIANTS:
        if not hasattr(bnsym, row.layer):
            continue  # a row for a layer this version does not have: the benchmark reports it as skipped
        small = dataclasses.replace(row, shape=(3,) * (len(row.shape) - 1) + (16,))
        *_, check, _, runs = run._variant_calls(small)
        check()  # raises, naming the row and the output, when they disagree
        assert runs, row.label
        checked += 1
    assert checked >= 2
