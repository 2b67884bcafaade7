"""bnsym.testing.strategies: arguments are validated at once, and each regime produces what its name promises."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument

from bnsym.testing import strategies as bst


@pytest.mark.parametrize("factory, kwargs", [
    (bst.batch_norm_examples, {"dtype": "int32"}),
    (bst.batch_norm_examples, {"dtype": "complex64"}),
    (bst.batch_norm_examples, {"regimes": ("huge",)}),
    (bst.batch_norm_examples, {"regimes": ()}),
    (bst.batch_norm_examples, {"min_dims": 1}),
    (bst.batch_norm_examples, {"min_dims": 4, "max_dims": 3}),
    (bst.batch_norm_examples, {"max_count": 1}),
    (bst.batch_norm_examples, {"max_channels": 2.5}),
    (bst.channel_shapes, {"min_channels": 0}),
    (bst.channel_shapes, {"min_count": 5, "max_count": 2}),
    (bst.channel_shapes, {"channel_axis": 2}),
    (bst.epsilons, {"min_eps": 0}),
    (bst.epsilons, {"min_eps": 0.1, "max_eps": 0.01}),
    (bst.epsilons, {"max_eps": float("inf")}),
    (bst.dtypes, {"include_float16": "yes"}),
    (bst.regimes, {"names": ("tiny",)}),
], ids=lambda v: v.__name__ if callable(v) else "-".join(f"{k}={v!r}" for k, v in v.items()))
def test_bad_arguments_raise_invalid_argument_at_once(factory, kwargs):
    with pytest.raises(InvalidArgument, match="|".join(str(k) for k in kwargs)):
        factory(**kwargs)  # no .example(): the error comes from the call itself


def test_strategies_take_keyword_arguments_only():
    with pytest.raises(TypeError):
        bst.batch_norm_examples("float32")


@settings(max_examples=50)
@given(bst.channel_shapes(min_dims=3, max_dims=5, max_channels=3, min_count=2, max_count=40))
def test_shapes_respect_their_bounds(shape):
    assert 3 <= len(shape) <= 5
    assert 1 <= shape[1] <= 3
    assert 2 <= int(np.prod(shape)) // shape[1] <= 40


@settings(max_examples=30)
@given(bst.channel_shapes(min_dims=4, max_dims=4, min_channels=3, max_channels=3, channel_axis=-1))
def test_channels_last_shapes_put_c_last(shape):
    assert shape[-1] == 3


def _per_channel(x):
    values = np.moveaxis(x.astype(np.float64), 1, 0).reshape(x.shape[1], -1)
    return values.mean(axis=1), values.std(axis=1)


@given(bst.batch_norm_examples(dtype="float32", regimes=("large offset",)))
def test_large_offset_is_ill_conditioned(example):
    mean, std = _per_channel(example.x)
    assert np.all(np.abs(mean) >= 900) and np.all(np.abs(mean) / np.maximum(std, 1e-30) > 100)


@given(bst.batch_norm_examples(regimes=("variance near eps",), min_dims=2, max_count=64))
def test_variance_near_eps_is_within_a_factor_of_ten_or_so(example):
    _, std = _per_channel(example.x)
    assert np.all(std**2 < 100 * example.eps)


@given(bst.batch_norm_examples(regimes=("constant channel",)))
def test_constant_channel_has_at_least_one_constant_channel(example):
    values = np.moveaxis(example.x, 1, 0).reshape(example.channels, -1)
    assert np.any(np.ptp(values, axis=1) == 0)


@given(bst.batch_norm_examples(regimes=("tiny batch",)))
def test_tiny_batch_has_two_or_three_values_per_channel(example):
    assert example.count in (2, 3)


@given(bst.batch_norm_examples(dtype="float16"))
def test_examples_are_finite_in_their_dtype_and_dy_is_never_degenerate(example):
    for array in (example.x, example.gamma, example.beta, example.dy):
        assert array.dtype == np.float16 and np.all(np.isfinite(array))
    assert bst.MIN_EPS <= example.eps <= bst.MAX_EPS, example.eps
    assert not np.all(example.dy == 1) and np.any(example.dy != 0), "dy is ones or zeros (scaled to nothing)"
    assert example.gamma.shape == (example.channels,)


def test_same_seed_same_example():
    a = bst.make_example((4, 3, 2), "wide dynamic range", 1e-3, 7, "float32")
    b = bst.make_example((4, 3, 2), "wide dynamic range", 1e-3, 7, "float32")
    for name in ("x", "gamma", "beta", "dy"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
