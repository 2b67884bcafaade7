"""Products formed chunk by chunk, so that no temporary as large as a full-size array exists.

``add_product(out, a, b, ...)`` is ``out += a * b * ...`` for an array ``out`` that a kernel owns, the factors
broadcasting against it: the product is formed and added one chunk of ``out`` at a time, slices of its leading axes
of at most 1/:data:`CHUNKS` of it and at least :data:`MIN_CHUNK` bytes. The multiplications happen in the order
given, so the values are those of the one-line expression. Only indexing and ``*`` are used, so this serves NumPy
arrays (the NumPy kernels) and any array-API library that allows in-place updates (:mod:`bnsym.runtime.array_api`).
"""

from __future__ import annotations

import math

__all__ = ["CHUNKS", "MIN_CHUNK", "add_product", "broadcast_shape", "chunk_indices", "product", "restrict",
           "slice_along"]

#: A chunk is at most 1/CHUNKS of the array ...
CHUNKS = 64

#: ... but no chunk is smaller than this many bytes: below it, the cost of one more call outweighs the memory.
MIN_CHUNK = 1 << 18


def add_product(out, *factors, count: int = CHUNKS, smallest: int = MIN_CHUNK):
    """``out += factors[0] * factors[1] * ...`` in chunks of at most 1/``count`` of ``out`` (and at least
    ``smallest`` bytes); returns ``out``."""
    itemsize = out.dtype.itemsize
    target = max(math.prod(out.shape) * itemsize // count, smallest)
    for index in chunk_indices(tuple(out.shape), itemsize, target):
        out[index] += product([restrict(factor, out.ndim, index) for factor in factors], in_place=True)
    return out


def broadcast_shape(arrays) -> tuple[int, ...]:
    """The shape that ``arrays`` broadcast to (aligned on their last axes); Python numbers among them count as
    arrays of no axes."""
    arrays = [a for a in arrays if hasattr(a, "shape")]
    ndim = max(a.ndim for a in arrays)
    shape = [1] * ndim
    for a in arrays:
        for i, n in enumerate(a.shape, start=ndim - a.ndim):
            if n != 1:
                shape[i] = n
    return tuple(shape)


def slice_along(a, ndim: int, axis: int, start: int, stop: int):
    """``a[..., start:stop, ...]`` on ``axis`` of the broadcast shape (of ``ndim`` axes), unless ``a`` broadcasts
    along it (length 1 or absent): then ``a`` itself."""
    own = axis - (ndim - a.ndim)
    if own < 0 or a.shape[own] == 1:
        return a
    return a[(slice(None),) * own + (slice(start, stop),)]


def product(factors, in_place: bool = False):
    """The product of ``factors``, in order; with ``in_place``, the third and later are multiplied into the array
    that the first multiplication made when it has the whole shape (one temporary instead of two)."""
    result = factors[0]
    for i, factor in enumerate(factors[1:]):
        if in_place and i and broadcast_shape((result, factor)) == tuple(result.shape):
            result *= factor
        else:
            result = result * factor
    return result


def chunk_indices(shape: tuple[int, ...], itemsize: int, target: int, axis: int = 0, prefix: tuple = ()):
    """Index tuples (slices of the leading axes) that cover an array of ``shape``, each of at most ``target``
    bytes (or one element)."""
    slice_bytes = math.prod(shape[axis + 1:]) * itemsize
    if math.prod(shape[axis:]) * itemsize <= target:
        yield prefix
        return
    step = max(1, target // slice_bytes)
    for start in range(0, shape[axis], step):
        index = prefix + (slice(start, start + step),)
        if slice_bytes > target:
            yield from chunk_indices(shape, itemsize, target, axis + 1, index)
        else:
            yield index


def restrict(a, ndim: int, index: tuple):
    """``a`` restricted to the chunk ``index`` of the broadcast shape (``ndim`` axes); a scalar or an axis on which
    ``a`` broadcasts is left whole."""
    if not hasattr(a, "shape"):
        return a
    for axis, part in enumerate(index):
        a = slice_along(a, ndim, axis, part.start, part.stop)
    return a
