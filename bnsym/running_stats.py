"""Running statistics after one training batch, in each framework's convention.

``update_running_stats(running_mean, running_var, mean, var, count, *, momentum, convention)`` returns
``(new_mean, new_var)`` and leaves its inputs untouched. ``mean`` and ``var`` are the batch mean and the *biased*
batch variance (var = invstd**-2 - eps from :func:`bnsym.batch_norm_forward`), ``count`` the number of values per
channel (M). The conventions (:mod:`bnsym.conventions`, ``docs/conventions.md``):

* ``"torch"`` (default momentum 0.1): r <- (1 - m) r + m b, running_var from the unbiased batch variance
  var * M / (M - 1), as ``torch.nn.BatchNorm*d``. ``momentum=None`` is PyTorch's cumulative average.
* ``"keras"``, ``"flax"`` (default momentum 0.99): r <- m r + (1 - m) b, biased variance, as
  ``keras.layers.BatchNormalization`` and ``flax.linen.BatchNorm``.
* ``"cumulative"``: r <- (1 - 1/n) r + (1/n) b with n = ``num_batches_tracked``, the number of batches seen
  *including this one* (PyTorch increments its counter before the update), unbiased variance.
  ``num_batches_tracked`` is only read by this convention (and by ``"torch"`` with ``momentum=None``).

The results have the dtype of the running statistics (promoted between running_mean and running_var).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from bnsym import _validation as v
from bnsym._layout import generated_kernels
from bnsym.conventions import CONVENTIONS

__all__ = ["update_running_stats"]

_DEFAULT = object()


def _vector(value, name: str, channels: int | None) -> np.ndarray:
    array = v.as_float_array(value, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape (C,), one value per channel, got shape {array.shape}")
    if channels is not None and array.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) like running_mean, got shape {array.shape}")
    return array


def update_running_stats(running_mean, running_var, mean, var, count, *, momentum=_DEFAULT, convention="torch",
                         num_batches_tracked=None):
    """The running mean and variance after one batch: ``(new_mean, new_var)``, new arrays of shape (C,)."""
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    chosen = CONVENTIONS[convention]
    if momentum is _DEFAULT:
        momentum = chosen.default_momentum
    if convention == "torch" and momentum is None:
        chosen = CONVENTIONS["cumulative"]
    running_mean = _vector(running_mean, "running_mean", None)
    channels = running_mean.shape[0]
    running_var = _vector(running_var, "running_var", channels)
    mean, var = _vector(mean, "mean", channels), _vector(var, "var", channels)
    for name, values in (("var", var), ("running_var", running_var)):
        if not np.all(values >= 0):  # also refuses NaN
            raise ValueError(f"{name} must be >= 0 (and not NaN), got {values}")
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise ValueError(f"count must be a positive integer (values per channel), got {count!r}")
    if chosen.unbiased and count < 2:
        raise ValueError(f"the {convention} convention uses the unbiased variance var * M / (M - 1), which needs "
                         f"count >= 2, got count={count}")
    dtype = np.result_type(running_mean.dtype, running_var.dtype)
    kernels = generated_kernels()
    if chosen.momentum_weighs is None:
        if momentum is not None:
            raise ValueError(f"the cumulative average takes no momentum, got momentum={momentum!r}")
        if (isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, numbers.Integral)
                or num_batches_tracked < 1):
            raise ValueError("the cumulative average needs num_batches_tracked, the number of batches seen "
                             f"including this one (an integer >= 1), got {num_batches_tracked!r}")
        new_mean, new_var = kernels.running_stats_cumulative(running_mean, running_var, mean, var,
                                                             int(num_batches_tracked), int(count))
    else:
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not math.isfinite(momentum) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        kernel = getattr(kernels, f"running_stats_{chosen.name}")
        args = (running_mean, running_var, mean, var, float(momentum))
        new_mean, new_var = kernel(*args, int(count)) if chosen.unbiased else kernel(*args)
    return np.asarray(new_mean, dtype=dtype), np.asarray(new_var, dtype=dtype)
