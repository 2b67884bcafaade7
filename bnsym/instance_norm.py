"""Instance norm: every channel of every sample normalised over its spatial positions.

Notation. x is (N, C, *spatial) with the channel axis ``axis`` (1 by default; -1 for channel-last input such as
Flax's, or any axis but 0, the batch axis). Each sample's channel, M = prod(spatial) values, is normalised with its
own mean and biased variance::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)

``gamma`` and ``beta`` have shape (C,), or are None for no affine part (PyTorch's default ``affine=False``; then the
gradient for it is None); ``mean`` and ``invstd`` have shape (N, C). dgamma and dbeta sum over the samples and the
spatial positions. As PyTorch, a spatial size of 1 is refused (every output would be beta). float32 and float64 are
preserved; float16 is computed in float32, and the saved statistics stay float32. The default eps is PyTorch's 1e-5
(Flax's is 1e-6; docs/conventions.md). Only the training form, with batch statistics: PyTorch's running statistics
(``track_running_stats=True``) are not part of this module.

These functions only validate and arrange axes; all arithmetic is in the generated kernels
(``bnsym._generated.instance_norm``), derived in ``derivations/instance_norm.md``.
"""

from __future__ import annotations

from bnsym.runtime.layer import Layer

__all__ = ["backward", "double_backward", "forward", "jvp"]

_LAYER = Layer.named("instance_norm")


def forward(x, gamma, beta, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Instance norm of x: ``(y, mean, invstd)`` with the statistics of shape (N, C).

    >>> import numpy as np, bnsym
    >>> x = np.array([[[1.0, 3.0], [10.0, 30.0]]])      # N = 1, C = 2, one spatial axis of 2
    >>> y, mean, invstd = bnsym.instance_norm.forward(x, None, None, eps=1e-12)
    >>> np.round(y, 6).tolist(), mean.tolist()
    ([[[-1.0, 1.0], [-1.0, 1.0]]], [[2.0, 20.0]])
    """
    return _LAYER.run("forward", dict(x=x, gamma=gamma, beta=beta), eps=eps, axis=axis, backend=backend)


def backward(dy, x, gamma, mean, invstd, axis: int = 1, *, backend: str = "auto"):
    """The gradients for the upstream gradient ``dy``: ``(dx, dgamma, dbeta)``, from the ``mean`` and ``invstd``
    that :func:`forward` returned. dgamma is None when ``gamma`` is None; dbeta is always computed (the backward
    does not see beta: drop it when the layer has no bias)."""
    return _LAYER.run("backward", dict(dy=dy, x=x, gamma=gamma, mean=mean, invstd=invstd), axis=axis, backend=backend)


def double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd, axis: int = 1, *, backend: str = "auto"):
    """The double backward: the gradients of ``<ggx, dx> + <gggamma, dgamma> + <ggbeta, dbeta>`` with respect to
    x, gamma and dy, ``(gx, ggamma, gdy)``. Any cotangent may be None, meaning zero; ggamma is None when ``gamma``
    is None."""
    return _LAYER.run("double_backward", dict(ggx=ggx, gggamma=gggamma, ggbeta=ggbeta, dy=dy, x=x, gamma=gamma,
                                              mean=mean, invstd=invstd), axis=axis, backend=backend)


def jvp(x, gamma, beta, tx, tgamma, tbeta, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Forward mode: ``(y, ty)``, the output and its directional derivative along ``(tx, tgamma, tbeta)`` (tx
    shaped like x, tgamma and tbeta of shape (C,); None means zero)."""
    return _LAYER.run("jvp", dict(x=x, gamma=gamma, beta=beta, tx=tx, tgamma=tgamma, tbeta=tbeta), eps=eps,
                      axis=axis, backend=backend)
