"""The property library applied to bnsym's own generated functions, in both channel layouts."""

import numpy as np
import pytest
from hypothesis import given

import bnsym
from bnsym import strategies as bst
from bnsym.testing import check_batchnorm, reference
from bnsym.testing.tolerance import Bound


class BnsymNCHW:
    """bnsym.batch_norm_forward/backward with the channel axis at 1."""

    def forward(self, x, gamma, beta, eps):
        return bnsym.batch_norm_forward(x, gamma, beta, eps=eps, axis=1)[0]

    def backward(self, dy, x, gamma, beta, eps):
        _, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta, eps=eps, axis=1)
        return bnsym.batch_norm_backward(dy, x, gamma, mean, invstd, axis=1)


class BnsymNHWC:
    """The same functions with axis=-1, on the input moved to channels-last (and the result moved back)."""

    def forward(self, x, gamma, beta, eps):
        return np.moveaxis(bnsym.batch_norm_forward(np.moveaxis(x, 1, -1), gamma, beta, eps=eps, axis=-1)[0], -1, 1)

    def backward(self, dy, x, gamma, beta, eps):
        x, dy = np.moveaxis(x, 1, -1), np.moveaxis(dy, 1, -1)
        _, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta, eps=eps, axis=-1)
        dx, dgamma, dbeta = bnsym.batch_norm_backward(dy, x, gamma, mean, invstd, axis=-1)
        return np.moveaxis(dx, -1, 1), dgamma, dbeta


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("impl", [BnsymNCHW, BnsymNHWC], ids=lambda c: c.__name__)
def test_bnsym_satisfies_every_property(impl, dtype):
    report = check_batchnorm(impl(), dtype=dtype, max_examples=20)
    assert not report.skipped


@given(bst.batch_norm_examples(dtype="float32", min_dims=3))
def test_nhwc_result_is_the_transposed_nchw_result(example):
    """Layout equivariance of bnsym itself: axis=-1 on NHWC equals axis=1 on NCHW, transposed, up to the rounding
    of a different summation order."""
    nchw = BnsymNCHW().forward(example.x, example.gamma, example.beta, example.eps)
    nhwc = BnsymNHWC().forward(example.x, example.gamma, example.beta, example.eps)
    ref = reference.forward(example)
    bound = Bound.of(ref, example.dtype, example.gamma, example.beta).forward()
    np.testing.assert_array_less(np.abs(nhwc.astype(np.float64) - nchw), 2 * bound)
