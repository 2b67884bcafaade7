"""The public batch-norm functions: thin hand-written wrappers around the generated kernels.

Notation: x has any number of dimensions >= 2; ``axis`` is its channel axis (1 for NCHW, -1 for NHWC) and C the
number of channels; statistics are taken per channel over every other axis, M = x.size / C values each. Per-channel
arguments and results (gamma, beta, mean, invstd, dgamma, dbeta) have shape (C,). float32 and float64 are
preserved; float16 is computed in float32 and returned as float16, except the saved statistics ``mean`` and
``invstd``, which stay in float32 (as PyTorch's CUDA kernels save them): rounded to float16, a mean near 300 loses
its fraction and the backward that reuses it loses its accuracy. ``invstd`` is 1 / sqrt(var + eps) with the
biased batch variance, as saved by PyTorch's native batch norm.

The wrappers only validate, arrange axes for broadcasting and cast; all arithmetic is in
``bnsym._generated.batch_norm``, derived in ``derivations/batch_norm.md``.
"""

from __future__ import annotations

from bnsym._layout import affine_inputs, gradient_inputs

__all__ = ["batch_norm_backward", "batch_norm_forward"]



def batch_norm_forward(x, gamma, beta, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Training-mode batch norm.

    Returns ``(y, mean, invstd)``: ``y = gamma * (x - mean) * invstd + beta`` with the batch mean and
    ``invstd = 1 / sqrt(var + eps)`` of the biased batch variance, both of shape (C,) and in the dtype the
    arithmetic ran in (float32 for float16 input).

    >>> import numpy as np, bnsym
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> y, mean, invstd = bnsym.batch_norm_forward(x, np.ones(2), np.zeros(2), eps=1e-5, axis=1)
    >>> np.round(y, 4).tolist(), mean.tolist()
    ([[-1.0, -1.0], [1.0, 1.0]], [2.0, 20.0])
    """
    x, layout, eps, dtype, gamma, beta = affine_inputs(x, gamma, beta, eps, axis, backend)
    layout.require_training_batch()
    y, mean, invstd = layout.kernels.batch_norm_forward(layout.cast(x, dtype), gamma, beta, layout.scalar(eps, dtype),
                                                        layout.reducer)
    return layout.cast(y, x.dtype), layout.flat(mean), layout.flat(invstd)


def batch_norm_backward(dy, x, gamma, mean, invstd, axis: int = 1, *, backend: str = "auto"):
    """Training-mode backward for the upstream gradient ``dy``.

    ``mean`` and ``invstd`` are the values returned by :func:`batch_norm_forward` (shape (C,)). Returns
    ``(dx, dgamma, dbeta)`` with dx shaped like x and dgamma, dbeta of shape (C,)::

        dx     = gamma * invstd * (dy - sum(dy) / M - x_hat * sum(dy * x_hat) / M)
        dgamma = sum(dy * x_hat)
        dbeta  = sum(dy)

    where x_hat = (x - mean) * invstd and the sums run over each channel's M values.
    """
    x, layout, dy, dtype = gradient_inputs(dy, x, axis, backend)
    gamma = layout.channel(gamma, "gamma", dtype)
    mean = layout.channel(mean, "mean", dtype)
    invstd = layout.channel(invstd, "invstd", dtype)
    layout.require_training_batch()
    dx, dgamma, dbeta = layout.kernels.batch_norm_backward(layout.cast(dy, dtype), layout.cast(x, dtype), gamma, mean,
                                                          invstd, layout.reducer)
    out = x.dtype
    return layout.cast(dx, out), layout.flat(dgamma, out), layout.flat(dbeta, out)
