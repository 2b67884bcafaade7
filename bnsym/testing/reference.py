"""The references the properties compare against, computed from bnsym's own derivation.

- :func:`forward` and :func:`backward`: bnsym's generated kernels run in float64 on the example's inputs (already
  rounded to the dtype under test), so a float32 implementation is compared with what it should have computed
  from the very values it was given; the reference's own error (about 1e-16 relative) is far below any float32
  bound and is part of the float64 bound in :mod:`bnsym.testing.tolerance`.
- :func:`exact`: the derived SymPy expressions, instantiated for a small group of M values
  (:func:`bnsym.symbolic.brute_force.instantiate`) and evaluated with mpmath at 50 significant digits on the exact
  binary values of the inputs: a reference with no rounding error that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

import bnsym
from bnsym.testing.strategies import Example

__all__ = ["EXACT_MAX_COUNT", "ForwardReference", "backward", "exact", "forward"]

EXACT_MAX_COUNT = 6  # the SymPy expressions grow with M; beyond a handful of values float64 is exact enough


@dataclass(frozen=True)
class ForwardReference:
    """Per-channel statistics and outputs in float64; per-channel arrays have shape (1, C, 1, ...)."""

    y: np.ndarray
    x_hat: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    invstd: np.ndarray
    count: int


def _per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    return values.reshape((1, -1) + (1,) * (ndim - 2))


def forward(example: Example, *, x=None, gamma=None, beta=None, eps=None) -> ForwardReference:
    """The float64 reference for ``example``, or for it with some inputs replaced."""
    x = np.asarray(example.x if x is None else x, dtype=np.float64)
    gamma = np.asarray(example.gamma if gamma is None else gamma, dtype=np.float64)
    beta = np.asarray(example.beta if beta is None else beta, dtype=np.float64)
    eps = example.eps if eps is None else eps
    axes = (0,) + tuple(range(2, x.ndim))
    if x.size == x.shape[1]:
        # One value per channel: the public function refuses training there (PyTorch's rule), but the definition
        # holds at M = 1: mean = x, var = 0, x_hat = 0, y = beta.
        mean = x.reshape(_per_channel(gamma, x.ndim).shape)
        invstd = np.broadcast_to(1 / np.sqrt(np.float64(eps)), mean.shape)
        y = np.broadcast_to(_per_channel(beta, x.ndim), x.shape).copy()
        return ForwardReference(y, np.zeros_like(x), mean, np.zeros_like(mean), invstd, 1)
    y, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta, eps=eps, axis=1, backend="numpy")
    mean, invstd = _per_channel(mean, x.ndim), _per_channel(invstd, x.ndim)
    # The variance itself, two-pass: 1/invstd^2 - eps would lose it when var << eps.
    var = np.mean((x - mean) ** 2, axis=axes, keepdims=True)
    return ForwardReference(y, (x - mean) * invstd, mean, var, invstd, x.size // x.shape[1])


def backward(example: Example, *, dy=None, x=None, gamma=None, eps=None):
    """(dx, dgamma, dbeta) in float64 from bnsym's generated backward."""
    x = np.asarray(example.x if x is None else x, dtype=np.float64)
    gamma = np.asarray(example.gamma if gamma is None else gamma, dtype=np.float64)
    dy = np.asarray(example.dy if dy is None else dy, dtype=np.float64)
    eps = example.eps if eps is None else eps
    _, mean, invstd = bnsym.batch_norm_forward(x, gamma, np.zeros_like(gamma), eps=eps, axis=1, backend="numpy")
    return bnsym.batch_norm_backward(dy, x, gamma, mean, invstd, axis=1, backend="numpy")


@cache
def _exact_functions(n: int):
    """mpmath functions of (x_0..x_{n-1}, dy_0..dy_{n-1}, gamma, beta, eps) -> [y_0.., dx_0.., dgamma, dbeta]."""
    import sympy

    from bnsym.symbolic import batch_norm as bn
    from bnsym.symbolic.brute_force import Elements, instantiate

    s = bn.SYMBOLS
    program, closed = bn.backward()
    dx_name, dgamma_name, dbeta_name = program.outputs
    forward_program = bn.training_forward()
    elements = Elements(n)
    outputs = [instantiate(s.y, elements, i, forward_program) for i in range(n)]
    outputs += [instantiate(closed[dx_name], elements, i, forward_program) for i in range(n)]
    outputs += [instantiate(closed[name], elements, 0, forward_program) for name in (dgamma_name, dbeta_name)]
    arguments = [*elements[s.x], *elements[s.dy], s.gamma, s.beta, s.eps]
    return sympy.lambdify(arguments, outputs, modules="mpmath")


def exact(example: Example, digits: int = 50):
    """(y, dx, dgamma, dbeta) of ``example`` from the derived expressions in mpmath, as float64 arrays.

    Every input float converts to mpmath exactly; the only rounding is the final conversion to float64.
    """
    import mpmath

    n = example.count
    if n > EXACT_MAX_COUNT:
        raise ValueError(f"the exact reference is for M <= {EXACT_MAX_COUNT} values per channel, got M = {n}")
    function = _exact_functions(n)
    channels = example.channels
    moved = lambda a: np.moveaxis(np.asarray(a, dtype=np.float64), 1, 0).reshape(channels, n)  # noqa: E731
    xs, dys = moved(example.x), moved(example.dy)
    y, dx = np.empty((channels, n)), np.empty((channels, n))
    dgamma, dbeta = np.empty(channels), np.empty(channels)
    with mpmath.workdps(digits):
        for c in range(channels):
            args = [mpmath.mpf(float(v)) for v in (*xs[c], *dys[c], example.gamma[c], example.beta[c], example.eps)]
            values = [float(v) for v in function(*args)]
            y[c], dx[c] = values[:n], values[n:2 * n]
            dgamma[c], dbeta[c] = values[2 * n:]
    shape = np.moveaxis(example.x, 1, 0).shape
    back = lambda a: np.moveaxis(a.reshape(shape), 0, 1)  # noqa: E731
    return back(y), back(dx), dgamma, dbeta
