"""How the compiled (Numba) kernels see their arrays: fields as (rows, groups, inner), per-group values as (groups,).

Notation. A kernel reduces a field over some axes (``reducer.axes``); the others, the *kept* axes, index the
groups (batch norm: the channels). When the kept axes are adjacent, a C-contiguous field is, without a copy, an
array of shape (rows, groups, inner): ``rows`` is the product of the reduced axes before the kept ones, ``groups``
the product of the kept axes, ``inner`` the product of the reduced axes after them. NCHW batch norm is
(N, C, H*W), whose groups are runs of H*W contiguous values; (N, C) and NHWC batch norm are (N, C, 1) and
(N*H*W, C, 1), whose groups sit side by side in every row. The generated loops (:mod:`bnsym.codegen.numba_printer`)
have one loop nest for each of the two cases.

:meth:`FusedLayout.of` returns None for anything else, and the generated wrapper then runs the NumPy kernel:
fields that are not C-contiguous or not of one float32/float64 dtype, kept axes that are not adjacent, a per-group
value that varies along a reduced axis, and a reducer other than the local :class:`bnsym._reduce.Reducer` (a
sharded run's reducer adds the shards' totals in its ``sums``, which compiled loops would bypass). Kernels that sum
over parameter axes are not compiled at all (the printer leaves them to NumPy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnsym._reduce import Reducer

__all__ = ["FusedLayout"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class FusedLayout:
    """One call's arrangement: the fields' ``shape`` and ``dtype``, and its (rows, groups, inner) view."""

    shape: tuple[int, ...]
    dtype: np.dtype
    rows: int
    groups: int
    inner: int
    group_shape: tuple[int, ...]

    @classmethod
    def of(cls, reducer, fields, per_group) -> FusedLayout | None:
        """The layout of a call with these fields and per-group values (arrays shaped for broadcasting, or
        scalars), or None when the compiled loops do not cover it (module docstring)."""
        if reducer is not None and type(reducer) is not Reducer:
            return None
        first = fields[0]
        if not isinstance(first, np.ndarray) or first.dtype not in _DTYPES:
            return None
        shape, dtype = first.shape, first.dtype
        # The public functions pass fields of one dtype and shape; anything else is left to the NumPy kernel.
        if any(not isinstance(f, np.ndarray) or f.shape != shape or f.dtype != dtype or not f.flags.c_contiguous
               for f in fields):
            return None
        values = [np.asarray(v) for v in per_group]
        if any(v.dtype != dtype and v.ndim for v in values) or any(v.ndim not in (0, len(shape)) for v in values):
            return None
        if reducer is not None:
            kept = [k for k in range(len(shape)) if k not in reducer.axes]
        else:  # a kernel that does not reduce: the groups are the axes along which a per-group value varies
            kept = sorted({k for v in values if v.ndim for k in range(len(shape)) if v.shape[k] != 1})
        if any(v.ndim and any(v.shape[k] not in (1, shape[k]) or (k not in kept and v.shape[k] != 1)
                              for k in range(len(shape))) for v in values):
            return None
        if kept and kept != list(range(kept[0], kept[-1] + 1)):
            return None
        first = kept[0] if kept else len(shape)
        last = kept[-1] + 1 if kept else len(shape)
        rows, groups, inner = math.prod(shape[:first]), math.prod(shape[first:last]), math.prod(shape[last:])
        if not kept:  # every axis is reduced: one group, one run
            rows, groups, inner = 1, 1, math.prod(shape)
        group_shape = tuple(n if k in kept else 1 for k, n in enumerate(shape))
        return cls(tuple(shape), dtype, rows, groups, inner, group_shape)

    def fields(self, array: np.ndarray) -> np.ndarray:
        """A field as (rows, groups, inner): a view, cast to the layout's dtype only if it differs."""
        return array.astype(self.dtype, copy=False).reshape(self.rows, self.groups, self.inner)

    def per_group(self, value) -> np.ndarray:
        """A per-group value (array shaped for broadcasting, or scalar) as a contiguous (groups,) array."""
        array = np.asarray(value, dtype=self.dtype)
        if array.size == self.groups:  # already one value per group: a view when it is contiguous
            return np.ascontiguousarray(array).reshape(self.groups)
        return np.ascontiguousarray(np.broadcast_to(array, self.group_shape)).reshape(self.groups)

    def grouped(self, values: np.ndarray) -> np.ndarray:
        """A (groups,) result in the broadcast shape of the NumPy kernels (1 on every reduced axis)."""
        return values.reshape(self.group_shape)

    def empty(self) -> np.ndarray:
        """A new field (allocated by NumPy, which asks the kernel for huge pages: faster first touch)."""
        return np.empty(self.shape, self.dtype)
