"""Error bounds for a correct batch norm, per dtype and per input: the tolerances of every property.

Notation (per channel): M values, mean mu, biased variance var, s = 1/sqrt(var + eps), x_hat = (x - mu) s,
u = the unit roundoff of the dtype under test (2^-24 for float32, 2^-53 for float64, 2^-11 for float16) plus that
of the float64 reference. All statistics come from the float64 reference on the inputs as given (already rounded
to the dtype), so a bound is about the arithmetic of the implementation, never about rounding its inputs.

The model of a correct implementation (two-pass, Welford, or any blocked/pairwise variant; any summation order):

- A sum of M terms of random sign pattern is off by about k(M) u times the sum of their magnitudes, with
  k(M) = 2 + log2(M) + sqrt(M): log2(M) covers pairwise summation, sqrt(M) the random-walk growth of the rounding
  errors of sequential summation (NumPy along a strided axis, PyTorch's CPU kernels, any Welford loop).
- The worst case, (M - 1) u (Higham, Accuracy and Stability of Numerical Algorithms, section 4.2), is reached
  when the rounding errors all have one sign: when the values are (nearly) identical, so that nothing randomises
  the low bits of the partial sums. A constant channel of 61.26 summed sequentially in float32 with M = 1610
  gives a mean 250 ulps off, which the sqrt(M) model calls a bug. So a channel whose spread sigma is below
  4 sqrt(M) u |mu| (the size of the low bits of its partial sums) gets k(M) + M for its mean; so does one whose
  sigma is below 2 M u_64 |mu|, the float64 reference's own error for a constant channel (its var is then not 0).
- The mean is then off by up to k u (|mu| + sigma), and x - mean carries that error whole: centring cannot
  remove an error made in the mean. In units of x_hat, that is the per-channel error

      delta = u (k_mean |mu| + k sigma) / sqrt(var + eps) + k u,

  which grows with |mu|/sigma, the condition number of the variance, and with M. The last term is the relative
  error of s and of x - mean. For 1e4 + N(0, 1) in float32, delta is about 6e-4 k: a correct implementation
  loses three digits. E[x^2] - E[x]^2 instead makes an error of about k u (mu/sigma)^2 in var (its sums are as
  inexact, and then cancel), which is |mu|/sigma times delta: all the digits. That gap is what checks resolve.
- y = gamma x_hat + beta: |dy_error| <= S (|gamma| delta (1 + |x_hat|) + u (|beta| + |y|)).
- dx = gamma s (dy - mean(dy) - x_hat mean(dy x_hat)): with D = mean|dy|, P = mean|dy x_hat| and the terms'
  size T = |gamma| s (|dy| + D + |x_hat| P), the error is at most
  S ((k u + delta) T + |gamma| s delta (P + (1 + |x_hat|) D)): rounding of every term, plus the error of x_hat
  and of s propagated through both reductions.
- dgamma = sum(dy x_hat): S (k u sum|dy x_hat| + delta sum|dy| (1 + |x_hat|)); dbeta = sum(dy): S k u sum|dy|.

S = SAFETY is the safety factor. Properties that combine outputs (sum(dx) = 0, an equivariance comparing two
runs) add these elementwise bounds with the triangle inequality, so no identity needs a tolerance of its own.
The bounds are tested both ways in tests/testing: correct implementations stay inside in every regime, and each
planted bug leaves them. docs/tolerances.md explains the choices at more length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SAFETY", "Bound", "growth", "unit_roundoff"]

SAFETY = 8.0


def unit_roundoff(dtype) -> float:
    """Half the machine epsilon of ``dtype``: the largest relative error of one correctly rounded operation."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def growth(count: int) -> float:
    """k(M): how much the error of a length-M reduction can exceed one rounding (module docstring)."""
    return 2.0 + math.log2(max(count, 1)) + math.sqrt(count)


@dataclass(frozen=True)
class Bound:
    """Error bounds of a correct implementation running in ``dtype`` on the inputs behind ``reference``."""

    reference: object  # per-group y, x_hat, mean, var, invstd, count: a bnsym.testing.reference.GroupReference
    dtype: np.dtype
    gamma: np.ndarray  # per channel, shape (1, C, 1, ...)
    beta: np.ndarray

    @classmethod
    def of(cls, reference, dtype, gamma, beta) -> Bound:
        shape = reference.mean.shape
        return cls(reference, np.dtype(dtype), np.asarray(gamma, np.float64).reshape(shape),
                   np.asarray(beta, np.float64).reshape(shape))

    @property
    def u(self) -> float:
        return unit_roundoff(self.dtype) + unit_roundoff(np.float64)

    @property
    def k(self) -> float:
        return growth(self.reference.count)

    @property
    def tiny(self) -> float:
        # Results that underflow to subnormals are only accurate to the smallest normal number.
        return float(np.finfo(self.dtype).tiny) * 16

    @property
    def mean_error(self) -> np.ndarray:
        """The error of the batch mean, per channel (shape (1, C, 1, ...)): k u (|mu| + sigma), with the worst-case
        growth for (nearly) constant channels (module docstring)."""
        r = self.reference
        sigma, magnitude = np.sqrt(r.var), np.abs(r.mean)
        # (Nearly) constant in the dtype under test, or constant up to the float64 reference's own mean error.
        near_constant = sigma <= np.maximum(4 * math.sqrt(r.count) * self.u,
                                            2 * r.count * unit_roundoff(np.float64)) * magnitude
        k_mean = self.k + np.where(near_constant, r.count, 0)
        return self.u * (k_mean * magnitude + self.k * sigma)

    @property
    def var_error(self) -> np.ndarray:
        """The error of the biased batch variance, per channel: k u var for the sum of squares, plus what an error
        e in the centre does to it (2 sigma e + e^2: two-pass gives var + e^2, shifted or Welford-style updates
        first order in e)."""
        e = self.mean_error
        return self.k * self.u * self.reference.var + 2 * np.sqrt(self.reference.var) * e + e**2

    @property
    def delta(self) -> np.ndarray:
        """The error of x_hat, per channel (shape (1, C, 1, ...))."""
        return self.mean_error * self.reference.invstd + self.u * self.k

    def forward(self) -> np.ndarray:
        """Elementwise bound on |y - y_exact|."""
        r = self.reference
        return SAFETY * (np.abs(self.gamma) * self.delta * (1 + np.abs(r.x_hat))
                         + self.u * (np.abs(self.beta) + np.abs(r.y))) + self.tiny

    def backward(self, dy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bounds on |dx - dx_exact| (elementwise), |dgamma - ...| and |dbeta - ...| (shape (C,))."""
        r = self.reference
        dy = np.abs(np.asarray(dy, dtype=np.float64))
        axes = (0,) + tuple(range(2, dy.ndim))
        xh = np.abs(r.x_hat)
        d = np.mean(dy, axis=axes, keepdims=True)
        p = np.mean(dy * xh, axis=axes, keepdims=True)
        scale = np.abs(self.gamma) * r.invstd
        terms = scale * (dy + d + xh * p)
        dx = SAFETY * ((self.k * self.u + self.delta) * terms + scale * self.delta * (p + (1 + xh) * d)) + self.tiny
        dgamma = SAFETY * (self.k * self.u * np.sum(dy * xh, axis=axes)
                           + self.delta.reshape(-1) * np.sum(dy * (1 + xh), axis=axes)) + self.tiny
        dbeta = SAFETY * self.k * self.u * np.sum(dy, axis=axes) + self.tiny
        return dx, dgamma, dbeta
