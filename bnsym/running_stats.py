"""Running statistics after one training batch, in each framework's convention, for any layer that keeps them.

``update(kernels, running_mean, running_var, mean, var, count, *, momentum, convention, eps)`` returns
``(new_mean, new_var)`` and leaves its inputs untouched; ``kernels`` is the module of the generated NumPy kernels
(``running_stats_<convention>``) of the layer (:attr:`bnsym.spec.LayerSpec.kernels_module`), and a layer reaches it
through :meth:`bnsym.runtime.layer.Layer.update_running_stats` (batch norm's is :func:`bnsym.update_running_stats`).
``mean`` and ``var`` are the batch mean and the *biased* batch variance (var = invstd**-2 - eps from the layer's
forward), one value per channel, shape (C,); ``count`` is the number of values that made each of them (M). The
conventions and their choices are in :mod:`bnsym.conventions`:

* ``"torch"`` (default momentum 0.1): r <- (1 - m) r + m b, running_var from the unbiased batch variance
  var * M / (M - 1), as ``torch.nn.BatchNorm*d``. ``momentum=None`` is PyTorch's cumulative average.
* ``"keras"``, ``"flax"`` (default momentum 0.99): r <- m r + (1 - m) b, biased variance, as
  ``keras.layers.BatchNormalization`` and ``flax.linen.BatchNorm``.
* ``"chainer"`` (default momentum 0.9, Chainer's ``decay``): r <- m r + (1 - m) b, unbiased variance, as
  ``chainer.links.BatchNormalization``.
* ``"haiku"`` (momentum is Haiku's ``decay_rate``, default 0.9 here): the zero-debiased average of
  ``hk.ExponentialMovingAverage``, r <- (1 - f) r + f b with f = (1 - m) / (1 - m^n), biased variance; needs
  ``num_batches_tracked``.
* ``"cumulative"``: r <- (1 - 1/n) r + (1/n) b, unbiased variance.

``num_batches_tracked`` is n, the number of batches seen *including this one* (PyTorch and Haiku increment their
counters before the update); only ``"cumulative"``, ``"haiku"`` (and ``"torch"`` with ``momentum=None``) read it.

The results have the dtype of the running statistics (promoted between running_mean and running_var).

A layer whose second running statistic is not a variance (batch renormalisation's ``running_std``, the average of
sqrt(var + eps): ``LayerSpec.running``) passes it as ``running_var``, and ``eps``; its kernels say which.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from bnsym.conventions import CONVENTIONS
from bnsym.runtime import backends as _backends
from bnsym.runtime.backends import resolve
from bnsym.spec import validation as v

__all__ = ["DEFAULT", "update"]

#: The default of ``momentum``: the convention's own (:attr:`bnsym.conventions.Convention.default_momentum`).
DEFAULT = "default"


def _vector(value, name: str, channels: int | None, backend, device=None):
    if backend.is_numpy:
        array = v.as_float_array(value, name)
    else:
        array = v.xp_float_array(backend.xp, value, name, device=device)
    shape = tuple(array.shape)
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape (C,), one value per channel, got shape {shape}")
    if channels is not None and shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) like running_mean, got shape {shape}")
    return array


def _all_nonnegative(values, backend) -> bool:
    if backend.is_numpy:
        return bool(np.all(values >= 0))
    from array_api_compat import is_lazy_array

    return True if is_lazy_array(values) else bool(backend.xp.all(values >= 0))


def update(kernels: str, running_mean, running_var, mean, var, count, *, momentum=DEFAULT, convention="torch",
           num_batches_tracked=None, backend="auto", eps=None):
    """The running mean and variance after one batch: ``(new_mean, new_var)``, new arrays of shape (C,), of the
    library of ``running_mean``, computed by the kernels in the module ``kernels``.

    ``momentum="default"`` takes the convention's default (module docstring). ``backend`` as in
    :mod:`bnsym.runtime.backends` (the compiled one runs the NumPy kernels here: there is no full-size array to fuse);
    arrays that JAX may be tracing are not checked for negative values.
    """
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    chosen = CONVENTIONS[convention]
    if isinstance(momentum, str) and momentum == DEFAULT:
        momentum = chosen.default_momentum
    if convention == "torch" and momentum is None:
        chosen = CONVENTIONS["cumulative"]
    backend = resolve(backend, running_mean)
    device = None
    if not backend.is_numpy:
        from array_api_compat import device as device_of

        running_mean = v.xp_float_array(backend.xp, running_mean, "running_mean")
        device = device_of(running_mean)
    running_mean = _vector(running_mean, "running_mean", None, backend, device)
    channels = running_mean.shape[0]
    running_var = _vector(running_var, "running_var", channels, backend, device)
    mean = _vector(mean, "mean", channels, backend, device)
    var = _vector(var, "var", channels, backend, device)
    for name, values in (("var", var), ("running_var", running_var)):
        if not _all_nonnegative(values, backend):  # also refuses NaN
            raise ValueError(f"{name} must be >= 0 (and not NaN), got {values}")
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise ValueError(f"count must be a positive integer (values per channel), got {count!r}")
    if chosen.unbiased and count < 2:
        raise ValueError(f"the {convention} convention uses the unbiased variance var * M / (M - 1), which needs "
                         f"count >= 2, got count={count}")
    arguments = []
    if chosen.cumulative:
        if momentum is not None:
            raise ValueError(f"the cumulative average takes no momentum, got momentum={momentum!r}")
    else:
        if momentum is None and chosen.default_momentum is None:
            raise ValueError(f"the {convention} convention has no default momentum: pass momentum (its decay)")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not math.isfinite(momentum) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        if chosen.debiased and momentum == 1:
            raise ValueError(f"the {convention} convention divides by 1 - momentum**n: momentum must be < 1, got 1")
        arguments.append(float(momentum))
    if chosen.uses_batch_count:
        if (isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, numbers.Integral)
                or num_batches_tracked < 1):
            raise ValueError(f"the {chosen.name} convention needs num_batches_tracked, the number of batches seen "
                             f"including this one (an integer >= 1), got {num_batches_tracked!r}")
        arguments.append(int(num_batches_tracked))
    if chosen.unbiased:
        arguments.append(int(count))
    xp = backend.xp
    dtype = xp.result_type(running_mean.dtype, running_var.dtype)
    # Per-channel arithmetic only: the compiled backend would run the NumPy kernels anyway (nothing to fuse), so
    # the NumPy-based backends use them directly and never load Numba (nor start its threads) for this.
    module = backend.kernels(kernels) if not backend.is_numpy else _backends.numpy_kernels(kernels)
    kernel = getattr(module, f"running_stats_{chosen.name}")
    if "eps" in module.SIGNATURES[f"running_stats_{chosen.name}"][0]:
        # A running statistic that averages a step using eps (batch renormalisation's sqrt(var + eps)); eps comes
        # before count, the kernel's last argument when it takes one.
        if eps is None:
            raise ValueError("this layer's running statistics average a step that uses eps: pass eps")
        value = v.check_eps(eps, np.dtype(str(dtype)) if backend.is_numpy else np.float64)
        arguments.insert(len(arguments) - 1 if chosen.unbiased else len(arguments), value)
    new_mean, new_var = kernel(running_mean, running_var, mean, var, *arguments)
    if backend.is_numpy:
        return np.asarray(new_mean, dtype=dtype), np.asarray(new_var, dtype=dtype)
    return xp.astype(new_mean, dtype), xp.astype(new_var, dtype)
