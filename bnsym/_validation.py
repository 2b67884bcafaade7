"""Argument checks for the public functions: every bad input becomes a ValueError or TypeError that names the
argument and the shapes involved, before any arithmetic runs."""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["as_float_array", "check_channel_vector", "check_eps", "check_same_shape", "compute_dtype",
           "normalise_axis"]

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
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (batch, channels, ...), got shape "
                         f"{array.shape}")
    return array


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
    with np.errstate(over="ignore", under="ignore"):
        rounded = np.dtype(dtype).type(value)
    if not np.isfinite(rounded) or rounded <= 0:
        raise ValueError(f"eps = {eps!r} is {rounded} in {np.dtype(dtype).name}, the dtype the arithmetic runs in; "
                         "it must be finite and greater than 0 there")
    return value


def check_channel_vector(value, name: str, channels: int, x_shape: tuple[int, ...], axis: int) -> np.ndarray:
    """A per-channel parameter: a float array of shape (C,) where C = x.shape[axis]."""
    array = as_float_array(value, name)
    if array.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), one value per channel of x (x has shape {x_shape} "
                         f"and channel axis {axis}), got shape {array.shape}")
    return array


def check_same_shape(value, name: str, x_shape: tuple[int, ...]) -> np.ndarray:
    """A per-element array (such as dy) that must be shaped exactly like x."""
    array = as_float_array(value, name)
    if array.shape != x_shape:
        raise ValueError(f"{name} must have the same shape as x, {x_shape}, got shape {array.shape}")
    return array
