"""Keeping a drawn example's exact gradients within the range of its dtype.

The checker asks whether an implementation's arithmetic in a dtype is right. Where the exact result is beyond the
largest finite value of the dtype, every implementation overflows, rightly, and nothing is learnt: a float16
group norm's dx on a constant group with eps = 1e-12 is gamma dy / sqrt(1e-12) = 1e6 gamma dy, past float16's
65504 for any dy of order 1. So an example's upstream gradient dy is scaled by a power of two (exactly, keeping
its pattern) until an upper bound on every first-order gradient is within the dtype's range, with room to spare.

The bound holds for every layer of the family (centred or not), from the layout alone: in a group with
s = 1/sqrt(var + eps) (which bounds RMS norm's 1/sqrt(ms + eps) too, since ms >= var) and x_hat bounded by the
larger of |x - mean| s and |x| / sqrt(ms + eps),

- |dx| <= |gamma| s (max|dy| + mean|dy| + max|x_hat| sqrt(mean dy^2)),  (dx = gamma s (dy - mean(dy) - x_hat
  mean(dy x_hat)), Cauchy-Schwarz with mean(x_hat^2) <= 1)
- |dgamma| <= the sum of |dy| |x_hat| over the values sharing a parameter, |dbeta| <= the sum of |dy| there.
"""

from __future__ import annotations

import numpy as np

from bnsym.spec.layout import GroupLayout

__all__ = ["HEADROOM", "dy_scale"]

#: How far below the dtype's largest value the bound must stay: room for an implementation's intermediate terms.
HEADROOM = 64.0


def dy_scale(layout: GroupLayout, x: np.ndarray, gamma: np.ndarray, dy: np.ndarray, eps: float, dtype) -> float:
    """The power of two (at most 1) to multiply dy by so that the first-order gradients of the example are within
    ``dtype``'s range with :data:`HEADROOM` to spare. ``x``, ``gamma`` and ``dy`` are as the implementation sees
    them (already rounded to ``dtype``), shaped as ``layout`` says (x and dy like x, gamma the parameter shape)."""
    limit = float(np.finfo(dtype).max) / HEADROOM
    xg = np.asarray(x, np.float64).reshape(layout.grouped)
    dyg = np.abs(np.asarray(dy, np.float64).reshape(layout.grouped))
    gamma_max = float(np.max(np.abs(np.asarray(gamma, np.float64)), initial=0.0))
    axes = layout.axes
    with np.errstate(all="ignore"):
        mean = xg.mean(axis=axes, keepdims=True)
        var = ((xg - mean) ** 2).mean(axis=axes, keepdims=True)
        s = 1 / np.sqrt(var + eps)
        x_hat = np.maximum(np.abs(xg - mean) * s, np.abs(xg) / np.sqrt((xg * xg).mean(axis=axes, keepdims=True) + eps))
        dx = gamma_max * s * (dyg.max(axis=axes, keepdims=True) + dyg.mean(axis=axes, keepdims=True)
                              + x_hat.max(axis=axes, keepdims=True) * np.sqrt((dyg * dyg).mean(axis=axes,
                                                                                                keepdims=True)))
        dgamma = (dyg * x_hat).sum(axis=layout.parameter_axes)
        dbeta = dyg.sum(axis=layout.parameter_axes)
    bound = max(float(np.max(a, initial=0.0)) for a in (dx, dgamma, dbeta))
    if not np.isfinite(bound) or bound <= limit:
        return 1.0
    return float(2.0 ** -np.ceil(np.log2(bound / limit)))
