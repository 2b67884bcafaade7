"""A batch norm written by hand in NumPy: the kind of implementation `bnsym check` is for.

    bnsym check examples/my_batchnorm.py:MyBatchNorm
    bnsym check examples/my_batchnorm.py:MyBatchNorm --dtype float32

or, in a pytest test, ``bnsym.testing.check_batchnorm(MyBatchNorm())``. ``FastBatchNorm`` below computes the
variance as E[x^2] - E[x]^2, a bug that real frameworks shipped; the checker catches it in float32.
"""

import numpy as np


class MyBatchNorm:
    """Training-mode batch norm over NCHW-style input (channel axis 1), with its backward pass."""

    @staticmethod
    def _stats(x, eps):
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        return axes, mean, 1 / np.sqrt(var + eps)

    @staticmethod
    def _per_channel(v, x):
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, x, gamma, beta, eps):
        _, mean, invstd = self._stats(x, eps)
        return self._per_channel(gamma, x) * (x - mean) * invstd + self._per_channel(beta, x)

    def backward(self, dy, x, gamma, beta, eps):
        axes, mean, invstd = self._stats(x, eps)
        x_hat = (x - mean) * invstd
        m = x.size // x.shape[1]
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * x_hat).sum(axis=axes)
        dx = self._per_channel(gamma, x) * invstd * (dy - self._per_channel(dbeta, x) / m
                                                     - x_hat * self._per_channel(dgamma, x) / m)
        return dx, dgamma, dbeta


class FastBatchNorm(MyBatchNorm):
    """The same, with the one-pass variance E[x^2] - E[x]^2: fast, and wrong in float32 for large offsets."""

    @staticmethod
    def _stats(x, eps):
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = np.maximum((x * x).mean(axis=axes, keepdims=True) - mean * mean, 0)
        return axes, mean, 1 / np.sqrt(var + eps)
