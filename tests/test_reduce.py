"""bnsym.runtime.reduce against correctly rounded sums (math.fsum), on every layout path (blocked rows, packed rows,
contiguous runs, fallback)."""

import math

import numpy as np
import pytest

from bnsym.runtime.reduce import BLOCK, PACKED, RUN, batch_dot, batch_sum

LAYOUTS = [  # shape, reduced axes
    ((3 * BLOCK + 5, 7), (0,)),  # rows: whole blocks and a remainder
    ((BLOCK - 1, 3), (0,)),  # fewer rows than one block
    ((2 * BLOCK * (PACKED // 16) + 3, 16), (0,)),  # few channels: rows packed side by side, and a remainder
    ((2, 5, 3 * BLOCK * (PACKED // 8), 8), (0, 1, 2)),  # NHWC with packed rows and no remainder
    ((4, 5, 6, 7), (0, 2, 3)),  # NCHW: contiguous runs of H*W
    ((2, 3, 3 * RUN + 17), (0, 2)),  # runs longer than RUN: whole pieces and a remainder
    ((2, 3, 2 * RUN), (0, 2)),  # runs of whole pieces only
    ((4, 6, 7, 5), (0, 1, 2)),  # NHWC
    ((5, 6, 7), (1,)),  # a kept axis on each side: the float64 fallback
    ((6, 5), (0, 1)),  # everything reduced
]


def _exact_sum(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """sum over ``axes`` (kept as length-1 axes), correctly rounded: numpy.sum of a float64 reference over 10^4
    rows is itself off by more than the tolerance below."""
    kept = [i for i in range(a.ndim) if i not in axes]
    columns = np.moveaxis(a, kept, range(len(kept))).reshape(math.prod(a.shape[i] for i in kept), -1)
    totals = np.array([math.fsum(column) for column in columns])
    return totals.reshape([1 if i in axes else n for i, n in enumerate(a.shape)])


@pytest.mark.parametrize(("shape", "axes"), LAYOUTS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sums_match_exact_sums(shape, axes, dtype):
    rng = np.random.default_rng(len(shape))
    a = (100 + rng.normal(size=shape)).astype(dtype)
    b = rng.normal(size=shape).astype(dtype)
    tolerance = 8 * np.finfo(dtype).eps
    for got, a64 in [(batch_sum(a, axes), a.astype(np.float64)), (batch_dot(a, b, axes), a * b.astype(np.float64))]:
        expected = _exact_sum(a64, axes)
        assert got.dtype == dtype and got.shape == expected.shape
        assert np.max(np.abs(got - expected)) <= tolerance * np.max(np.abs(a64).sum(axis=axes))


def test_non_contiguous_input_is_summed_correctly():
    a = np.arange(24.0).reshape(4, 6)[:, ::2]
    np.testing.assert_allclose(batch_sum(a, (0,)), a.sum(axis=0, keepdims=True))


def test_float32_sum_over_many_rows_keeps_its_digits():
    """A row-by-row float32 sum of 10^5 values near 10^4 is off by about 8 in the mean; this is not."""
    x = np.full((100_000, 2), 10_000.5, np.float32)
    assert np.max(np.abs(batch_sum(x, (0,)) / 100_000 - 10_000.5)) < 1e-3


def test_reducer_sums_broadcast_terms_and_parameter_sums():
    """A term may mix full-size fields with per-group and per-parameter arrays (LayerNorm's gamma is per element,
    its invstd per row); parameter_sums adds over the axes where the parameter has length 1."""
    from bnsym.runtime.reduce import Reducer

    rng = np.random.default_rng(3)
    x, dy = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    gamma, invstd = rng.normal(size=(1, 7)), rng.normal(size=(5, 1))
    reducer = Reducer(axes=(1,), count=7, parameter_axes=(0,))
    sum_dy, sum_gamma_dy_x = reducer.sums((dy,), (gamma, dy, x))
    np.testing.assert_allclose(sum_dy, dy.sum(axis=1, keepdims=True), rtol=1e-14)
    np.testing.assert_allclose(sum_gamma_dy_x, (gamma * dy * x).sum(axis=1, keepdims=True), rtol=1e-13)
    (dgamma, per_group) = reducer.parameter_sums((dy, x, invstd), (invstd,))
    np.testing.assert_allclose(dgamma, (dy * x * invstd).sum(axis=0, keepdims=True), rtol=1e-13)
    assert dgamma.shape == (1, 7) and per_group.shape == (1, 1)
    np.testing.assert_allclose(per_group, invstd.sum(keepdims=True), rtol=1e-14)


def test_parameter_sum_accumulates_float32_in_float64():
    """LayerNorm's dgamma sums over every row: a float32 running total over 10^5 rows near 1e4 loses its digits."""
    from bnsym.runtime.reduce import parameter_sum

    x = np.full((100_000, 2), 10_000.5, np.float32)
    total = parameter_sum((x,), (0,))
    assert total.dtype == np.float32 and total.shape == (1, 2)
    assert np.all(np.abs(total / 100_000 - 10_000.5) < 1e-3), total / 100_000


def test_a_parameter_gradient_with_nothing_to_sum_is_formed_in_its_own_dtype_without_a_float64_copy():
    """Adaptive layer norm on x of shape (N, D) has one scale per row: its dgamma sums nothing, so it is the product
    itself, in float32, with no float64 array of x's size on the way (peak memory: the result alone)."""
    import tracemalloc

    from bnsym.runtime.reduce import parameter_sum

    rng = np.random.default_rng(5)
    dy, x = (rng.normal(size=(256, 512)).astype(np.float32) for _ in range(2))
    invstd = rng.uniform(0.5, 2, size=(256, 1)).astype(np.float32)
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    dgamma = parameter_sum((dy, x, invstd), ())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert dgamma.dtype == np.float32 and dgamma.shape == x.shape
    expected = dy.astype(np.float64) * x * invstd
    assert np.max(np.abs(dgamma - expected) / np.abs(expected)) <= 2 * np.finfo(np.float32).eps
    assert peak - before <= 1.1 * dgamma.nbytes, f"peak {(peak - before) / dgamma.nbytes:.2f}x the result's size"
