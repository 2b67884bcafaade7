"""How the public functions see an input: its channel axis, the reduced axes, the per-channel shape, M.

The public functions validate and arrange their arguments with :class:`Layout`, then call the generated kernels
(:func:`generated_kernels`), which take per-channel arrays already shaped for broadcasting against x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnsym import _validation as v
from bnsym._reduce import Reducer

__all__ = ["Layout", "affine_inputs", "as_input", "generated_kernels", "gradient_inputs"]


def generated_kernels():
    # Imported on first use, not with bnsym, so that `bnsym derive` can regenerate a broken or missing module.
    from bnsym._generated import batch_norm

    return batch_norm


@dataclass(frozen=True)
class Layout:
    """How a channel axis maps onto broadcasting: the reduced axes, the per-channel shape, M."""

    shape: tuple[int, ...]
    axis: int
    channels: int
    axes: tuple[int, ...]
    broadcast: tuple[int, ...]
    count: int

    @classmethod
    def of(cls, x: np.ndarray, axis) -> Layout:
        axis = v.normalise_axis(axis, x.ndim, x.shape)
        channels = x.shape[axis]
        broadcast = tuple(channels if i == axis else 1 for i in range(x.ndim))
        count = x.size // channels if channels else 0
        return cls(x.shape, axis, channels, tuple(i for i in range(x.ndim) if i != axis), broadcast, count)

    @property
    def reducer(self) -> Reducer:
        """The reductions the kernels need: over every axis but the channel axis, M values per channel; gamma and
        beta are per channel, so their gradients need no further sum."""
        return Reducer(self.axes, self.count)

    def channel(self, value, name: str, dtype) -> np.ndarray:
        """A (C,) argument, validated and reshaped for broadcasting against x."""
        array = v.check_channel_vector(value, name, self.channels, self.shape, self.axis)
        return array.astype(dtype, copy=False).reshape(self.broadcast)

    def require_training_batch(self) -> None:
        """Training needs two values per channel (PyTorch's rule and message)."""
        if self.count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got x of shape {self.shape} "
                             f"with channel axis {self.axis} ({self.count} value(s) per channel)")


def affine_inputs(x, gamma, beta, eps, axis):
    """The validated arguments of a forward pass: ``(x, layout, eps, dtype, gamma, beta)`` with gamma and beta
    shaped for broadcasting and cast to ``dtype``, the dtype arithmetic runs in."""
    x = as_input(x)
    layout = Layout.of(x, axis)
    dtype = v.compute_dtype(x.dtype)
    eps = v.check_eps(eps, dtype)
    return x, layout, eps, dtype, layout.channel(gamma, "gamma", dtype), layout.channel(beta, "beta", dtype)


def gradient_inputs(dy, x, axis):
    """The validated arguments of a backward pass: ``(x, layout, dy, dtype)``, dy shaped like x and ``dtype`` the
    dtype arithmetic runs in (of x and dy together)."""
    x = as_input(x)
    layout = Layout.of(x, axis)
    dy = v.check_same_shape(dy, "dy", x.shape)
    return x, layout, dy, v.compute_dtype(np.result_type(x.dtype, dy.dtype))


def as_input(x, name: str = "x") -> np.ndarray:
    """The layer input: a floating-point array of at least 2 dimensions."""
    return v.as_float_array(x, name, min_ndim=2)
