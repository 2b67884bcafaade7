"""A layer norm written by hand in NumPy, in the protocol `bnsym check --layer layer_norm` takes.

    bnsym check examples/my_layer_norm.py:MyLayerNorm --layer layer_norm --dtype float32

or, in a pytest test, ``bnsym.testing.check_normalization(MyLayerNorm(), layer="layer_norm")``. The normalised
axes are the trailing axes of x that gamma's shape names (``torch.nn.functional.layer_norm``'s
``normalized_shape``). ``LastAxisLayerNorm`` below normalises over the last axis only, whatever gamma's shape: a
kernel ported from a transformer's (N, T, D) layer norm to a (N, C, H, W) one ships it, and the checker catches it.
"""

import numpy as np


class MyLayerNorm:
    """Training-mode layer norm over the trailing axes gamma covers, with its backward pass."""

    @staticmethod
    def _axes(x, gamma):
        return tuple(range(x.ndim - gamma.ndim, x.ndim))

    def _normalised(self, x, gamma, eps):
        axes = self._axes(x, gamma)
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        invstd = 1 / np.sqrt(var + eps)
        return axes, (x - mean) * invstd, invstd

    def forward(self, x, gamma, beta, eps):
        _, x_hat, _ = self._normalised(x, gamma, eps)
        return gamma * x_hat + beta

    def backward(self, dy, x, gamma, beta, eps):
        axes, x_hat, invstd = self._normalised(x, gamma, eps)
        rows = tuple(range(x.ndim - gamma.ndim))  # gamma and beta are shared by every row: sum over the rows
        g = gamma * dy
        dx = invstd * (g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))
        return dx, (dy * x_hat).sum(axis=rows), dy.sum(axis=rows)


class LastAxisLayerNorm(MyLayerNorm):
    """The bug: statistics over the last axis only, even when gamma names two axes or more."""

    @staticmethod
    def _axes(x, gamma):
        return (x.ndim - 1,)
