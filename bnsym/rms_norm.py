"""RMS norm: every row of x divided by its root mean square over the trailing axes, then scaled; no centring.

Notation. ``axis`` names the normalised axes, the last k axes of x (an integer, or a tuple of integers; -1 by
default). The leading axes index the *rows*; each row's M values are scaled by their own ``invrms``::

    y = gamma * x * invrms,    invrms = 1 / sqrt(mean(x**2) + eps)

(no mean is subtracted and there is no beta). ``gamma`` has the normalised shape x.shape[-k:], or is None for no
scale (then dgamma is None); ``invrms`` has the row shape x.shape[:-k]. dgamma sums over the rows. float32 and
float64 are preserved; float16 is computed in float32, and the saved ``invrms`` stays float32.

The default eps is Flax's 1e-6. PyTorch's ``eps=None`` (its default) means the machine epsilon of the dtype its
arithmetic runs in, ``numpy.finfo(numpy.float32).eps`` for float16 and float32 input and
``numpy.finfo(numpy.float64).eps`` for float64: pass that value to reproduce PyTorch (docs/conventions.md).

These functions only validate and arrange axes; all arithmetic is in the generated kernels
(``bnsym._generated.rms_norm``), derived in ``derivations/rms_norm.md``.
"""

from __future__ import annotations

from bnsym.runtime.layer import Layer

__all__ = ["backward", "double_backward", "forward", "jvp"]

_LAYER = Layer.named("rms_norm")


def forward(x, gamma, eps: float = 1e-6, axis=-1, *, backend: str = "auto"):
    """RMS norm of x: ``(y, invrms)``, ``invrms`` of each row of shape x.shape[:-k].

    >>> import numpy as np, bnsym
    >>> y, invrms = bnsym.rms_norm.forward(np.array([[3.0, 4.0], [-6.0, 8.0]]), None, eps=1e-12)
    >>> np.round(y * np.sqrt(12.5), 6).tolist()
    [[3.0, 4.0], [-3.0, 4.0]]
    """
    return _LAYER.run("forward", dict(x=x, gamma=gamma), eps=eps, axis=axis, backend=backend)


def backward(dy, x, gamma, invrms, axis=-1, *, backend: str = "auto"):
    """The gradients for the upstream gradient ``dy``: ``(dx, dgamma)``, from the ``invrms`` that :func:`forward`
    returned; dgamma is None when ``gamma`` is None."""
    return _LAYER.run("backward", dict(dy=dy, x=x, gamma=gamma, invrms=invrms), axis=axis, backend=backend)


def double_backward(ggx, gggamma, dy, x, gamma, invrms, axis=-1, *, backend: str = "auto"):
    """The double backward: the gradients of ``<ggx, dx> + <gggamma, dgamma>`` with respect to x, gamma and dy,
    ``(gx, ggamma, gdy)``. Either cotangent may be None, meaning zero; ggamma is None when ``gamma`` is None."""
    return _LAYER.run("double_backward", dict(ggx=ggx, gggamma=gggamma, dy=dy, x=x, gamma=gamma, invrms=invrms),
                      axis=axis, backend=backend)


def jvp(x, gamma, tx, tgamma, eps: float = 1e-6, axis=-1, *, backend: str = "auto"):
    """Forward mode: ``(y, ty)``, the output and its directional derivative along ``(tx, tgamma)`` (None means
    zero)."""
    return _LAYER.run("jvp", dict(x=x, gamma=gamma, tx=tx, tgamma=tgamma), eps=eps, axis=axis, backend=backend)
