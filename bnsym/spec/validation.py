"""Argument checks for the public functions: every bad input becomes a ValueError or TypeError that names the
argument and the shapes involved, before any arithmetic runs.

The checks take NumPy arrays (the NumPy-based backends), except :func:`xp_float_array`, the array-API backend's
conversion of an argument to the library of x."""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

__all__ = ["as_float_array", "check_eps", "check_num_groups", "check_same_shape", "check_shaped", "compute_dtype",
           "normalise_axes", "normalise_axis", "normalise_channel_axis", "xp_float_array"]

_FLOATS = (np.float16, np.float32, np.float64)


def as_float_array(value, name: str, *, min_ndim: int = 0) -> np.ndarray:
    """``value`` as a floating-point ndarray, or a TypeError/ValueError naming ``name``."""
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of floating-point numbers; converting it failed: {error}") from None
    if array.dtype.type not in _FLOATS:
        raise TypeError(f"{name} must have a floating-point dtype (float16, float32 or float64), got dtype "
                        f"{array.dtype} with shape {array.shape}")
    if array.ndim < min_ndim:
        axes = " (batch, channels, ...)" if min_ndim == 2 else ""
        raise ValueError(f"{name} must have at least {min_ndim} dimension{'s' if min_ndim != 1 else ''}{axes}, got "
                         f"shape {array.shape}")
    return array


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


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arithmetic runs in: float16 is computed in float32 (as PyTorch and Keras do), others as given."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def normalise_axis(axis, ndim: int, shape: tuple[int, ...]) -> int:
    """``axis`` as a non-negative index into a shape of ``ndim`` dimensions."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {axis!r} of type {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {shape} ({ndim} dimensions)")
    return int(axis) % ndim


def check_scalar_option(value, name: str) -> float:
    """A scalar option beyond eps (``LayerSpec.scalars``: batch renormalisation's r_max, d_max) as a float; it must
    be a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def check_eps(eps, dtype) -> float:
    """``eps`` as a float; it must be finite and greater than zero, also once rounded to ``dtype``, the dtype the
    arithmetic runs in (1e-50 is 0 in float32, 1e300 is inf)."""
    if isinstance(eps, bool) or not isinstance(eps, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"eps must be a real number, got {eps!r} of type {type(eps).__name__}")
    try:
        value = float(eps)
    except OverflowError:
        raise ValueError(f"eps must be finite and greater than 0, got {eps!r}, which overflows a float") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"eps must be finite and greater than 0, got {eps!r}")
    rounded = _rounded(value, np.dtype(dtype))
    if not np.isfinite(rounded) or rounded <= 0:
        raise ValueError(f"eps = {eps!r} is {rounded} in {np.dtype(dtype).name}, the dtype the arithmetic runs in; "
                         "it must be finite and greater than 0 there")
    return value


@functools.lru_cache(maxsize=64)
def _rounded(value: float, dtype: np.dtype):
    """``value`` rounded to ``dtype``; cached, because a layer is called with the same eps again and again and the
    error state that the rounding needs costs more than the rest of a small call's validation."""
    with np.errstate(over="ignore", under="ignore"):
        return dtype.type(value)


def check_same_shape(value, name: str, x_shape: tuple[int, ...]) -> np.ndarray:
    """A per-element array (such as dy) that must be shaped exactly like x."""
    array = as_float_array(value, name)
    if array.shape != x_shape:
        raise ValueError(f"{name} must have the same shape as x, {x_shape}, got shape {array.shape}")
    return array


def check_shaped(value, name: str, shape: tuple[int, ...], meaning: str) -> np.ndarray:
    """A float array of exactly ``shape``; ``meaning`` says what the shape is, for the message (such as "one value
    per channel of x (x has shape (2, 6, 3), channel axis 1)")."""
    array = as_float_array(value, name)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, {meaning}, got shape {array.shape}")
    return array


def normalise_axes(axis, ndim: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``axis``, an integer or a tuple of distinct integers, as sorted non-negative indices into ``shape``."""
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    for one in axes:
        if isinstance(one, bool) or not isinstance(one, numbers.Integral):
            raise TypeError(f"axis must be an integer or a tuple of integers, got {axis!r} (an element of type "
                            f"{type(one).__name__})")
    if not axes:
        raise ValueError(f"axis must name at least one axis of x (shape {shape}), got {axis!r}")
    indices = tuple(normalise_axis(one, ndim, shape) for one in axes)
    if len(set(indices)) != len(indices):
        raise ValueError(f"axis {axis!r} names the same axis of x (shape {shape}) twice")
    return tuple(sorted(indices))


def normalise_channel_axis(axis, ndim: int, shape: tuple[int, ...]) -> int:
    """The channel axis of a per-sample layer (group and instance norm): any axis but 0, the batch axis."""
    index = normalise_axis(axis, ndim, shape)
    if index == 0:
        raise ValueError(f"axis {axis} is the batch axis of x (shape {shape}); the channel axis must be another "
                         "one (1 for NCHW, -1 for NHWC)")
    return index


def check_num_groups(num_groups, channels: int, shape: tuple[int, ...], axis: int) -> int:
    """The number of channel groups: an integer >= 1 that divides the number of channels C = x.shape[axis]."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an integer, got {num_groups!r} of type {type(num_groups).__name__}")
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}")
    if channels % num_groups:
        raise ValueError(f"num_groups = {num_groups} does not divide the {channels} channels of x (x has shape "
                         f"{shape} and channel axis {axis}): each group must hold the same number of channels")
    return int(num_groups)
