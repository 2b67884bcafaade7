"""Eval-mode batch norm: normalise with given running statistics, and its backward pass.

Notation as in :mod:`bnsym.functional`. In eval mode the statistics are constants, so one value per channel is
allowed and the outputs for one sample do not depend on the rest of the batch. ``running_var`` must be >= 0.
Arithmetic is in the generated kernels, derived in ``derivations/batch_norm.md`` (section "Inference mode").
"""

from __future__ import annotations

import numpy as np

from bnsym import _validation as v
from bnsym._layout import Layout, affine_inputs, generated_kernels, gradient_inputs

__all__ = ["batch_norm_inference", "batch_norm_inference_backward"]


def _statistics(layout: Layout, running_mean, running_var, dtype):
    running_mean = layout.channel(running_mean, "running_mean", dtype)
    running_var = layout.channel(running_var, "running_var", dtype)
    if not np.all(running_var >= 0):  # also refuses NaN
        raise ValueError(f"running_var must be >= 0 (and not NaN), got {running_var.reshape(-1)}")
    return running_mean, running_var


def batch_norm_inference(x, gamma, beta, running_mean, running_var, eps: float = 1e-5, axis: int = 1):
    """Eval-mode batch norm: ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``.

    The running statistics are read, never changed.
    """
    x, layout, eps, dtype, gamma, beta = affine_inputs(x, gamma, beta, eps, axis)
    running_mean, running_var = _statistics(layout, running_mean, running_var, dtype)
    y = generated_kernels().batch_norm_inference(x.astype(dtype, copy=False), gamma, beta, running_mean, running_var,
                                        dtype.type(eps))
    return y.astype(x.dtype, copy=False)


def batch_norm_inference_backward(dy, x, gamma, running_mean, running_var, eps: float = 1e-5, axis: int = 1):
    """Eval-mode backward: ``(dx, dgamma, dbeta)`` with the running statistics held constant::

        dx = gamma * invstd * dy,   dgamma = sum(dy * x_hat),   dbeta = sum(dy)

    where invstd = 1/sqrt(running_var + eps) and x_hat = (x - running_mean) * invstd.
    """
    x, layout, dy, dtype = gradient_inputs(dy, x, axis)
    eps = v.check_eps(eps, dtype)
    gamma = layout.channel(gamma, "gamma", dtype)
    running_mean, running_var = _statistics(layout, running_mean, running_var, dtype)
    dx, dgamma, dbeta = generated_kernels().batch_norm_inference_backward(
        dy.astype(dtype, copy=False), x.astype(dtype, copy=False), gamma, running_mean, running_var,
        dtype.type(eps), layout.reducer)
    out = x.dtype
    return dx.astype(out, copy=False), dgamma.reshape(-1).astype(out), dbeta.reshape(-1).astype(out)
