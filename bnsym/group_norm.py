"""Group norm: the channels of every sample split into groups, each group normalised with its spatial positions.

Notation. x is (N, C, *spatial) with the channel axis ``axis`` (1 by default; -1 for channel-last input such as
Flax's, or any axis but 0, the batch axis). The C channels are split into ``num_groups`` = G contiguous groups of
C/G channels (channels 0 .. C/G - 1 form group 0, as in PyTorch and Flax); x is seen as (N, G, C/G, *spatial) and
each sample's group, M = C/G * prod(spatial) values, is normalised with its own mean and biased variance::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)

``gamma`` and ``beta`` have one value per channel, shape (C,) (None for no affine part: then the gradient for it is
None); ``mean`` and ``invstd`` have shape (N, G). dgamma and dbeta sum over the samples, the spatial positions (and
nothing else: each channel has its own). float32 and float64 are preserved; float16 is computed in float32, and the
saved statistics stay float32. The default eps is PyTorch's 1e-5 (Flax's is 1e-6; docs/conventions.md). G = 1 is
layer norm over (C, *spatial); G = C is instance norm.

These functions only validate and arrange axes (channel-last input is a reshape, never a copy); all arithmetic is
in the generated kernels (``bnsym._generated.group_norm``), derived in ``derivations/group_norm.md``.
"""

from __future__ import annotations

from bnsym.runtime.layer import Layer

__all__ = ["backward", "double_backward", "forward", "jvp"]

_LAYER = Layer.named("group_norm")


def forward(x, gamma, beta, num_groups: int, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Group norm of x: ``(y, mean, invstd)`` with the statistics of shape (N, num_groups).

    >>> import numpy as np, bnsym
    >>> x = np.array([[1.0, 3.0, 10.0, 30.0]])          # N = 1, C = 4
    >>> y, mean, invstd = bnsym.group_norm.forward(x, None, None, num_groups=2, eps=1e-12)
    >>> np.round(y, 6).tolist(), mean.tolist()
    ([[-1.0, 1.0, -1.0, 1.0]], [[2.0, 20.0]])
    """
    return _LAYER.run("forward", dict(x=x, gamma=gamma, beta=beta), eps=eps, axis=axis, num_groups=num_groups,
                      backend=backend)


def backward(dy, x, gamma, mean, invstd, num_groups: int, axis: int = 1, *, backend: str = "auto"):
    """The gradients for the upstream gradient ``dy``: ``(dx, dgamma, dbeta)``, from the ``mean`` and ``invstd``
    that :func:`forward` returned. dgamma is None when ``gamma`` is None; dbeta is always computed (the backward
    does not see beta: drop it when the layer has no bias)."""
    return _LAYER.run("backward", dict(dy=dy, x=x, gamma=gamma, mean=mean, invstd=invstd), axis=axis,
                      num_groups=num_groups, backend=backend)


def double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd, num_groups: int, axis: int = 1, *,
                    backend: str = "auto"):
    """The double backward: the gradients of ``<ggx, dx> + <gggamma, dgamma> + <ggbeta, dbeta>`` with respect to
    x, gamma and dy, ``(gx, ggamma, gdy)``. Any cotangent may be None, meaning zero; ggamma is None when ``gamma``
    is None."""
    return _LAYER.run("double_backward", dict(ggx=ggx, gggamma=gggamma, ggbeta=ggbeta, dy=dy, x=x, gamma=gamma,
                                              mean=mean, invstd=invstd), axis=axis, num_groups=num_groups,
                      backend=backend)


def jvp(x, gamma, beta, tx, tgamma, tbeta, num_groups: int, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Forward mode: ``(y, ty)``, the output and its directional derivative along ``(tx, tgamma, tbeta)`` (tx
    shaped like x, tgamma and tbeta of shape (C,); None means zero)."""
    return _LAYER.run("jvp", dict(x=x, gamma=gamma, beta=beta, tx=tx, tgamma=tgamma, tbeta=tbeta), eps=eps,
                      axis=axis, num_groups=num_groups, backend=backend)
