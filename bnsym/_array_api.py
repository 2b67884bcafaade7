"""Reductions for the array-API kernels, on any array library, with the accuracy contract of :mod:`bnsym._reduce`.

The generated array-API kernels (``bnsym._generated.*_array_api``) take an :class:`ArrayAPIReducer` where the NumPy
kernels take a :class:`bnsym._reduce.Reducer`: the same three members (``count``, ``sums``, ``parameter_sums``),
plus ``xp``, the array namespace (from ``array-api-compat``) that the kernel computes with. Everything here uses
only the array API standard, so it runs unchanged on NumPy, PyTorch (CPU or CUDA), JAX (inside ``jax.jit``: shapes
are static, nothing goes back to the host) and CuPy, on the arrays' own device.

Accuracy contract. A float32 sum of 10^5 values near 10^4, added one after another, loses most of its digits. Here
a float32 (or float16) sum is taken in two levels, as in :mod:`bnsym._reduce`:

1. *partials*: blocks of at most :data:`~bnsym._reduce.BLOCK` rows, or pieces of at most
   :data:`~bnsym._reduce.RUN` contiguous values of one run, summed in the arrays' dtype;
2. *totals*: the partials added in float64 when the namespace has float64 on the arrays' device (NumPy, PyTorch
   on CPU and CUDA, JAX with ``jax_enable_x64``), and otherwise (JAX by default, PyTorch on MPS) by a compensated
   pairwise sum in the arrays' own dtype: each addition's rounding error is recovered exactly (Knuth's TwoSum)
   and carried along, so the total is as accurate as a float64 one for any realistic number of partials.

float64 arrays are summed directly (their own precision is the contract). Values of the totals are returned in the
arrays' dtype, with the reduced axes kept as length 1.
"""

from __future__ import annotations

import math

from bnsym._reduce import BLOCK, RUN

__all__ = ["ArrayAPIReducer", "has_float64", "namespace"]


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


class ArrayAPIReducer:
    """The reductions of one call of an array-API kernel: sums over ``axes``, groups of ``count`` values.

    Members as :class:`bnsym._reduce.Reducer`, plus ``xp``. ``float64_totals`` chooses the second level of a float32
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
        """The per-group sum of each term's product (the product is formed, then summed)."""
        return tuple(self._sum(self._product(term), self.axes) for term in terms)

    def parameter_sums(self, *terms):
        """The sum of each term's product over :attr:`parameter_axes`, in the parameters' broadcast shape."""
        return tuple(self._sum(self._product(term), self.parameter_axes) for term in terms)

    # ----- internals -----

    def _product(self, term):
        product = term[0]
        for factor in term[1:]:
            product = product * factor
        return product

    def _sum(self, a, axes: tuple[int, ...]):
        xp = self.xp
        keep = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
        if not axes:
            return a
        if a.dtype == xp.float64:
            return xp.sum(a, axis=axes, keepdims=True)
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
            partials = self._block_partials(xp.reshape(a, (rows, groups)))
        else:
            partials = self._run_partials(xp.reshape(a, (rows, groups, inner)))
        return xp.reshape(self._total(partials, a), keep)

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
        """(n, groups) partials -> (groups,) totals in the partials' dtype."""
        xp = self.xp
        wide = self.float64_totals
        if wide is None:
            wide = has_float64(xp, like)
        if wide:
            return xp.astype(xp.sum(xp.astype(partials, xp.float64), axis=0), partials.dtype)
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
