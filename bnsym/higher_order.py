"""Second-order (double backward) and forward-mode (JVP) batch norm.

Notation as in :mod:`bnsym.functional`. The double backward receives cotangents ``ggx`` (shaped like x),
``gggamma`` and ``ggbeta`` (shape (C,)) for the first-order gradients dx, dgamma, dbeta, and returns the gradients
of ``<ggx, dx> + <gggamma, dgamma> + <ggbeta, dbeta>`` with respect to x, gamma and dy: ``(gx, ggamma, gdy)``, as
``torch.autograd.grad(..., create_graph=True)`` would. Any of the three cotangents may be None, meaning zero.
Arithmetic is in the generated kernels, derived in ``derivations/batch_norm.md``.
"""

from __future__ import annotations

from bnsym._layout import Layout, affine_inputs, gradient_inputs

__all__ = ["batch_norm_double_backward", "batch_norm_jvp"]


def _field_or_zero(layout: Layout, value, name, dtype):
    if value is None:
        return layout.zeros(layout.shape, dtype)
    return layout.cast(layout.field(value, name), dtype)


def _channel_or_zero(layout: Layout, value, name, dtype):
    if value is None:
        return layout.zeros(layout.broadcast, dtype)
    return layout.channel(value, name, dtype)


def batch_norm_double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd, axis: int = 1, *,
                               training: bool = True, backend: str = "auto"):
    """Double backward of batch norm: ``(gx, ggamma, gdy)``.

    With ``training=True`` (default), ``mean`` and ``invstd`` are the batch statistics returned by
    :func:`bnsym.batch_norm_forward`, and they depend on x. With ``training=False`` they are the running mean and
    ``1/sqrt(running_var + eps)``, constants, as in eval mode.
    """
    x, layout, dy, dtype = gradient_inputs(dy, x, axis, backend)
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False, got {training!r}")
    gamma = layout.channel(gamma, "gamma", dtype)
    mean = layout.channel(mean, "mean", dtype)
    invstd = layout.channel(invstd, "invstd", dtype)
    ggx = _field_or_zero(layout, ggx, "ggx", dtype)
    gggamma = _channel_or_zero(layout, gggamma, "gggamma", dtype)
    ggbeta = _channel_or_zero(layout, ggbeta, "ggbeta", dtype)
    if training:
        layout.require_training_batch()
        kernel = layout.kernels.batch_norm_double_backward
    else:
        kernel = layout.kernels.batch_norm_inference_double_backward
    args = (ggx, gggamma, ggbeta, layout.cast(dy, dtype), layout.cast(x, dtype), gamma, mean, invstd)
    gx, ggamma, gdy = kernel(*args, layout.reducer)
    out = x.dtype
    return layout.cast(gx, out), layout.flat(ggamma, out), layout.cast(gdy, out)


def batch_norm_jvp(x, gamma, beta, tx, tgamma, tbeta, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto"):
    """Training-mode forward mode: ``(y, ty)``, the output and its directional derivative along
    ``(tx, tgamma, tbeta)`` (tx shaped like x, tgamma and tbeta of shape (C,); None means zero)."""
    x, layout, eps, dtype, gamma, beta = affine_inputs(x, gamma, beta, eps, axis, backend)
    tx = _field_or_zero(layout, tx, "tx", dtype)
    tgamma = _channel_or_zero(layout, tgamma, "tgamma", dtype)
    tbeta = _channel_or_zero(layout, tbeta, "tbeta", dtype)
    layout.require_training_batch()
    y, ty = layout.kernels.batch_norm_jvp(layout.cast(x, dtype), gamma, beta, tx, tgamma, tbeta,
                                          layout.scalar(eps, dtype), layout.reducer)
    return layout.cast(y, x.dtype), layout.cast(ty, x.dtype)
