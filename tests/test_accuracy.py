"""float32 with a large common offset against float64: speed-ups of the generated code may not cost accuracy.

With x = offset + N(0, std), a float32 batch norm cannot do better than the rounding of the mean itself, about
eps32 * |mean| relative to std; every result must stay within ``UNITS`` times that (bnsym stays below 0.9).
Forms that cancel (E[x^2] - E[x]^2, sum(dy*x) - mean*sum(dy), a float32 running sum over 10^5 rows) miss it by
orders of magnitude; the planted implementations below check that this test catches them.
"""

import numpy as np
import pytest

import bnsym
from tests.backends import JAX, JIT, VIAS

EPS32 = float(np.finfo(np.float32).eps)
UNITS = 2.0

CASES = [  # shape, channel axis, offset, std
    ((4096, 64), 1, 1e4, 1.0),
    ((8, 16, 24, 24), 1, 1e4, 1.0),
    ((16, 24, 24, 16), -1, 1e4, 1.0),
    ((64, 32, 32, 8), -1, 1e4, 1.0),
    ((2000, 8), 1, -3e3, 0.5),
    ((64, 4, 3), 1, 1e2, 1e-2),
    ((2, 1, 10**6), 1, 1e4, 1.0),  # one long contiguous run per image and channel (a large NCL signal)
]


def _relative_error(actual, expected):
    return np.max(np.abs(actual.astype(np.float64) - expected)) / np.max(np.abs(expected))


def _worst_error(forward, backward, shape, axis, offset, std):
    """(name, error in units of eps32 * (1 + |offset|/std)) of the worst result of forward and backward."""
    rng = np.random.default_rng(sum(shape))
    x = (offset + std * rng.normal(size=shape)).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)  # random, never ones: the gradient of sum(y) is zero
    channels = shape[axis]
    gamma = rng.uniform(0.5, 2, size=channels).astype(np.float32)
    beta = rng.normal(size=channels).astype(np.float32)
    as64 = lambda a: a.astype(np.float64)  # noqa: E731  the same float32 inputs, computed in float64
    y, mean, invstd = forward(x, gamma, beta, axis=axis)
    dx, dgamma, dbeta = backward(dy, x, gamma, mean, invstd, axis=axis)
    y64, mean64, invstd64 = bnsym.batch_norm_forward(as64(x), as64(gamma), as64(beta), axis=axis)
    dx64, dgamma64, dbeta64 = bnsym.batch_norm_backward(as64(dy), as64(x), as64(gamma), mean64, invstd64, axis=axis)
    unit = EPS32 * (1 + abs(offset) / std)
    errors = {
        "mean": np.max(np.abs(mean - mean64)) / std / unit,
        "invstd": _relative_error(invstd, invstd64) / unit,
        "y": _relative_error(y, y64) / unit,
        "dx": _relative_error(dx, dx64) / unit,
        "dgamma": _relative_error(dgamma, dgamma64) / unit,
        "dbeta": _relative_error(dbeta, dbeta64) / unit,
    }
    worst = max(errors, key=errors.get)
    return worst, errors[worst]


@pytest.mark.parametrize("via", VIAS + [JAX, JIT], ids=str)
@pytest.mark.parametrize(("shape", "axis", "offset", "std"), CASES, ids=str)
def test_float32_large_offset_matches_float64(shape, axis, offset, std, via):
    """On every backend; on JAX inside jax.jit, where float64 is off and the totals are compensated sums."""
    name, error = _worst_error(via.batch_norm_forward, via.batch_norm_backward, shape, axis, offset, std)
    assert error <= UNITS, f"{via}: {name}: error {error:.2f} units of eps32*(1+|mean|/std) exceeds {UNITS}"


# ----- Planted implementations that cancel: each must be caught -----

def _moved(a, axis):
    return np.moveaxis(a, axis, -1)


def _naive_moments_forward(x, gamma, beta, axis):
    """E[x^2] - E[x]^2 variance, float32 throughout."""
    xm = _moved(x, axis)
    mean = xm.reshape(-1, xm.shape[-1]).mean(0)
    var = (xm * xm).reshape(-1, xm.shape[-1]).mean(0) - mean * mean
    invstd = (1 / np.sqrt(np.maximum(var, 0) + np.float32(1e-5))).astype(np.float32)
    return np.moveaxis(gamma * (xm - mean) * invstd + beta, -1, axis), mean, invstd


def _uncentred_backward(dy, x, gamma, mean, invstd, axis):
    """sum(dy * x_hat) as invstd * (sum(dy * x) - mean * sum(dy)), float32 throughout."""
    dym, xm = _moved(dy, axis), _moved(x, axis)
    m = dym.size // dym.shape[-1]
    sum_dy = dym.reshape(-1, dym.shape[-1]).sum(0)
    dgamma = invstd * ((dym * xm).reshape(-1, xm.shape[-1]).sum(0) - mean * sum_dy)
    dx = gamma * invstd * (dym - sum_dy / m - (xm - mean) * invstd * dgamma / m)
    return np.moveaxis(dx, -1, axis), dgamma, sum_dy


@pytest.mark.parametrize("planted", ["naive moments forward", "uncentred backward"])
def test_cancelling_implementations_are_caught(planted):
    forward, backward = bnsym.batch_norm_forward, bnsym.batch_norm_backward
    if planted == "naive moments forward":
        forward = _naive_moments_forward
    else:
        backward = _uncentred_backward
    name, error = _worst_error(forward, backward, (4096, 64), 1, 1e4, 1.0)
    assert error > UNITS, f"the planted {planted} passed ({name}: {error:.2f} units)"
