"""The property library applied to bnsym's own generated functions, in both channel layouts."""

import numpy as np
import pytest
from hypothesis import given

import bnsym
from bnsym.testing import check_batchnorm, reference
from bnsym.testing import strategies as bst
from bnsym.testing.tolerance import Bound
from tests import budget
from tests.backends import VIAS

NUMBA = next(via for via in VIAS if via.name == "numba")


class BnsymNCHW:
    """bnsym.batch_norm_forward/backward with the channel axis at 1 (through a backend variant of
    tests/backends.py, or bnsym's own default)."""

    def __init__(self, via=bnsym):
        self.via = via

    def forward(self, x, gamma, beta, eps):
        return self.via.batch_norm_forward(x, gamma, beta, eps=eps, axis=1)[0]

    def backward(self, dy, x, gamma, beta, eps):
        _, mean, invstd = self.via.batch_norm_forward(x, gamma, beta, eps=eps, axis=1)
        return self.via.batch_norm_backward(dy, x, gamma, mean, invstd, axis=1)


class BnsymNHWC(BnsymNCHW):
    """The same functions with axis=-1, on the input moved to channels-last (and the result moved back)."""

    def forward(self, x, gamma, beta, eps):
        y = self.via.batch_norm_forward(np.ascontiguousarray(np.moveaxis(x, 1, -1)), gamma, beta, eps=eps, axis=-1)
        return np.moveaxis(y[0], -1, 1)

    def backward(self, dy, x, gamma, beta, eps):
        x, dy = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1))
        _, mean, invstd = self.via.batch_norm_forward(x, gamma, beta, eps=eps, axis=-1)
        dx, dgamma, dbeta = self.via.batch_norm_backward(dy, x, gamma, mean, invstd, axis=-1)
        return np.moveaxis(dx, -1, 1), dgamma, dbeta


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("impl", [BnsymNCHW, BnsymNHWC], ids=lambda c: c.__name__)
def test_bnsym_satisfies_every_property(impl, dtype):
    """The compiled backend, named (the suite turns off auto's background compilation, so "auto" would run the
    NumPy kernels or the compiled ones depending on which tests ran before)."""
    NUMBA.require()
    report = check_batchnorm(impl(NUMBA), dtype=dtype, max_examples=budget.COMPILED)
    assert not report.skipped


@pytest.mark.parametrize(("impl", "dtype"), [(BnsymNCHW, "float32"), (BnsymNHWC, "float64")],
                         ids=["NCHW-float32", "NHWC-float64"])
@pytest.mark.parametrize("via", [v for v in VIAS if v.name != "numba"], ids=str)
def test_every_backend_satisfies_every_property(via, impl, dtype):
    """The other backends (numba is the default above), fewer examples: every property, both layouts."""
    via.require()
    report = check_batchnorm(impl(via), dtype=dtype, max_examples=budget.OTHER_BACKENDS)
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
