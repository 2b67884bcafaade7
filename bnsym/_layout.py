"""How the public functions see an input: its channel axis, the reduced axes, the per-channel shape, M.

The public functions validate and arrange their arguments with :class:`Layout`, then call the generated kernels
(:func:`generated_kernels`), which take per-channel arrays already shaped for broadcasting against x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnsym import _validation as v
from bnsym._backends import Backend, resolve

_NUMPY = Backend("numpy", np)

__all__ = ["Layout", "affine_inputs", "as_input", "generated_kernels", "gradient_inputs"]


def generated_kernels():
    """The NumPy kernels (the backends' own modules come from :meth:`Layout.kernels`)."""
    # Imported on first use, not with bnsym, so that `bnsym derive` can regenerate a broken or missing module.
    from bnsym._generated import batch_norm

    return batch_norm


@dataclass(frozen=True)
class Layout:
    """How a channel axis maps onto broadcasting: the reduced axes, the per-channel shape, M; and the backend
    (:mod:`bnsym._backends`) whose kernels run the call and whose array library the arguments are handled in."""

    shape: tuple[int, ...]
    axis: int
    channels: int
    axes: tuple[int, ...]
    broadcast: tuple[int, ...]
    count: int
    backend: Backend = _NUMPY
    device: object = None  # x's device, for the array-API backend (arrays it creates go there)

    @classmethod
    def of(cls, x, axis, backend: Backend = _NUMPY, device=None) -> Layout:
        shape = tuple(x.shape)
        axis = v.normalise_axis(axis, len(shape), shape)
        channels = shape[axis]
        broadcast = tuple(channels if i == axis else 1 for i in range(len(shape)))
        count = math.prod(shape) // channels if channels else 0
        return cls(shape, axis, channels, tuple(i for i in range(len(shape)) if i != axis), broadcast, count, backend,
                   device)

    @property
    def reducer(self):
        """The reductions the kernels need: over every axis but the channel axis, M values per channel; gamma and
        beta are per channel, so their gradients need no further sum."""
        return self.backend.reducer(self.axes, self.count)

    @property
    def kernels(self):
        """The generated batch-norm kernels of the backend."""
        return self.backend.kernels("batch_norm")

    def channel(self, value, name: str, dtype):
        """A (C,) argument, validated and reshaped for broadcasting against x."""
        if self.backend.is_numpy:
            array = v.check_channel_vector(value, name, self.channels, self.shape, self.axis)
            return array.astype(dtype, copy=False).reshape(self.broadcast)
        array = self.array(value, name)
        if tuple(array.shape) != (self.channels,):
            raise ValueError(f"{name} must have shape ({self.channels},), one value per channel of x (x has shape "
                             f"{self.shape} and channel axis {self.axis}), got shape {tuple(array.shape)}")
        xp = self.backend.xp
        return xp.reshape(xp.astype(array, dtype), self.broadcast)

    def field(self, value, name: str):
        """A per-element argument (dy, ggx, ...), validated: shaped exactly like x."""
        if self.backend.is_numpy:
            return v.check_same_shape(value, name, self.shape)
        array = self.array(value, name)
        if tuple(array.shape) != self.shape:
            raise ValueError(f"{name} must have the same shape as x, {self.shape}, got shape {tuple(array.shape)}")
        return array

    def array(self, value, name: str):
        """``value`` as a floating-point array of the backend's library (array-API backends: on x's device)."""
        if self.backend.is_numpy:
            return v.as_float_array(value, name)
        return xp_float_array(self.backend.xp, value, name, device=self.device)

    def cast(self, array, dtype):
        """``array`` in ``dtype``, without a copy when it already is."""
        if self.backend.is_numpy:
            return array.astype(dtype, copy=False)
        return self.backend.xp.astype(array, dtype, copy=False)

    def scalar(self, value: float, dtype):
        """A Python number as the kernels take it: a NumPy scalar of ``dtype``, or a Python float (weakly typed
        in the array API, so it takes the arrays' dtype)."""
        return dtype.type(value) if self.backend.is_numpy else float(value)

    def flat(self, array, dtype=None):
        """A per-channel result of the kernels (broadcast shape) as shape (C,), cast to ``dtype`` if given."""
        if self.backend.is_numpy:
            flat = np.reshape(array, -1)
            return flat if dtype is None else flat.astype(dtype)
        xp = self.backend.xp
        flat = xp.reshape(array, (-1,))
        return flat if dtype is None else xp.astype(flat, dtype)

    def zeros(self, shape, dtype):
        """A new array of zeros in the backend's library, on x's device."""
        if self.backend.is_numpy:
            return np.zeros(shape, dtype)
        return self.backend.xp.zeros(shape, dtype=dtype, device=self.device)

    def all_nonnegative(self, array) -> bool:
        """Whether every value is >= 0 (and none is NaN); True without looking for arrays that cannot be read
        here (JAX arrays, which may be traced inside jax.jit)."""
        if self.backend.is_numpy:
            return bool(np.all(array >= 0))
        from array_api_compat import is_lazy_array

        if is_lazy_array(array):
            return True
        return bool(self.backend.xp.all(array >= 0))

    def numpy_dtype(self, dtype) -> np.dtype:
        """The NumPy dtype of the same name (for the checks that NumPy does: eps rounded to the compute dtype)."""
        if self.backend.is_numpy:
            return np.dtype(dtype)
        xp = self.backend.xp
        return next(np.dtype(n) for n in ("float16", "float32", "float64") if dtype == getattr(xp, n))

    def require_training_batch(self) -> None:
        """Training needs two values per channel (PyTorch's rule and message)."""
        if self.count <= 1:
            values = "value" if self.count == 1 else "values"
            raise ValueError(f"Expected more than 1 value per channel when training, got x of shape {self.shape} "
                             f"with channel axis {self.axis} ({self.count} {values} per channel)")


def xp_float_array(xp, value, name: str, *, min_ndim: int = 0, device=None):
    """``value`` as a floating-point array of namespace ``xp`` (converted there, on ``device``, when it is a NumPy
    array, a list or a number), or a TypeError/ValueError naming ``name``."""
    from array_api_compat import array_namespace

    try:
        same = array_namespace(value) is xp and not isinstance(value, int | float)
    except TypeError:
        same = False
    if not same:
        try:
            value = xp.asarray(np.asarray(value) if isinstance(value, list | tuple) else value, device=device)
        except Exception as error:  # ragged lists, objects of another library, ...
            raise TypeError(f"{name} must be an array of floating-point numbers of the same library as x "
                            f"({xp.__name__}); converting it failed: {error}") from None
    if value.dtype not in (xp.float16, xp.float32, xp.float64):
        raise TypeError(f"{name} must have a floating-point dtype (float16, float32 or float64), got dtype "
                        f"{value.dtype} with shape {tuple(value.shape)}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (batch, channels, ...), got shape "
                         f"{tuple(value.shape)}")
    return value


def _compute_dtype(layout: Layout, dtype):
    """The dtype arithmetic runs in: float16 is computed in float32 (as PyTorch and Keras do), others as given."""
    if layout.backend.is_numpy:
        return v.compute_dtype(dtype)
    xp = layout.backend.xp
    return xp.float32 if dtype == xp.float16 else dtype


def _layout(x, axis, backend):
    """``(x, layout)``: the validated input and its layout, for the backend chosen for x."""
    chosen = resolve(backend, x)
    if chosen.is_numpy:
        x = as_input(x)
        return x, Layout.of(x, axis, chosen)
    from array_api_compat import device

    x = xp_float_array(chosen.xp, x, "x", min_ndim=2)
    return x, Layout.of(x, axis, chosen, device(x))


def affine_inputs(x, gamma, beta, eps, axis, backend="auto"):
    """The validated arguments of a forward pass: ``(x, layout, eps, dtype, gamma, beta)`` with gamma and beta
    shaped for broadcasting and cast to ``dtype``, the dtype arithmetic runs in."""
    x, layout = _layout(x, axis, backend)
    dtype = _compute_dtype(layout, x.dtype)
    eps = v.check_eps(eps, layout.numpy_dtype(dtype))
    return x, layout, eps, dtype, layout.channel(gamma, "gamma", dtype), layout.channel(beta, "beta", dtype)


def gradient_inputs(dy, x, axis, backend="auto"):
    """The validated arguments of a backward pass: ``(x, layout, dy, dtype)``, dy shaped like x and ``dtype`` the
    dtype arithmetic runs in (of x and dy together)."""
    x, layout = _layout(x, axis, backend)
    dy = layout.field(dy, "dy")
    xp = layout.backend.xp
    common = np.result_type(x.dtype, dy.dtype) if layout.backend.is_numpy else xp.result_type(x.dtype, dy.dtype)
    return x, layout, dy, _compute_dtype(layout, common)


def as_input(x, name: str = "x") -> np.ndarray:
    """The layer input: a floating-point array of at least 2 dimensions."""
    return v.as_float_array(x, name, min_ndim=2)
