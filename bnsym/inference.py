"""Eval-mode batch norm: normalise with given running statistics, and its backward pass.

Notation as in :mod:`bnsym.functional`. In eval mode the statistics are constants, so one value per channel is
allowed and the outputs for one sample do not depend on the rest of the batch. ``running_var`` must be >= 0.
Arithmetic is in the generated kernels, derived in ``derivations/batch_norm.md`` (section "Inference mode").
"""

from __future__ import annotations

from bnsym import _validation as v
from bnsym._layout import Layout, affine_inputs, gradient_inputs

__all__ = ["batch_norm_inference", "batch_norm_inference_backward"]


def _statistics(layout: Layout, running_mean, running_var, dtype):
    running_mean = layout.channel(running_mean, "running_mean", dtype)
    running_var = layout.channel(running_var, "running_var", dtype)
    if not layout.all_nonnegative(running_var):  # also refuses NaN
        raise ValueError(f"running_var must be >= 0 (and not NaN), got {layout.flat(running_var)}")
    return running_mean, running_var


def batch_norm_inference(x, gamma, beta, running_mean, running_var, eps: float = 1e-5, axis: int = 1, *,
                         backend: str = "auto"):
    """Eval-mode batch norm: ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``.

    The running statistics are read, never changed.
    """
    x, layout, eps, dtype, gamma, beta = affine_inputs(x, gamma, beta, eps, axis, backend)
    running_mean, running_var = _statistics(layout, running_mean, running_var, dtype)
    y = layout.kernels.batch_norm_inference(layout.cast(x, dtype), gamma, beta, running_mean, running_var,
                                            layout.scalar(eps, dtype))
    return layout.cast(y, x.dtype)


def batch_norm_inference_backward(dy, x, gamma, running_mean, running_var, eps: float = 1e-5, axis: int = 1, *,
                                  backend: str = "auto"):
    """Eval-mode backward: ``(dx, dgamma, dbeta)`` with the running statistics held constant::

        dx = gamma * invstd * dy,   dgamma = sum(dy * x_hat),   dbeta = sum(dy)

    where invstd = 1/sqrt(running_var + eps) and x_hat = (x - running_mean) * invstd.
    """
    x, layout, dy, dtype = gradient_inputs(dy, x, axis, backend)
    eps = v.check_eps(eps, layout.numpy_dtype(dtype))
    gamma = layout.channel(gamma, "gamma", dtype)
    running_mean, running_var = _statistics(layout, running_mean, running_var, dtype)
    dx, dgamma, dbeta = layout.kernels.batch_norm_inference_backward(
        layout.cast(dy, dtype), layout.cast(x, dtype), gamma, running_mean, running_var, layout.scalar(eps, dtype),
        layout.reducer)
    out = x.dtype
    return layout.cast(dx, out), layout.flat(dgamma, out), layout.flat(dbeta, out)
