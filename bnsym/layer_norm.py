"""Layer norm: every row of x normalised over its trailing axes, with an elementwise affine part.

Notation. ``axis`` names the normalised axes, the last k axes of x (an integer, or a tuple of integers; -1 by
default). The leading axes index the *rows*; each row's M values (the product of the normalised sizes) are
normalised with their own mean and biased variance::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)

``gamma`` and ``beta`` have the normalised shape x.shape[-k:] (torch.nn.functional.layer_norm's weight and bias),
or are None for no affine part (PyTorch's ``elementwise_affine=False`` or ``bias=False``, Flax's ``use_scale`` and
``use_bias``); a gradient for a parameter that is None comes back as None. ``mean`` and ``invstd`` have the row
shape x.shape[:-k]. dgamma and dbeta sum over the rows. float32 and float64 are preserved; float16 is computed in
float32, and the saved ``mean`` and ``invstd`` stay float32. The default eps is PyTorch's 1e-5 (Flax's is 1e-6;
docs/conventions.md lists the differences between the frameworks).

These functions only validate and arrange axes; all arithmetic is in the generated kernels
(``bnsym._generated.layer_norm``), derived in ``derivations/layer_norm.md``.
"""

from __future__ import annotations

from bnsym.runtime.layer import Layer

__all__ = ["backward", "double_backward", "forward", "jvp"]

_LAYER = Layer.named("layer_norm")


def forward(x, gamma, beta, eps: float = 1e-5, axis=-1, *, backend: str = "auto"):
    """Layer norm of x: ``(y, mean, invstd)``, the statistics of each row of shape x.shape[:-k].

    >>> import numpy as np, bnsym
    >>> x = np.array([[1.0, 3.0], [10.0, 30.0]])
    >>> y, mean, invstd = bnsym.layer_norm.forward(x, None, None, eps=1e-12)
    >>> np.round(y, 6).tolist(), mean.tolist()
    ([[-1.0, 1.0], [-1.0, 1.0]], [2.0, 20.0])
    """
    return _LAYER.run("forward", dict(x=x, gamma=gamma, beta=beta), eps=eps, axis=axis, backend=backend)


def backward(dy, x, gamma, mean, invstd, axis=-1, *, backend: str = "auto"):
    """The gradients for the upstream gradient ``dy``: ``(dx, dgamma, dbeta)``, from the ``mean`` and ``invstd``
    that :func:`forward` returned. dgamma is None when ``gamma`` is None; dbeta is always computed (the backward
    does not see beta: drop it when the layer has no bias)."""
    return _LAYER.run("backward", dict(dy=dy, x=x, gamma=gamma, mean=mean, invstd=invstd), axis=axis, backend=backend)


def double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd, axis=-1, *, backend: str = "auto"):
    """The double backward: the gradients of ``<ggx, dx> + <gggamma, dgamma> + <ggbeta, dbeta>`` with respect to
    x, gamma and dy, ``(gx, ggamma, gdy)``, as ``torch.autograd.grad(..., create_graph=True)`` gives them. Any of
    the three cotangents may be None, meaning zero; ggamma is None when ``gamma`` is None."""
    return _LAYER.run("double_backward", dict(ggx=ggx, gggamma=gggamma, ggbeta=ggbeta, dy=dy, x=x, gamma=gamma,
                                              mean=mean, invstd=invstd), axis=axis, backend=backend)


def jvp(x, gamma, beta, tx, tgamma, tbeta, eps: float = 1e-5, axis=-1, *, backend: str = "auto"):
    """Forward mode: ``(y, ty)``, the output and its directional derivative along ``(tx, tgamma, tbeta)`` (tx
    shaped like x, tgamma and tbeta of the normalised shape; None means zero)."""
    return _LAYER.run("jvp", dict(x=x, gamma=gamma, beta=beta, tx=tx, tgamma=tgamma, tbeta=tbeta), eps=eps,
                      axis=axis, backend=backend)
