"""The public functions against PyTorch autograd, in float64, on random shapes and both channel layouts."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.backends import VIAS

RTOL = 1e-12


@st.composite
def problems(draw):
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    channel_axis = draw(st.sampled_from([1, -1]))
    channels = shape[channel_axis]
    if np.prod(shape) // channels < 2:  # training needs two values per channel; axis 0 is never the channel
        shape = (2,) + shape[1:]
    seed = draw(st.integers(0, 2**32 - 1))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return shape, channel_axis, seed, eps


def _close(actual, expected, what, scale=0.0):
    """max|actual - expected| <= RTOL * max(max|expected|, scale).

    ``scale`` is the size of the terms that the result is computed from, where they cancel: with M = 2 values per
    channel, dx is a factor eps/(var + eps) smaller than gamma * invstd * dy, and two correct implementations
    can only agree to RTOL relative to the terms, not to the cancelled result.
    """
    scale = max(np.max(np.abs(expected)), scale, 1e-300)
    error = np.max(np.abs(actual - expected)) / scale
    assert error <= RTOL, f"{what}: max error {error:.2e} relative to {scale:.2e} exceeds {RTOL:.0e}"


def _torch_reference(x, gamma, beta, dy, eps, axis):
    xt = torch.tensor(np.moveaxis(x, axis, 1), requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    yt.backward(torch.tensor(np.moveaxis(dy, axis, 1)))
    back = lambda t: np.moveaxis(t.detach().numpy(), 1, axis)  # noqa: E731
    return back(yt), back(xt.grad), gt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("via", VIAS, ids=str)
@given(problems())
def test_forward_and_backward_match_torch_autograd(via, problem):
    shape, axis, seed, eps = problem
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.normal(0, 3), rng.uniform(0.1, 3), size=shape)
    channels = shape[axis]
    gamma, beta = rng.normal(size=channels), rng.normal(size=channels)
    dy = rng.normal(size=shape)  # random, never ones: the gradient of sum(y) is zero
    y, mean, invstd = via.batch_norm_forward(x, gamma, beta, eps=eps, axis=axis)
    dx, dgamma, dbeta = via.batch_norm_backward(dy, x, gamma, mean, invstd, axis=axis)
    y_ref, dx_ref, dgamma_ref, dbeta_ref = _torch_reference(x, gamma, beta, dy, eps, axis)
    _close(y, y_ref, f"y, shape {shape}, axis {axis}")
    broadcast = [1] * len(shape)
    broadcast[axis] = channels
    terms = np.max(np.abs(gamma.reshape(broadcast) * invstd.reshape(broadcast) * dy))
    _close(dx, dx_ref, f"dx, shape {shape}, axis {axis}", scale=terms)
    # dgamma and dbeta are sums over a channel's M values that may cancel: they agree to RTOL of their terms' size.
    reduced = tuple(a for a in range(len(shape)) if a != axis % len(shape))
    x_hat = (x - mean.reshape(broadcast)) * invstd.reshape(broadcast)
    _close(dgamma, dgamma_ref, f"dgamma, shape {shape}, axis {axis}",
           scale=np.max(np.sum(np.abs(dy * x_hat), axis=reduced)))
    _close(dbeta, dbeta_ref, f"dbeta, shape {shape}, axis {axis}", scale=np.max(np.sum(np.abs(dy), axis=reduced)))


@pytest.mark.parametrize("via", VIAS, ids=str)
@pytest.mark.parametrize("axis", [1, -1], ids=["NCHW", "NHWC"])
def test_saved_statistics_match_torch_native_batch_norm(axis, via):
    rng = np.random.default_rng(7)
    x = rng.normal(5, 2, size=(4, 3, 5, 6))
    if axis == -1:
        x = np.moveaxis(x, 1, -1)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    _, mean, invstd = via.batch_norm_forward(x, gamma, beta, eps=1e-3, axis=axis)
    _, mean_ref, invstd_ref = torch.ops.aten.native_batch_norm(
        torch.tensor(np.moveaxis(x, axis, 1)), torch.tensor(gamma), torch.tensor(beta), None, None, True, 0.1, 1e-3)
    _close(mean, mean_ref.numpy(), "mean")
    _close(invstd, invstd_ref.numpy(), "invstd")
