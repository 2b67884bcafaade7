"""Batch norm: every channel normalised over the batch and the spatial positions, with running statistics.

Notation. x has any number of dimensions >= 2; ``axis`` is its channel axis (1 for NCHW, -1 for NHWC) and C the
number of channels. Each channel is one group: its M = x.size / C values (every axis but the channel axis) are
normalised with their own mean and biased variance::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)

``gamma`` and ``beta`` have shape (C,), or are None for no affine part (PyTorch's ``affine=False``, Flax's
``use_scale`` and ``use_bias``); a gradient for a parameter that is None comes back as None. ``mean`` and
``invstd`` have shape (C,); ``invstd`` is 1 / sqrt(var + eps) with the biased batch variance, as saved by PyTorch's
native batch norm. Training refuses one value per channel (PyTorch's rule). float32 and float64 are preserved;
float16 is computed in float32 and returned as float16, except the saved statistics ``mean`` and ``invstd``, which
stay in float32 (as PyTorch's CUDA kernels save them): rounded to float16, a mean near 300 loses its fraction and
the backward that reuses it loses its accuracy.

Batch norm keeps running statistics, so it has an eval mode: :func:`inference` and :func:`inference_backward`
normalise with given ``running_mean`` and ``running_var`` (shape (C,), running_var >= 0), constants, so one value
per channel is allowed and the outputs for one sample do not depend on the rest of the batch;
:func:`double_backward` takes ``training=False`` for eval mode; :func:`update_running_stats` folds a batch's
statistics into the running ones, in each framework's convention (:mod:`bnsym.running_stats`).

The top-level names ``bnsym.batch_norm_forward``, ``batch_norm_backward``, ``batch_norm_inference``,
``batch_norm_inference_backward``, ``batch_norm_double_backward``, ``batch_norm_jvp`` and
``bnsym.update_running_stats`` are these functions. They only validate and arrange axes (through the runtime every
layer shares, :mod:`bnsym.runtime.layer`); all arithmetic is in the generated kernels (``bnsym._generated.batch_norm``),
derived in ``derivations/batch_norm.md``.
"""

from __future__ import annotations

from bnsym.running_stats import DEFAULT
from bnsym.runtime.layer import Layer

# update_running_stats is public (bnsym.update_running_stats) but not a verb of __all__: bnsym.tools.precompile calls
# every
# name of a layer module's __all__ as a kernel verb on x-shaped arguments, and it takes per-channel arrays only.
__all__ = ["backward", "double_backward", "forward", "inference", "inference_backward", "jvp"]

_LAYER = Layer.named("batch_norm")


def forward(x, gamma, beta, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
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
    return _LAYER.run("forward", dict(x=x, gamma=gamma, beta=beta), eps=eps, axis=axis, backend=backend)


def backward(dy, x, gamma, mean, invstd, axis: int = 1, *, backend: str = "auto"):
    """Training-mode backward for the upstream gradient ``dy``.

    ``mean`` and ``invstd`` are the values returned by :func:`forward` (shape (C,)). Returns
    ``(dx, dgamma, dbeta)`` with dx shaped like x and dgamma, dbeta of shape (C,)::

        dx     = gamma * invstd * (dy - sum(dy) / M - x_hat * sum(dy * x_hat) / M)
        dgamma = sum(dy * x_hat)
        dbeta  = sum(dy)

    where x_hat = (x - mean) * invstd and the sums run over each channel's M values. dgamma is None when ``gamma``
    is None; dbeta is always computed (the backward does not see beta: drop it when the layer has no bias).
    """
    return _LAYER.run("backward", dict(dy=dy, x=x, gamma=gamma, mean=mean, invstd=invstd), axis=axis, backend=backend)


def inference(x, gamma, beta, running_mean, running_var, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Eval-mode batch norm: ``y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``.

    The running statistics are read, never changed.
    """
    (y,) = _LAYER.run("forward", dict(x=x, gamma=gamma, beta=beta, running_mean=running_mean,
                                      running_var=running_var), eps=eps, axis=axis, training=False, backend=backend)
    return y


def inference_backward(dy, x, gamma, running_mean, running_var, eps: float = 1e-5, axis: int = 1, *,
                       backend: str = "auto"):
    """Eval-mode backward: ``(dx, dgamma, dbeta)`` with the running statistics held constant::

        dx = gamma * invstd * dy,   dgamma = sum(dy * x_hat),   dbeta = sum(dy)

    where invstd = 1/sqrt(running_var + eps) and x_hat = (x - running_mean) * invstd. dgamma is None when ``gamma``
    is None.
    """
    return _LAYER.run("backward", dict(dy=dy, x=x, gamma=gamma, running_mean=running_mean, running_var=running_var),
                      eps=eps, axis=axis, training=False, backend=backend)


def double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd, axis: int = 1, *, training: bool = True,
                    backend: str = "auto"):
    """Double backward of batch norm: ``(gx, ggamma, gdy)``.

    The cotangents ``ggx`` (shaped like x), ``gggamma`` and ``ggbeta`` (shape (C,)) belong to the first-order
    gradients dx, dgamma, dbeta; the results are the gradients of ``<ggx, dx> + <gggamma, dgamma> + <ggbeta,
    dbeta>`` with respect to x, gamma and dy, as ``torch.autograd.grad(..., create_graph=True)`` would give them.
    Any of the three cotangents may be None, meaning zero; ggamma is None when ``gamma`` is None.

    With ``training=True`` (default), ``mean`` and ``invstd`` are the batch statistics returned by :func:`forward`,
    and they depend on x. With ``training=False`` they are the running mean and ``1/sqrt(running_var + eps)``,
    constants, as in eval mode.
    """
    return _LAYER.run("double_backward", dict(ggx=ggx, gggamma=gggamma, ggbeta=ggbeta, dy=dy, x=x, gamma=gamma,
                                              mean=mean, invstd=invstd), axis=axis, training=training,
                      backend=backend)


def jvp(x, gamma, beta, tx, tgamma, tbeta, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Training-mode forward mode: ``(y, ty)``, the output and its directional derivative along
    ``(tx, tgamma, tbeta)`` (tx shaped like x, tgamma and tbeta of shape (C,); None means zero)."""
    return _LAYER.run("jvp", dict(x=x, gamma=gamma, beta=beta, tx=tx, tgamma=tgamma, tbeta=tbeta), eps=eps,
                      axis=axis, backend=backend)


def update_running_stats(running_mean, running_var, mean, var, count, *, momentum=DEFAULT, convention="torch",
                         num_batches_tracked=None, backend="auto"):
    """The running mean and variance after one batch: ``(new_mean, new_var)``, new arrays of shape (C,), of the
    library of ``running_mean``; the inputs are left untouched.

    ``mean`` and ``var`` are the batch mean and the *biased* batch variance (var = invstd**-2 - eps from
    :func:`forward`), ``count`` the number of values per channel (M). ``convention`` is ``"torch"`` (default),
    ``"keras"``, ``"flax"``, ``"chainer"``, ``"haiku"`` or ``"cumulative"``; ``momentum="default"`` takes the
    convention's own; ``num_batches_tracked`` is the number of batches seen including this one (read by
    ``"cumulative"``, ``"haiku"``, and ``"torch"`` with ``momentum=None``, PyTorch's cumulative average). The
    conventions' formulas are in :mod:`bnsym.running_stats`. ``backend`` as for the other functions (the compiled
    one runs the NumPy kernels here: there is no full-size array to fuse); arrays that JAX may be tracing are not
    checked for negative values.
    """
    return _LAYER.update_running_stats(running_mean, running_var, mean, var, count, momentum=momentum,
                                       convention=convention, num_batches_tracked=num_batches_tracked,
                                       backend=backend)
