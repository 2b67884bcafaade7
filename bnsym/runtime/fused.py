"""How the compiled (Numba) kernels see their arrays: fields as (rows, groups, inner), per-group values as (groups,).

Notation. A kernel reduces a field over some axes (``reducer.axes``); the others, the *kept* axes, index the
groups (batch norm: the channels). When the kept axes are adjacent, a C-contiguous field is, without a copy, an
array of shape (rows, groups, inner): ``rows`` is the product of the reduced axes before the kept ones, ``groups``
the product of the kept axes, ``inner`` the product of the reduced axes after them. NCHW batch norm is
(N, C, H*W), whose groups are runs of H*W contiguous values; (N, C) and NHWC batch norm are (N, C, 1) and
(N*H*W, C, 1), whose groups sit side by side in every row. The generated loops (:mod:`bnsym.codegen.numba_stages`)
have one loop nest for each of the two cases.

:meth:`FusedLayout.of` returns None for anything else, and the generated wrapper then runs the NumPy kernel:
fields that are not C-contiguous or not of one float32/float64 dtype, kept axes that are not adjacent, a per-group
value that varies along a reduced axis, and a reducer other than the local :class:`bnsym.runtime.reduce.Reducer` (a
sharded run's reducer adds the shards' totals in its ``sums``, which compiled loops would bypass).

:class:`GroupLocalLayout` is the arrangement of the group-local loops (:mod:`bnsym.codegen.numba_local`), which
read parameters that vary within a group and sum parameter gradients: fields as (groups, inner) when every group
is one contiguous run, parameters as (P, Q). :class:`SampleLocalLayout` is the same for parameters of one row per
sample (adaptive norms), whose rows each serve the R = groups // P consecutive groups of a sample.
:class:`InterleavedLayout` is the arrangement of the same kernels'
sample-wise loops (:mod:`bnsym.codegen.numba_interleaved`) for channel-last group and instance norm, whose groups
interleave within each sample: fields as (B, R, K), parameters as (K,), per-group values as (B, G).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnsym.runtime.reduce import Reducer

__all__ = ["FusedLayout", "GroupLocalLayout", "InterleavedLayout", "SampleLocalLayout"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class _Results:
    """Results back in the NumPy kernels' shapes, for every layout (each has ``shape``, ``dtype`` and
    ``group_shape``; those with parameters ``parameter_shape``)."""

    def grouped(self, values: np.ndarray) -> np.ndarray:
        """Per-group results ((groups,) or (B, G)) in the broadcast shape of the NumPy kernels (1 on every reduced
        axis)."""
        return values.reshape(self.group_shape)

    def parameter_result(self, values: np.ndarray) -> np.ndarray:
        """A parameter gradient ((P, Q) or (K,)) in the parameters' broadcast shape."""
        return values.reshape(self.parameter_shape)

    def empty(self) -> np.ndarray:
        """A new field (allocated by NumPy, which asks the kernel for huge pages: faster first touch)."""
        return np.empty(self.shape, self.dtype)


@dataclass(frozen=True)
class FusedLayout(_Results):
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
        values = [v if isinstance(v, np.ndarray) else np.asarray(v) for v in per_group]
        if reducer is not None:
            kept = [k for k in range(len(shape)) if k not in reducer.axes]
        else:  # a kernel that does not reduce: the groups are the axes along which a per-group value varies
            kept = sorted({k for v in values if v.ndim for k in range(len(shape)) if v.shape[k] != 1})
        if kept and kept != list(range(kept[0], kept[-1] + 1)):
            return None
        group_shape = tuple(n if k in kept else 1 for k, n in enumerate(shape))
        for v in values:  # scalars, or arrays of the fields' dtype that vary along kept axes only
            if v.ndim and (v.ndim != len(shape) or v.dtype != dtype
                           or any(n != 1 and n != m for n, m in zip(v.shape, group_shape))):
                return None
        first = kept[0] if kept else len(shape)
        last = kept[-1] + 1 if kept else len(shape)
        rows, groups, inner = math.prod(shape[:first]), math.prod(shape[first:last]), math.prod(shape[last:])
        if not kept:  # every axis is reduced: one group, one run
            rows, groups, inner = 1, 1, math.prod(shape)
        return cls(tuple(shape), dtype, rows, groups, inner, group_shape)

    def fields(self, array: np.ndarray) -> np.ndarray:
        """A field as (rows, groups, inner): a view, cast to the layout's dtype only if it differs."""
        return array.astype(self.dtype, copy=False).reshape(self.rows, self.groups, self.inner)

    def per_group(self, value) -> np.ndarray:
        """A per-group value (array shaped for broadcasting, or scalar) as a contiguous (groups,) array."""
        array = np.asarray(value, dtype=self.dtype)
        if array.ndim == 0:  # eps
            return np.full(self.groups, array)
        if array.size == self.groups:  # already one value per group: a view when it is contiguous
            return np.ascontiguousarray(array).reshape(self.groups)
        return np.ascontiguousarray(np.broadcast_to(array, self.group_shape)).reshape(self.groups)




@dataclass(frozen=True)
class GroupLocalLayout(_Results):
    """One call's arrangement for the group-local loops: every group is a contiguous run of ``inner`` values.

    That is the case when the reduced axes of C-contiguous fields are the trailing axes (layer norm and RMS norm
    over their normalised axes, group norm and instance norm on channel-first input): the fields are (groups,
    inner) arrays and the loops finish one group (every stage, then its outputs) while its values are in cache.

    Parameters. A parameter (gamma and its (co)tangents) has the broadcast shape of :attr:`parameter_shape`,
    length 1 on ``reducer.parameter_axes``. The loops see it as a (P, Q) array: group ``g`` reads row ``g % P``,
    and value ``i`` of a group reads column ``i // S``, with ``S = inner // Q``. So the axes along which a parameter
    varies must be trailing kept axes (P: group norm's G, instance norm's C; 1 for layer norm) other than the batch
    axis 0 (a parameter per sample, as adaptive norms have, is :class:`SampleLocalLayout`'s) and leading reduced
    axes (Q: layer norm's normalised positions, group norm's C/G channels; 1 for instance norm). A parameter's
    gradient comes back from the loops as a (P, Q) array, in :attr:`parameter_shape` by :meth:`parameter_result`.

    :meth:`of` returns None for anything else (the generated wrapper then runs the NumPy kernel).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    groups: int
    inner: int
    P: int
    Q: int
    group_shape: tuple[int, ...]
    parameter_shape: tuple[int, ...]

    @classmethod
    def of(cls, reducer, fields, per_group, parameters) -> GroupLocalLayout | None:
        """The layout of a call with these fields, per-group values (arrays shaped for broadcasting, or scalars)
        and parameters (arrays of the parameters' broadcast shape), or None when the loops do not cover it."""
        return cls._arrange(reducer, fields, per_group, parameters, per_sample_rows=False)

    @classmethod
    def _arrange(cls, reducer, fields, per_group, parameters, per_sample_rows: bool):
        """:meth:`of`, with the parameter rows along the trailing kept axes (``per_sample_rows`` False: row
        ``g % P``) or along the leading ones from the batch axis 0 (True: row ``g // (groups // P)``)."""
        found = _local_fields(reducer, fields)
        if found is None:
            return None
        shape, dtype = found
        ndim = len(shape)
        reduced = sorted(reducer.axes)
        kept = ndim - len(reduced)
        if reduced != list(range(kept, ndim)):
            return None  # the reduced axes are not the trailing ones: a group is not one contiguous run
        parameter_shape = tuple(1 if a in reducer.parameter_axes else n for a, n in enumerate(shape))
        varying = [a for a in range(ndim) if parameter_shape[a] != 1]
        on_groups = [a for a in varying if a < kept]
        on_values = [a for a in varying if a >= kept]
        if per_sample_rows:  # rows along the leading kept axes, from the batch axis: row g // R
            if on_groups and on_groups != list(range(on_groups[-1] + 1)):
                return None
        elif on_groups and (on_groups != list(range(on_groups[0], kept)) or 0 in on_groups):
            # Rows along the trailing kept axes: row g % P. A parameter per sample (adaptive norms: (N, D) for x
            # (N, D)) is SampleLocalLayout's: these loops' block partials, (blocks, P, Q) with P = N, would grow
            # with the square of the batch.
            return None
        if on_values and on_values != list(range(kept, on_values[-1] + 1)):
            return None
        group_shape = tuple(n if a < kept else 1 for a, n in enumerate(shape))
        if not (_broadcastable(per_group, group_shape, dtype, scalars=True)
                and _broadcastable(parameters, parameter_shape, dtype, scalars=False)):
            return None
        groups, inner = math.prod(shape[:kept]), math.prod(shape[kept:])
        P = math.prod(shape[a] for a in on_groups)
        Q = math.prod(shape[a] for a in on_values)
        return cls(tuple(shape), dtype, groups, inner, P, Q, group_shape, parameter_shape)

    def fields(self, array: np.ndarray) -> np.ndarray:
        """A field as (groups, inner): a view."""
        return array.reshape(self.groups, self.inner)

    def per_group(self, value) -> np.ndarray:
        """A per-group value (array shaped for broadcasting, or scalar) as a contiguous (groups,) array."""
        array = np.asarray(value, dtype=self.dtype)
        if array.ndim == 0:  # eps
            return np.full(self.groups, array)
        if array.size == self.groups:
            return np.ascontiguousarray(array).reshape(self.groups)
        return np.ascontiguousarray(np.broadcast_to(array, self.group_shape)).reshape(self.groups)

    def parameter(self, value: np.ndarray) -> np.ndarray:
        """A parameter as a contiguous (P, Q) array (module docstring)."""
        if value.shape == self.parameter_shape and value.flags.c_contiguous:
            return value.reshape(self.P, self.Q)
        return np.ascontiguousarray(np.broadcast_to(value, self.parameter_shape)).reshape(self.P, self.Q)


@dataclass(frozen=True)
class SampleLocalLayout(GroupLocalLayout):
    """:class:`GroupLocalLayout` for parameters that hold one row per sample (adaptive norms: gamma and beta of
    shape (N, D) for x of shape (N, ..., D); ``Grouping.sample_parameters``).

    The fields are (groups, inner) as there; the parameters are (P, Q) arrays whose P rows run along the leading
    kept axes, starting with the batch axis 0 (P = N for adaptive layer norm), so each row serves R = groups // P
    consecutive groups: group ``g`` reads row ``g // R`` (adaptive layer norm on (N, T, D): R = T, the tokens of one
    sample). The loops (:mod:`bnsym.codegen.numba_local`) take one parameter row per parallel iteration, all of its
    R groups, and sum a parameter's gradient over those R groups only, as float32 partials of at most ``BLOCK``
    groups added in float64, straight into the row of the (P, Q) result: no partial per block of the batch.

    :meth:`of` returns None when the parameters do not vary along axis 0 (they are :class:`GroupLocalLayout`'s) or
    for anything :class:`GroupLocalLayout` refuses.
    """

    @classmethod
    def of(cls, reducer, fields, per_group, parameters) -> SampleLocalLayout | None:
        """As :meth:`GroupLocalLayout.of`, for parameters with one row per sample. Empty input is the NumPy
        kernel's: with no groups, R = groups // P is 0 (or P is 0) and no iteration would zero a gradient's row."""
        layout = cls._arrange(reducer, fields, per_group, parameters, per_sample_rows=True)
        return layout if layout is not None and layout.groups and layout.inner else None

    def parameter_empty(self) -> np.ndarray:
        """A new (P, Q) parameter result for the loops to fill: as large as x when T = 1, so allocated by NumPy
        (huge pages; an array that Numba allocates is first touched a 4 kB page at a time, which took adaptive
        layer norm's backward on (4096, 4096) float32, one thread, from about 42 to 170 ms)."""
        return np.empty((self.P, self.Q), self.dtype)





@dataclass(frozen=True)
class InterleavedLayout(_Results):
    """One call's arrangement for the sample-wise loops: the groups of a sample interleave along its last axes.

    That is channel-last group norm and instance norm. Their kernels see x as (N, *spatial, G, C/G) (instance norm:
    (N, *spatial, C), so C/G is 1) and reduce the spatial axes and C/G, keeping N and G. As fields of shape
    (B, R, K) (a view of C-contiguous fields), sample ``b`` is one contiguous block of R rows of K = G*S values,
    and group ``(b, g)`` is the values ``[b, r, g*S + s]`` for every row r and every s < S:

    * ``B``: the leading kept axes (the samples);
    * ``R``: the reduced axes between them and the trailing kept axes (the spatial positions);
    * ``G``: the trailing kept axes (the groups of a sample);
    * ``S``: the reduced axes after them (the channels of a group; 1 for instance norm).

    Parameters vary along the G and S axes and on no other (one value per channel): a (K,) array. Per-group values
    are (B, G) arrays. :meth:`of` returns None for anything else (the generated wrapper then runs the NumPy kernel).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    B: int
    R: int
    G: int
    S: int
    group_shape: tuple[int, ...]
    parameter_shape: tuple[int, ...]

    @classmethod
    def of(cls, reducer, fields, per_group, parameters) -> InterleavedLayout | None:
        """The layout of a call with these fields, per-group values (arrays shaped for broadcasting, or scalars)
        and parameters (arrays of the parameters' broadcast shape), or None when the loops do not cover it."""
        found = _local_fields(reducer, fields)
        if found is None:
            return None
        shape, dtype = found
        ndim = len(shape)
        reduced = set(reducer.axes)
        kept = [a for a in range(ndim) if a not in reduced]
        # kept: a leading run [0, k0) and one more run [k1, k2); reduced: [k0, k1) and [k2, ndim)
        k0 = next((a for a in range(ndim) if a in reduced), ndim)
        k1 = next((a for a in range(k0, ndim) if a not in reduced), ndim)
        k2 = next((a for a in range(k1, ndim) if a in reduced), ndim)
        if k0 == 0 or k1 == ndim or kept != list(range(k0)) + list(range(k1, k2)):
            return None
        parameter_shape = tuple(1 if a in reducer.parameter_axes else n for a, n in enumerate(shape))
        if parameter_shape != tuple(1 if a < k1 else n for a, n in enumerate(shape)):
            return None  # the parameters must have one value per channel (per position along the G and S axes)
        group_shape = tuple(n if a in kept else 1 for a, n in enumerate(shape))
        if not (_broadcastable(per_group, group_shape, dtype, scalars=True)
                and _broadcastable(parameters, parameter_shape, dtype, scalars=False)):
            return None
        B, R = math.prod(shape[:k0]), math.prod(shape[k0:k1])
        G, S = math.prod(shape[k1:k2]), math.prod(shape[k2:])
        return cls(tuple(shape), dtype, B, R, G, S, group_shape, parameter_shape)

    def fields(self, array: np.ndarray) -> np.ndarray:
        """A field as (B, R, K): a view."""
        return array.reshape(self.B, self.R, self.G * self.S)

    def per_group(self, value) -> np.ndarray:
        """A per-group value (array shaped for broadcasting, or scalar) as a contiguous (B, G) array."""
        array = np.asarray(value, dtype=self.dtype)
        if array.ndim == 0:  # eps
            return np.full((self.B, self.G), array)
        return np.ascontiguousarray(np.broadcast_to(array, self.group_shape)).reshape(self.B, self.G)

    def parameter(self, value: np.ndarray) -> np.ndarray:
        """A parameter as a contiguous (K,) array, one value per channel."""
        return np.ascontiguousarray(np.broadcast_to(value, self.parameter_shape)).reshape(self.G * self.S)





def _local_fields(reducer, fields) -> tuple[tuple[int, ...], np.dtype] | None:
    """The (shape, dtype) of fields that the group-local and sample-wise loops take: the local reducer (a sharded
    run's reducer adds the shards' totals in its sums, which the loops would bypass) and C-contiguous arrays of one
    shape and one dtype, float32 or float64. None otherwise."""
    if type(reducer) is not Reducer:
        return None
    first = fields[0]
    if not isinstance(first, np.ndarray) or first.dtype not in _DTYPES:
        return None
    if any(not isinstance(f, np.ndarray) or f.shape != first.shape or f.dtype != first.dtype
           or not f.flags.c_contiguous for f in fields):
        return None
    return first.shape, first.dtype


def _broadcastable(values, shape: tuple[int, ...], dtype, scalars: bool) -> bool:
    """Whether every value is an array of ``dtype`` with one length 1 or ``shape``'s on each of its axes (or, when
    ``scalars``, a scalar such as eps)."""
    for value in values:
        array = np.asarray(value) if scalars else value
        if scalars and array.ndim == 0:
            continue
        if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != len(shape) or any(
                n not in (1, m) for n, m in zip(array.shape, shape)):
            return False
    return True
