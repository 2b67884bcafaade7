"""NumPy baselines for the benchmark: what people write by hand. Not library code, and not generated.

Both take the same arguments as the generated kernels' callers: ``axes`` are the reduced axes, per-channel arrays
(gamma, mean, invstd) are shaped for broadcasting, ``count`` is M, the number of values per channel.
"""

from __future__ import annotations

import numpy as np


def staged_backward(dy, x, gamma, mean, invstd, axes, count):
    """The computational-graph backward of the tutorials: one node, and one full-size array, per operation."""
    xmu = x - mean
    ivar = invstd
    sqrtvar = 1 / invstd
    xhat = xmu * ivar
    dbeta = np.sum(dy, axis=axes, keepdims=True)
    dgamma = np.sum(dy * xhat, axis=axes, keepdims=True)
    dxhat = dy * gamma
    divar = np.sum(dxhat * xmu, axis=axes, keepdims=True)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1 / sqrtvar**2 * divar
    dvar = 0.5 * invstd * dsqrtvar
    dsq = np.ones_like(x) / count * dvar
    dxmu2 = 2 * xmu * dsq
    dmu = -1 * np.sum(dxmu1 + dxmu2, axis=axes, keepdims=True)
    dx2 = np.ones_like(x) / count * dmu
    dx = dxmu1 + dxmu2 + dx2
    return dx, dgamma, dbeta


def compact_forward(x, gamma, beta, eps, axes, count):
    """Two-pass statistics and y in one expression."""
    mean = np.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    invstd = 1 / np.sqrt(np.mean(centred * centred, axis=axes, keepdims=True) + eps)
    return gamma * invstd * centred + beta, mean, invstd


def compact_backward(dy, x, gamma, mean, invstd, axes, count):
    """The closed form, written once by hand the usual way."""
    xhat = (x - mean) * invstd
    dbeta = np.sum(dy, axis=axes, keepdims=True)
    dgamma = np.sum(dy * xhat, axis=axes, keepdims=True)
    dx = gamma * invstd / count * (count * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta
