"""Batch norm's results on the NumPy backend are the same, bit for bit, as before it joined the family's runtime.

``tests/data/batch_norm_numpy.npz`` holds every public batch-norm function's results on fixed inputs, computed by the
code of commit 0e72ea8 (batch norm's own runtime, ``bnsym._layout``); ``tests/batch_norm_reference.py`` makes the
inputs and the results, and says how the file was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bnsym
from tests.batch_norm_reference import SHAPES, digest, inputs, results, unpack

_FILE = Path(__file__).parent / "data" / "batch_norm_numpy.npz"


@pytest.fixture(scope="module")
def expected():
    with np.load(_FILE) as stored:
        return unpack(stored)


@pytest.fixture(scope="module")
def actual():
    return results()


def test_the_same_results_are_computed(expected, actual):
    assert sorted(actual) == sorted(expected)


@pytest.mark.parametrize("case", [case for case, _, _ in SHAPES])
def test_results_are_bit_for_bit_those_of_the_original_runtime(expected, actual, case):
    differences = []
    for key in sorted(k for k in expected if k.startswith(f"{case}/")):
        want, got = expected[key], np.asarray(actual[key])
        if isinstance(want, str):
            if digest(got) != want:
                differences.append(f"{key}: dtype {got.dtype}, shape {got.shape}, bytes differ from the stored digest")
        elif got.dtype != want.dtype or got.shape != want.shape:
            differences.append(f"{key}: expected {want.dtype} {want.shape}, got {got.dtype} {got.shape}")
        elif got.tobytes() != want.tobytes():
            worst = np.nanmax(np.abs(got.astype(np.float64) - want.astype(np.float64)))
            differences.append(f"{key}: {np.sum(got != want)} of {got.size} values differ, by up to {worst:.3g}")
    assert not differences, "\n".join(differences)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("case, shape, axis", SHAPES[:3])
def test_none_parameters_are_the_identity_affine_part_bit_for_bit(case, shape, axis, dtype):
    """gamma=None is gamma = 1 and beta=None is beta = 0, exactly; the gradient for a None parameter is None."""
    a = inputs(shape, axis, dtype)
    ones, zeros = np.ones_like(a["gamma"]), np.zeros_like(a["beta"])
    kw = {"axis": axis, "backend": "numpy"}
    y, mean, invstd = bnsym.batch_norm_forward(a["x"], None, None, 1e-3, **kw)
    y1, mean1, invstd1 = bnsym.batch_norm_forward(a["x"], ones, zeros, 1e-3, **kw)
    for got, want in ((y, y1), (mean, mean1), (invstd, invstd1)):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    dx, dgamma, dbeta = bnsym.batch_norm_backward(a["dy"], a["x"], None, mean, invstd, **kw)
    dx1, _, dbeta1 = bnsym.batch_norm_backward(a["dy"], a["x"], ones, mean, invstd, **kw)
    assert dgamma is None
    assert dx.tobytes() == dx1.tobytes() and dbeta.tobytes() == dbeta1.tobytes()
    y = bnsym.batch_norm_inference(a["x"], None, None, a["running_mean"], a["running_var"], 1e-3, **kw)
    y1 = bnsym.batch_norm_inference(a["x"], ones, zeros, a["running_mean"], a["running_var"], 1e-3, **kw)
    assert y.tobytes() == y1.tobytes()
    dx, dgamma, dbeta = bnsym.batch_norm_inference_backward(a["dy"], a["x"], None, a["running_mean"],
                                                            a["running_var"], 1e-3, **kw)
    assert dgamma is None
    gx, ggamma, gdy = bnsym.batch_norm_double_backward(a["ggx"], None, a["ggbeta"], a["dy"], a["x"], None, mean,
                                                       invstd, **kw)
    gx1, _, gdy1 = bnsym.batch_norm_double_backward(a["ggx"], None, a["ggbeta"], a["dy"], a["x"], ones, mean,
                                                    invstd, **kw)
    assert ggamma is None
    assert gx.tobytes() == gx1.tobytes() and gdy.tobytes() == gdy1.tobytes()
