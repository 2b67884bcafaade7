"""Per-group reductions for the generated kernels: accurate in float32, and fast on large arrays.

Generated kernels never reduce by themselves: they receive a :class:`Reducer`, the one object through which the
reduced axes, the group size M (``reducer.count``) and every sum reach them. A sharded (data-parallel) run replaces
it by an object with the same three members whose ``sums`` adds the shards' totals and whose ``count`` is the
global M; nothing in the kernels changes.

Contract. ``batch_sum(a, axes)`` is ``numpy.sum(a, axis=axes, keepdims=True)`` and ``batch_dot(a, b, axes)`` is
``numpy.sum(a * b, axis=axes, keepdims=True)``, in the dtype of the fields, with two differences:

* accuracy: values are summed in blocks of at most :data:`BLOCK` rows in the fields' own precision, and the block
  totals in float64. NumPy's reduction over a non-contiguous axis (the batch axis of an (N, C) or NHWC array)
  adds one row at a time, so in float32 a running total of 10^5 values near 10^4 loses most of its digits (the
  mean was off by 7.5 for x = 1e4 + N(0, 1) of shape (32, 56, 56, 64)); here a float32 total covers at most
  :data:`BLOCK` rows, or :data:`RUN` contiguous values of one row (the H*W values of one image and channel in
  NCHW, split into pieces when an image is large);
* speed: ``batch_dot`` never materialises ``a * b``; the products are summed by ``numpy.einsum`` as they are
  formed.

This module only sums; it knows nothing about batch norm. Nothing here is derived, so nothing here is generated.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BLOCK", "RUN", "Reducer", "batch_dot", "batch_sum", "parameter_sum"]

#: The most contiguous values of one run (the H*W values of one image and channel in NCHW) in one float32 partial.
RUN = 1024

#: The most rows (values per column) that one float32 partial sum covers.
BLOCK = 64

#: Rows of fewer values than this are packed side by side (see ``_reduce``): long inner loops are faster.
PACKED = 1024


def batch_sum(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """sum(a) over ``axes``, keeping them as length-1 axes."""
    return _reduce((a,), axes)


def batch_dot(a: np.ndarray, b: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """sum(a * b) over ``axes``, keeping them as length-1 axes; ``a`` and ``b`` have the same shape."""
    return _reduce((a, b), axes)


class Reducer:
    """The reductions of one call of a generated kernel: sums over ``axes``, groups of ``count`` values.

    - ``axes``: the reduced axes of the fields (kept as length-1 axes in every result).
    - ``count``: M, the number of values in one group.
    - ``parameter_axes``: the axes on which the layer's parameters (gamma, beta) have length 1; a parameter's
      gradient is summed over them (:meth:`parameter_sums`). Empty when every parameter is per group (batch norm).

    ``sums(*terms)`` returns, for each term (a tuple of arrays that broadcast against each other), the sum over
    ``axes`` of the product of its arrays, without materialising the product where the layout allows. The terms of
    one call are independent of each other: that is the unit a sharded reducer all-reduces in one round.
    """

    __slots__ = ("axes", "count", "parameter_axes")

    def __init__(self, axes: tuple[int, ...], count: int, parameter_axes: tuple[int, ...] = ()):
        self.axes = tuple(axes)
        self.count = count
        self.parameter_axes = tuple(parameter_axes)

    def __repr__(self) -> str:
        return f"Reducer(axes={self.axes}, count={self.count}, parameter_axes={self.parameter_axes})"

    def sums(self, *terms: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The per-group sum of each term's product."""
        return tuple(_reduce(tuple(term), self.axes) for term in terms)

    def parameter_sums(self, *terms: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """The sum of each term's product over :attr:`parameter_axes`, in the parameters' broadcast shape."""
        return tuple(parameter_sum(tuple(term), self.parameter_axes) for term in terms)


def parameter_sum(operands: tuple[np.ndarray, ...], axes: tuple[int, ...]) -> np.ndarray:
    """sum(product of ``operands``) over ``axes`` (length-1 axes kept), never materialising the product.

    The operands broadcast against each other (fields, per-group statistics, parameters). float64 is summed by
    einsum in float64. Lower precisions are summed in their own precision over blocks of the outermost summed axis
    that hold at most :data:`BLOCK` values per parameter entry, and the block totals in float64 (as
    :func:`batch_sum` does); when one block cannot be made that small, everything is accumulated in float64. When
    nothing is summed (a parameter per group, as adaptive layer norm's per-sample scale on x of shape (N, D)), the
    product is formed in the operands' precision: there is no sum to lose digits, and a float64 product would be a
    full-size float64 array and a second pass to round it (it took two thirds of that backward's time).
    """
    dtype = np.result_type(*operands)
    shape = np.broadcast_shapes(*(op.shape for op in operands))
    summed = [a for a in axes if shape[a] > 1]
    if not summed:
        return _einsum(operands, shape, axes, None).astype(dtype, copy=False)
    if dtype == np.float64:
        return _float64_einsum(operands, shape, axes).astype(dtype)
    outer = summed[0]
    inner = math.prod(shape[a] for a in summed[1:])
    if inner > BLOCK:
        return _float64_einsum(operands, shape, axes).astype(dtype)
    step = max(1, BLOCK // inner)
    if step >= shape[outer]:  # one block: its partial is the total (no float64 copy of a parameter-sized array)
        return _einsum(operands, shape, axes, None)
    total = None
    for start in range(0, shape[outer], step):
        block = tuple(_slice(op, shape, outer, start, step) for op in operands)
        block_shape = shape[:outer] + (min(step, shape[outer] - start),) + shape[outer + 1:]
        partial = _einsum(block, block_shape, axes, None)
        total = partial.astype(np.float64) if total is None else total + partial
    return total.astype(dtype)


def _slice(op: np.ndarray, shape, axis: int, start: int, length: int) -> np.ndarray:
    """``op``'s part of the block [start, start + length) of ``axis`` (all of it where ``op`` broadcasts there)."""
    op = op.reshape((1,) * (len(shape) - op.ndim) + op.shape)
    if op.shape[axis] == 1:
        return op
    index = [slice(None)] * len(shape)
    index[axis] = slice(start, start + length)
    return op[tuple(index)]


def _float64_einsum(operands, shape, axes) -> np.ndarray:
    """sum over ``axes`` of the product of the broadcast operands, in float64, keeping the axes as length 1."""
    return _einsum(operands, shape, axes, np.float64)


def _einsum(operands, shape, axes, dtype) -> np.ndarray:
    """sum over ``axes`` of the product of the broadcast operands, keeping the axes as length 1; ``dtype`` is the
    accumulation dtype (None: the operands')."""
    ndim = len(shape)
    letters = _letters(ndim)
    kept = [i for i in range(ndim) if i not in axes]
    # Each operand is labelled only on its axes of full length, so that einsum broadcasts the length-1 ones.
    squeezed, subscripts = [], []
    for op in operands:
        op = op.reshape((1,) * (ndim - op.ndim) + op.shape)
        full = [i for i in range(ndim) if op.shape[i] != 1 or shape[i] == 1]
        squeezed.append(op.reshape([op.shape[i] for i in full]))
        subscripts.append("".join(letters[i] for i in full))
    out = "".join(letters[i] for i in kept)
    total = np.einsum(",".join(subscripts) + "->" + out, *squeezed, dtype=dtype)
    return np.asarray(total).reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))


def _reduce(operands: tuple[np.ndarray, ...], axes: tuple[int, ...]) -> np.ndarray:
    first = operands[0]
    shape = first.shape if len(operands) == 1 else np.broadcast_shapes(*(op.shape for op in operands))
    dtype = first.dtype if len(operands) == 1 else np.result_type(*operands)
    keep = tuple(1 if i in axes else n for i, n in enumerate(shape))
    if 0 in shape:  # no groups (an empty result), or groups of no values (sums of nothing: zero)
        return np.zeros(keep, dtype)
    kept = [i for i in range(len(shape)) if i not in axes]
    contiguous = all(op.flags.c_contiguous and op.shape == shape for op in operands)
    if not kept or not contiguous or kept[-1] - kept[0] != len(kept) - 1:
        # Any other layout (or operands that broadcast): a correct, slower path that accumulates in float64.
        return _float64_einsum(operands, shape, axes).astype(dtype)
    # Reduced axes before the kept ones are "rows"; the kept axes and the reduced axes after them make a row.
    rows = math.prod(shape[:kept[0]])
    channels = math.prod(shape[kept[0]:kept[-1] + 1])
    inner = math.prod(shape[kept[-1] + 1:])
    if inner > 1:
        # Each row's run of `inner` contiguous values is summed in pieces of at most RUN values (float32
        # partials), then the partials in float64: a float32 total over a long run (an image of 10^6 pixels at an
        # offset of 1e4) would lose most of its digits, as the rows of an NHWC batch did.
        views = [op.reshape(rows, channels, inner) for op in operands]
        pieces, rest = divmod(inner, RUN)
        total = np.zeros((channels,), np.float64)
        if pieces:
            split = [v[:, :, :pieces * RUN].reshape(rows, channels, pieces, RUN) for v in views]
            partial = np.einsum(_subscripts(len(split), "rcpi", "rcp"), *split)
            total += partial.sum(axis=(0, 2), dtype=np.float64)
        if rest:
            partial = np.einsum(_subscripts(len(views), "rci", "rc"), *(v[:, :, pieces * RUN:] for v in views))
            total += partial.sum(axis=0, dtype=np.float64)
        return total.astype(dtype).reshape(keep)
    views = [op.reshape(rows, channels) for op in operands]
    # Few channels: `pack` consecutive rows side by side make one longer row, so that the inner loops are long;
    # every float32 partial still covers BLOCK values of one channel.
    pack = max(1, PACKED // channels)
    span = BLOCK * pack
    whole = rows - rows % span
    total = None
    if whole:
        blocks = [v[:whole].reshape(whole // span, BLOCK, pack * channels) for v in views]
        partial = np.einsum(_subscripts(len(blocks), "kbc", "kc"), *blocks).sum(axis=0, dtype=np.float64)
        total = partial.reshape(pack, channels).sum(axis=0) if pack > 1 else partial
    if whole < rows:
        rest = np.einsum(_subscripts(len(views), "bc", "c"), *(v[whole:] for v in views), dtype=np.float64)
        total = rest if total is None else total + rest
    return total.astype(dtype).reshape(keep)


def _letters(ndim: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[:ndim]


def _subscripts(count: int, operand: str, result: str) -> str:
    return ",".join([operand] * count) + "->" + result
