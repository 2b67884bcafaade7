"""Contracts of the public functions that do not need a reference: the public surface, dtypes, shapes, layouts."""

import numpy as np
import pytest

import bnsym


def test_public_surface_is_pinned():
    assert bnsym.__all__ == sorted(bnsym.__all__), "__all__ must stay alphabetised"
    assert {"batch_norm_backward", "batch_norm_forward"} <= set(bnsym.__all__)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_are_preserved(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 4)).astype(dtype)
    gamma, beta = rng.normal(size=3).astype(dtype), rng.normal(size=3).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    y, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnsym.batch_norm_backward(dy, x, gamma, mean, invstd)
    for name, value, shape in [("y", y, x.shape), ("mean", mean, (3,)), ("invstd", invstd, (3,)),
                               ("dx", dx, x.shape), ("dgamma", dgamma, (3,)), ("dbeta", dbeta, (3,))]:
        assert value.dtype == dtype, f"{name} came back as {value.dtype}, expected {np.dtype(dtype)}"
        assert value.shape == shape, f"{name} has shape {value.shape}, expected {shape}"


def test_float16_is_computed_in_float32():
    """abs(x) ~ 300 overflows a float16 sum of squares (65504); computed in float32 it is finite and accurate."""
    rng = np.random.default_rng(1)
    x64 = 300 + 30 * rng.normal(size=(64, 2))
    x16 = x64.astype(np.float16)
    y, _, _ = bnsym.batch_norm_forward(x16, np.ones(2, np.float16), np.zeros(2, np.float16))
    assert np.all(np.isfinite(y)), "float16 batch norm overflowed"
    reference, _, _ = bnsym.batch_norm_forward(x16.astype(np.float64), np.ones(2), np.zeros(2))
    assert np.max(np.abs(y.astype(np.float64) - reference)) < 4e-3


def test_nhwc_equals_transposed_nchw():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4, 5))
    gamma, beta, dy = rng.normal(size=3), rng.normal(size=3), rng.normal(size=x.shape)
    nchw = bnsym.batch_norm_forward(x, gamma, beta, axis=1)
    nhwc = bnsym.batch_norm_forward(np.moveaxis(x, 1, -1), gamma, beta, axis=-1)
    np.testing.assert_allclose(np.moveaxis(nhwc[0], -1, 1), nchw[0], rtol=1e-13, atol=1e-13)
    back = bnsym.batch_norm_backward(dy, x, gamma, *nchw[1:], axis=1)
    back_nhwc = bnsym.batch_norm_backward(np.moveaxis(dy, 1, -1), np.moveaxis(x, 1, -1), gamma, *nhwc[1:], axis=-1)
    np.testing.assert_allclose(np.moveaxis(back_nhwc[0], -1, 1), back[0], rtol=1e-12, atol=1e-13)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(3)
    x, gamma, beta, dy = rng.normal(size=(5, 2)), rng.normal(size=2), rng.normal(size=2), rng.normal(size=(5, 2))
    copies = [a.copy() for a in (x, gamma, beta, dy)]
    y, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta)
    bnsym.batch_norm_backward(dy, x, gamma, mean, invstd)
    for original, copy in zip((x, gamma, beta, dy), copies):
        np.testing.assert_array_equal(original, copy)


def test_constant_channel_gives_beta_without_nan():
    x = np.full((6, 2), 1234.5)
    y, _, invstd = bnsym.batch_norm_forward(x, np.array([2.0, -1.0]), np.array([0.5, 3.0]), eps=1e-5)
    np.testing.assert_array_equal(y, np.broadcast_to([0.5, 3.0], (6, 2)))
    assert np.all(np.isfinite(invstd))
