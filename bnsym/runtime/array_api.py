"""Reductions for the array-API kernels, on any array library, with the accuracy contract of
:mod:`bnsym.runtime.reduce`.

The generated array-API kernels (``bnsym._generated.*_array_api``) take an :class:`ArrayAPIReducer` where the NumPy
kernels take a :class:`bnsym.runtime.reduce.Reducer`: the same three members (``count``, ``sums``, ``parameter_sums``),
plus ``xp``, the array namespace (from ``array-api-compat``) that the kernel computes with. Everything here uses
only the array API standard, so it runs unchanged on NumPy, PyTorch (CPU or CUDA), JAX (inside ``jax.jit``: shapes
are static, nothing goes back to the host) and CuPy, on the arrays' own device.

Accuracy contract. A float32 sum of 10^5 values near 10^4, added one after another, loses most of its digits. Here
a float32 (or float16) sum is taken in two levels, as in :mod:`bnsym.runtime.reduce`:

1. *partials*: blocks of at most :data:`~bnsym.runtime.reduce.BLOCK` rows, or pieces of at most
   :data:`~bnsym.runtime.reduce.RUN` contiguous values of one run, summed in the arrays' dtype;
2. *totals*: the partials added in float64 when the namespace has float64 on the arrays' device (NumPy, PyTorch
   on CPU and CUDA, JAX with ``jax_enable_x64``), and otherwise (JAX by default, PyTorch on MPS) by a compensated
   pairwise sum in the arrays' own dtype: each addition's rounding error is recovered exactly (Knuth's TwoSum)
   and carried along, so the total is as accurate as a float64 one for any realistic number of partials.

float64 arrays are summed directly (their own precision is the contract). Values of the totals are returned in the
arrays' dtype, with the reduced axes kept as length 1.

Memory. The array API has no ``out=``, so a product of full-size fields would be a temporary as large as the input.
The reducer forms the products it sums one chunk at a time (:meth:`ArrayAPIReducer._reduce`), and the kernels add
product terms to their outputs with :func:`add_product`, which does the same when :func:`in_place_allowed` says
that the kernel may write into the arrays it made.
"""

from __future__ import annotations

import math

from bnsym.runtime import chunks
from bnsym.runtime.chunks import broadcast_shape as _broadcast_shape
from bnsym.runtime.chunks import product as _product
from bnsym.runtime.chunks import slice_along as _slice
from bnsym.runtime.reduce import BLOCK, RUN

__all__ = ["CHUNKS", "MIN_CHUNK", "ArrayAPIReducer", "add_product", "has_float64", "in_place_allowed", "namespace"]

#: A product that a reduction needs is formed in chunks of at most 1/CHUNKS of its size (``ArrayAPIReducer._reduce``),
#: and no chunk is smaller than MIN_CHUNK bytes (the defaults of :mod:`bnsym.runtime.chunks`).
CHUNKS = chunks.CHUNKS
MIN_CHUNK = chunks.MIN_CHUNK


def namespace(*arrays):
    """The array-API namespace of ``arrays`` (array-api-compat's wrapper where a library needs one)."""
    from array_api_compat import array_namespace

    return array_namespace(*arrays)


def has_float64(xp, array) -> bool:
    """Whether ``xp`` offers float64 on the device of ``array`` (not JAX without x64, not PyTorch on MPS)."""
    from array_api_compat import device

    try:
        return "float64" in xp.__array_namespace_info__().dtypes(device=device(array), kind="real floating")
    except (AttributeError, TypeError):  # a namespace older than the 2023.12 inspection API
        return hasattr(xp, "float64")


def in_place_allowed(*arrays) -> bool:
    """Whether a kernel may update the arrays it created itself in place (``arrays``: its arguments).

    False for JAX arrays (immutable: an augmented assignment makes a new array anyway) and while PyTorch's autograd
    records the call (grad mode on and an argument requires grad): autograd may then have saved any array the
    kernel made, and writing into it would break the backward pass. True otherwise (NumPy, CuPy, PyTorch without
    autograd). Arguments that are not arrays (eps) are ignored.
    """
    from array_api_compat import is_jax_array, is_torch_array

    if any(is_jax_array(a) for a in arrays):
        return False
    tensors = [a for a in arrays if is_torch_array(a)]
    if tensors and any(t.requires_grad for t in tensors):
        import torch

        return not torch.is_grad_enabled()
    return True


def add_product(out, *factors, in_place: bool):
    """``out += factors[0] * factors[1] * ...``, returning ``out``: when ``in_place`` (:func:`in_place_allowed`),
    formed one chunk of ``out`` at a time by :func:`bnsym.runtime.chunks.add_product` (at most 1/:data:`CHUNKS` of
    it, at
    least :data:`MIN_CHUNK` bytes), so that no temporary as large as ``out`` exists; else (JAX, PyTorch's autograd)
    one ``out += product``. The multiplications happen in the order given, so the values are the same either way."""
    if not in_place:
        out += _product(factors)
        return out
    return chunks.add_product(out, *factors, count=CHUNKS, smallest=MIN_CHUNK)


class ArrayAPIReducer:
    """The reductions of one call of an array-API kernel: sums over ``axes``, groups of ``count`` values.

    Members as :class:`bnsym.runtime.reduce.Reducer`, plus ``xp``. ``float64_totals`` chooses the second level of a
    float32
    sum (module docstring): True for float64, False for the compensated pairwise sum, None (default) to use float64
    exactly when the namespace has it on the arrays' device.
    """

    __slots__ = ("axes", "count", "float64_totals", "parameter_axes", "xp")

    def __init__(self, xp, axes: tuple[int, ...], count: int, parameter_axes: tuple[int, ...] = (),
                 float64_totals: bool | None = None):
        self.xp = xp
        self.axes = tuple(axes)
        self.count = count
        self.parameter_axes = tuple(parameter_axes)
        self.float64_totals = float64_totals

    def __repr__(self) -> str:
        return f"ArrayAPIReducer(xp={self.xp.__name__}, axes={self.axes}, count={self.count})"

    def sums(self, *terms):
        """The per-group sum of each term's product, formed and summed chunk by chunk (:meth:`_reduce`)."""
        return tuple(self._reduce(term, self.axes) for term in terms)

    def parameter_sums(self, *terms):
        """The sum of each term's product over :attr:`parameter_axes`, in the parameters' broadcast shape."""
        return tuple(self._reduce(term, self.parameter_axes) for term in terms)

    # ----- internals -----

    def _reduce(self, term, axes: tuple[int, ...], target: int | None = None):
        """sum(product of the term's factors) over ``axes``, keeping them as length-1 axes.

        The array API has no ``out=`` and no multiply-and-sum that every library evaluates without the product
        (PyTorch's ``linalg.vecdot`` forms it; NumPy's ``vecdot`` along a strided axis is several times slower
        than a sum), so the product of full-size fields would be a temporary as large as the input. Instead it is
        formed and summed one chunk at a time: slices of the leading axes, each at most 1/:data:`CHUNKS` of the
        whole (and at least :data:`MIN_CHUNK` bytes). Each chunk is cut into float32 partials as a whole array is
        (at most BLOCK rows or RUN contiguous values each), and the partials of all chunks are added in float64
        at once, then returned in the arrays' dtype.

        Not chunked: JAX arrays (XLA fuses the product into the reduction, and a loop would only lengthen the
        traced program), and float32 on a device without float64, whose totals are one compensated sum of all the
        partials.
        """
        xp = self.xp
        shape = _broadcast_shape(term)
        dtype = term[0].dtype
        nbytes = math.prod(shape) * dtype.itemsize
        if target is None:
            target = max(nbytes // CHUNKS, MIN_CHUNK)
        if (not axes or nbytes <= target or _is_jax(term[0])
                or dtype != xp.float64 and not self._float64_totals(term[0])):
            return self._sum(self._product(term), axes)
        kept = [i for i, n in enumerate(shape) if i not in axes and n > 1]
        result_bytes = math.prod(shape[i] for i in kept) * 8
        if kept and result_bytes > target // 4:
            # A large result (a parameter's gradient summed over a few rows): its float64 totals, a running one
            # and a chunk's, would be large temporaries, so reduce it piece by piece along a kept axis; each piece
            # is final, in the arrays' dtype, and written into the result where the library allows.
            axis = kept[0]
            step = max(1, target // 4 // (result_bytes // shape[axis]))
            pieces = ((start, tuple(_slice(factor, len(shape), axis, start, start + step) for factor in term))
                      for start in range(0, shape[axis], step))
            if not in_place_allowed(*term):
                return xp.concat([self._reduce(piece, axes, target) for _, piece in pieces], axis=axis)
            from array_api_compat import device

            result = xp.empty(tuple(1 if i in axes else n for i, n in enumerate(shape)), dtype=dtype,
                              device=device(term[0]))
            for start, piece in pieces:
                result[(slice(None),) * axis + (slice(start, start + step),)] = self._reduce(piece, axes, target)
            return result
        partials = self._chunked(term, shape, axes, 0, target, dtype.itemsize)
        totals = xp.reshape(self._total(partials, term[0]), tuple(1 if i in axes else n for i, n in enumerate(shape)))
        return totals if totals.dtype == dtype else xp.astype(totals, dtype)

    def _chunked(self, term, shape, axes, axis, target, itemsize):
        """The partials of the term's product over ``axes`` (as :meth:`_partials`), slicing ``axis`` and, if need
        be, the axes after it; ``shape`` is the product's shape. The chunks' partials are stacked (chunks along a
        reduced axis) or placed side by side (along a kept axis, in the order of the groups), so that one
        :meth:`_total` adds them all: a few operations per chunk."""
        if math.prod(shape[axis:]) * itemsize <= target:
            return self._partials(self._product(term), axes)
        slice_bytes = math.prod(shape[axis + 1:]) * itemsize
        step = max(1, target // slice_bytes)
        parts, held = [], 0
        for start in range(0, shape[axis], step):
            chunk = tuple(_slice(factor, len(shape), axis, start, start + step) for factor in term)
            if slice_bytes > target:  # one slice of this axis is still too large: slice the next axis too
                chunk_shape = shape[:axis] + (1,) + shape[axis + 1:]
                parts.append(self._chunked(chunk, chunk_shape, axes, axis + 1, target, itemsize))
            else:
                parts.append(self._partials(self._product(chunk), axes))
            held += math.prod(parts[-1].shape) * parts[-1].dtype.itemsize
            if axis in axes and held > target // 4 and len(parts) > 1:
                # The partials held grow with the chunks (a parameter's gradient over few rows: as large as the
                # result per chunk): add them up into one float64 row.
                parts = [self.xp.sum(self._stack(parts, 0, wide=True), axis=0, keepdims=True)]
                held = math.prod(parts[0].shape) * 8
        return self._stack(parts, 0 if axis in axes else 1)

    def _stack(self, parts, axis: int, wide: bool = False):
        """``concat(parts, axis)``, in float64 if ``wide`` or if any part is float64 (one that was added up)."""
        xp = self.xp
        if wide or any(part.dtype == xp.float64 for part in parts):
            parts = [part if part.dtype == xp.float64 else xp.astype(part, xp.float64) for part in parts]
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=axis)

    def _product(self, term):
        return _product(term, in_place=len(term) > 2 and in_place_allowed(*term))

    def _float64_totals(self, like) -> bool:
        """Whether the partials of a float32 sum are added in float64 (``float64_totals``, class docstring)."""
        return has_float64(self.xp, like) if self.float64_totals is None else self.float64_totals

    def _sum(self, a, axes: tuple[int, ...]):
        """The sum of ``a`` over ``axes`` (kept as length 1), in ``a``'s dtype."""
        if not axes:
            return a
        total = self._wide_sum(a, axes)
        return total if total.dtype == a.dtype else self.xp.astype(total, a.dtype)

    def _wide_sum(self, a, axes: tuple[int, ...]):
        """The sum of ``a`` over ``axes`` (kept as length 1): in float64 when ``a`` is float64 or its partials are
        added in float64 (module docstring), else a compensated sum in ``a``'s dtype."""
        xp = self.xp
        if a.dtype == xp.float64:
            return xp.sum(a, axis=axes, keepdims=True)
        keep = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
        return xp.reshape(self._total(self._partials(a, axes), a), keep)

    def _partials(self, a, axes: tuple[int, ...]):
        """(n, groups) partial sums of ``a`` over ``axes``, the groups in the order of the kept axes: float32 sums
        of at most BLOCK rows or RUN contiguous values, or for a float64 ``a`` its sums, n = 1."""
        xp = self.xp
        if a.dtype == xp.float64:
            return xp.reshape(xp.sum(a, axis=axes, keepdims=True), (1, -1))
        kept = [i for i in range(a.ndim) if i not in axes]
        if kept and kept != list(range(kept[0], kept[-1] + 1)):
            # Kept axes apart from each other: bring them together (a copy), then sum as runs.
            order = kept + [i for i in range(a.ndim) if i in axes]
            a = xp.permute_dims(a, tuple(order))
            rows, groups, inner = 1, math.prod(a.shape[:len(kept)]), math.prod(a.shape[len(kept):])
        elif kept:
            rows = math.prod(a.shape[:kept[0]])
            groups = math.prod(a.shape[kept[0]:kept[-1] + 1])
            inner = math.prod(a.shape[kept[-1] + 1:])
        else:
            rows, groups, inner = 1, 1, math.prod(a.shape)
        if inner == 1:
            return self._block_partials(xp.reshape(a, (rows, groups)))
        return self._run_partials(xp.reshape(a, (rows, groups, inner)))

    def _block_partials(self, a):
        """(rows, groups) -> (blocks, groups): sums of at most BLOCK rows, in the arrays' dtype."""
        xp = self.xp
        rows, groups = a.shape
        whole = rows - rows % BLOCK
        partials = []
        if whole:
            partials.append(xp.sum(xp.reshape(a[:whole, ...], (whole // BLOCK, BLOCK, groups)), axis=1))
        if whole < rows:
            partials.append(xp.sum(a[whole:, ...], axis=0, keepdims=True))
        return partials[0] if len(partials) == 1 else xp.concat(partials, axis=0)

    def _run_partials(self, a):
        """(rows, groups, inner) -> (rows * pieces, groups): sums of at most RUN contiguous values."""
        xp = self.xp
        rows, groups, inner = a.shape
        piece = _even_piece(inner)
        if piece:  # pieces of one length: a reshape, no slices (which XLA would not fuse with the product)
            return xp.reshape(xp.permute_dims(xp.sum(xp.reshape(a, (rows, groups, inner // piece, piece)), axis=3),
                                              (0, 2, 1)), (-1, groups))
        whole = inner - inner % RUN
        partials = []
        if whole:
            pieces = xp.reshape(a[:, :, :whole], (rows, groups, whole // RUN, RUN))
            partials.append(xp.sum(pieces, axis=3))
        if whole < inner:
            partials.append(xp.sum(a[:, :, whole:], axis=2, keepdims=True))
        partial = partials[0] if len(partials) == 1 else xp.concat(partials, axis=2)
        return xp.reshape(xp.permute_dims(partial, (0, 2, 1)), (-1, groups))

    def _total(self, partials, like):
        """(n, groups) partials -> (groups,) totals: float64 ones, or compensated ones in the partials' dtype."""
        xp = self.xp
        if partials.dtype == xp.float64:
            return xp.sum(partials, axis=0)
        if self._float64_totals(like):
            return xp.sum(xp.astype(partials, xp.float64), axis=0)
        return _compensated_sum(xp, partials)


def _compensated_sum(xp, partials):
    """Sum over axis 0 in pairs, carrying each addition's exact rounding error (TwoSum) alongside the sum."""
    high = partials
    low = xp.zeros_like(partials)
    while high.shape[0] > 1:
        if high.shape[0] % 2:
            pad = xp.zeros_like(high[:1, ...])
            high = xp.concat([high, pad], axis=0)
            low = xp.concat([low, pad], axis=0)
        a, b = high[0::2, ...], high[1::2, ...]
        total = a + b
        b_virtual = total - a
        error = (a - (total - b_virtual)) + (b - b_virtual)
        high = total
        low = low[0::2, ...] + low[1::2, ...] + error
    return high[0, ...] + low[0, ...]


def _is_jax(array) -> bool:
    from array_api_compat import is_jax_array

    return is_jax_array(array)


def _even_piece(inner: int) -> int:
    """The longest piece length of at most RUN that divides ``inner`` into equal pieces, if it is at least RUN / 2
    (at most twice as many partials as pieces of RUN would give); 0 if there is none (a prime ``inner``, say)."""
    if inner <= RUN:
        return inner
    for length in range(RUN, RUN // 2 - 1, -1):
        if inner % length == 0:
            return length
    return 0
