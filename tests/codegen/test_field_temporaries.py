"""A common subexpression that varies per element, shared by two field atoms, is a field in the kernel plan, and the
compiled (Numba) kernels compute it in their loops, per element.

tests/data/inner_shift_norm.py writes y with a shift inside the scale by gamma, ``gamma * (x_hat + shift) +
beta - gamma * shift``, as batch renormalisation's ``gamma * (r * x_hat + d) + beta`` was first written. Its forward
plan then has the atoms ``x - mean`` and ``shift + invstd*(x - mean)``, and ``sympy.cse`` names their common ``x -
mean`` as a temporary: a plain symbol, which the stage loops took for a per-channel value (``tmp0[g] = -mean[g] +
x[g]`` in the driver), so the compiled forward (and double backward) did not compile. The layer is derived and
generated here; every kernel's plan is checked, and its compiled forward is run against its NumPy kernel in float32
and float64, with the NumPy fallback made to fail.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from bnsym.codegen.layer_kernels import kernels
from bnsym.codegen.plan import Assign, plan_kernel
from bnsym.runtime.functions import functions
from bnsym.symbolic.reduction import Field
from tests.declared import derived_layers

REFERENCE = f"{Path(__file__).parent.parent / 'data' / 'inner_shift_norm.py'}:INNER_SHIFT_NORM"
#: One small NCHW shape (runs of H*W = 6 values): the forward compiles one loop nest, once per dtype.
SHAPE, AXIS = (4, 3, 2, 3), 1


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    """The layer, registered, with its kernels generated into a package on sys.path."""
    with derived_layers([REFERENCE], tmp_path_factory.mktemp("inner_shift")) as specs:
        yield specs[REFERENCE]


def _per_element(plan, inputs) -> set[str]:
    """The names of ``plan`` whose values vary per element: its field inputs, and every assignment that reads one
    (in statement order), outputs aside."""
    varying = {s.name for s in inputs if isinstance(s, Field)}
    for statement in plan.statements:
        if isinstance(statement, Assign) and {v.name for v in statement.expr.free_symbols} & varying:
            varying.add(statement.name.name)
    return varying


def test_every_value_that_varies_per_element_is_a_field_of_the_plan(layer):
    """In every kernel of the layer, CSE's temporaries that read a field (``tmp0 = x - mean``, shared by the forward's
    two atoms) are among the plan's fields, as the atoms are, and no per-channel value is."""
    shared = []
    for kernel in kernels(layer.name):
        plan = plan_kernel(kernel)
        varying = _per_element(plan, kernel.inputs)
        assigned = {s.name.name for s in plan.statements if isinstance(s, Assign)}
        assert varying <= plan.fields, (
            f"{kernel.name}: the per-element values {sorted(varying - plan.fields)} are missing from the plan's "
            f"fields {sorted(plan.fields)}: a printer would take them for per-channel values")
        assert not (assigned - varying) & plan.fields, f"{kernel.name}: a per-channel value is recorded as a field"
        shared += [f"{kernel.name}: {name}" for name in sorted(varying & assigned) if name.startswith("tmp")]
    assert any(item.startswith(f"{layer.name}_forward: ") for item in shared), (
        "the forward plan no longer shares x - mean through a CSE temporary, so this test no longer covers one; "
        f"per-element temporaries: {shared}")


class _NoFallback:
    """Stands in for the generated Numba module's NumPy kernels: any call means the compiled loops did not run."""

    def __getattr__(self, name):
        def refuse(*args):
            raise AssertionError(f"{name} ran the NumPy kernel: the compiled loops did not cover shape {SHAPE}")
        return refuse


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_the_compiled_forward_compiles_and_matches_the_numpy_kernel(layer, monkeypatch, dtype):
    """The forward pass, whose plan shares x - mean: y, mean and invstd of its compiled loops (the NumPy fallback
    refused) against its NumPy kernel. (Its double backward shares it too and is printed by the same loops; its
    compile would double this test's time, so the plan test above covers it.)"""
    pytest.importorskip("numba", reason="the compiled backend needs numba (the `fast` extra)")
    own = functions(layer)
    rng = np.random.default_rng(0)
    x = (3 + 2 * rng.normal(size=SHAPE)).astype(dtype)
    gamma, beta = rng.normal(size=(2, SHAPE[AXIS])).astype(dtype)
    expected = own.forward(x, gamma, beta, axis=AXIS, shift=0.75, backend="numpy")
    compiled = importlib.import_module(f"{layer.kernels_package}.{layer.name}_numba")
    monkeypatch.setattr(compiled, "numpy_kernels", _NoFallback())
    got = own.forward(x, gamma, beta, axis=AXIS, shift=0.75, backend="numba")
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    for name, actual, wanted in zip(("y", "mean", "invstd"), got, expected, strict=True):
        assert actual.shape == wanted.shape and actual.dtype == wanted.dtype, (
            f"{name}: {actual.shape} {actual.dtype}, NumPy gives {wanted.shape} {wanted.dtype}")
        scale = max(float(np.max(np.abs(wanted))), 1.0)
        error = float(np.max(np.abs(actual.astype(np.float64) - wanted))) / scale
        assert error <= tolerance, f"{name} ({np.dtype(dtype).name}): relative error {error:.2e} against NumPy"
