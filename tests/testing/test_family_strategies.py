"""The family's strategies, references and bounds: pools that hold what the properties need, regimes that produce
what their names promise, an exact reference that agrees with bnsym's, and bounds that separate a correct
summation from a one-pass variance."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument

import bnsym
from bnsym.spec import LayerSpec, TrailingAxes, register, spec, unregister
from bnsym.spec.layer_spec import CENTRED_REGIMES
from bnsym.symbolic.layers import LAYERS as DECLARED
from bnsym.testing import reference
from bnsym.testing import strategies as bst
from bnsym.testing.magnitude import compiled
from bnsym.testing.protocols import layer_names

FAMILY = tuple(name for name in layer_names() if spec(name).grouping.per_sample)  # grouped within a sample

SEEDS = range(12)


def test_the_checker_knows_every_declared_layer():
    assert layer_names() == tuple(DECLARED) == bst.LAYERS


def _layout(layer, shape, size):
    return bst.entry_layout(layer, shape, size)


@pytest.mark.parametrize("layer", FAMILY)
def test_the_pool_holds_what_the_properties_need(layer):
    for seed in SEEDS:
        pool = bst.layer_shape_pool(layer, seed)
        assert pool == bst.layer_shape_pool(layer, seed) and len(pool) == 6, "the seed fixes a pool of 6"
        assert list(pool) == sorted(pool, key=lambda e: (math.prod(e[0]), len(e[0]), e)), "smallest first"
        layouts = [_layout(layer, shape, size) for shape, size in pool]
        counts = {layout.count for layout in layouts}
        assert {2, 3} <= counts, f"seed {seed}: no group of 2 or 3 values in {pool}"
        assert any(math.prod(layout.statistics_shape) >= 2 and shape[0] >= 2
                   for layout, (shape, _) in zip(layouts, pool)), f"seed {seed}: no two samples and groups"
        grouping = spec(layer).grouping
        if grouping.parameter_per_value:  # rows over trailing normalised axes (layer, RMS, Gemma, adaptive norm)
            assert any(size == 2 and min(shape[-2:]) >= 2 for shape, size in pool), \
                f"seed {seed}: no two normalised axes longer than 1 in {pool}"
            assert all(layout.parameter_shape == (shape[0], *shape[len(shape) - size:]) if grouping.sample_parameters
                       else layout.parameter_shape == shape[len(shape) - size:]
                       for layout, (shape, size) in zip(layouts, pool)), f"seed {seed}: parameter shapes"
        elif "num_groups" in grouping.option_names:  # groups of channels
            assert all(shape[1] % size == 0 for shape, size in pool)
            assert any(size >= 2 and shape[1] // size >= 2 and math.prod(shape[2:]) >= 2 for shape, size in pool)
        else:  # a sample's channel
            assert all(len(shape) >= 3 and math.prod(shape[2:]) >= 2 for shape, _ in pool)
        if grouping.sample_parameters:  # a row per sample: two samples, one of several rows (tokens)
            assert any(shape[0] >= 2 and math.prod(shape[1:len(shape) - size]) >= 2 for shape, size in pool), \
                f"seed {seed}: no two samples of several rows each in {pool}"


@pytest.mark.parametrize("call, message", [
    (lambda: bst.layer_examples("batch_norm", regimes=("constant group",)), "regimes"),
    (lambda: bst.layer_examples("layernorm"), "layer='layernorm'"),
    (lambda: bst.layer_examples("layer_norm", regimes=("constant channel",)), "regimes"),
    (lambda: bst.layer_examples("rms_norm", regimes=("variance near eps",)), "mean square near eps"),
    (lambda: bst.layer_examples("group_norm", dtype="int8"), "dtype"),
    (lambda: bst.layer_examples("layer_norm", shapes=[((4, 1), 1)], regimes=("well-conditioned",)), "shapes"),
    (lambda: bst.layer_shape_pool("instance_norm", size=3), "size"),
])
def test_bad_arguments_raise_invalid_argument_at_once(call, message):
    with pytest.raises(InvalidArgument, match=message):
        call()


@pytest.mark.parametrize("layer", FAMILY)
def test_each_regime_produces_what_its_name_promises(layer):
    for (shape, size) in bst.layer_shape_pool(layer, 3):
        layout = _layout(layer, shape, size)
        for regime in bst.layer_regimes(layer):
            if regime == "tiny group" and layout.count > 3:
                continue
            example = bst.make_layer_example(layer, shape, size, regime, 1e-3, 7, "float32")
            assert example.x.shape == shape and example.x.dtype == np.float32 and example.layer == layer
            assert example.gamma.shape == bst.gamma_shape(layer, shape, size)
            x = example.x.astype(np.float64).reshape(layout.grouped)
            mean = np.mean(x, axis=layout.axes)
            var = np.var(x, axis=layout.axes)
            if regime == "large offset":
                assert np.all(np.abs(mean) >= 900), regime
            elif regime == "variance near eps" and layout.count >= 8:
                assert np.all((var > 1e-3 / 100) & (var < 1e-3 * 100)), (regime, var)
            elif regime == "mean square near eps" and layout.count >= 8:
                ms = np.mean(x**2, axis=layout.axes)
                assert np.all((ms > 1e-3 / 100) & (ms < 1e-3 * 100)), (regime, ms)
            elif regime == "constant group":
                assert np.any(var == 0), regime
            assert not np.array_equal(example.dy, np.ones_like(example.dy))


@settings(max_examples=30)
@given(bst.layer_examples("group_norm", dtype="float32", shapes=bst.layer_shape_pool("group_norm", 1)))
def test_layer_examples_draw_from_the_pool(example):
    assert (example.x.shape, example.num_groups) in bst.layer_shape_pool("group_norm", 1)


@pytest.mark.parametrize("layer", [name for name in FAMILY if spec(name).plain])
def test_the_exact_reference_agrees_with_bnsyms(layer):
    """On every entry of the layer's pool small enough for the exact reference (M <= 4: the pool always holds groups
    of 2 and 3 values), at a few seeds."""
    entries = {entry for seed in range(4) for entry in bst.layer_shape_pool(layer, seed)
               if bst.entry_count(layer, entry) <= reference.EXACT_MAX_COUNT
               and math.prod(_layout(layer, *entry).statistics_shape) <= reference.EXACT_MAX_GROUPS}
    assert len(entries) >= 2, entries
    for entry in sorted(entries):
        example = bst.make_layer_example(layer, *entry, "well-conditioned", 1e-3, 4)
        exact = reference.exact(example)
        ref = reference.forward(example)
        for name, e, r in zip(("y", "dx", "dgamma", "dbeta"), exact, (ref.y, *reference.backward(example))):
            scale = max(float(np.max(np.abs(r))), 1.0)
            assert np.max(np.abs(e - r)) <= 1e-12 * scale, (entry, name)


def test_the_exact_reference_refuses_large_groups():
    example = bst.make_layer_example("layer_norm", (2, 9), 1, "well-conditioned", 1e-3, 4)
    with pytest.raises(ValueError, match="M <= 4"):
        reference.exact(example)


def test_the_bounds_separate_two_pass_from_one_pass_variance():
    """At a large offset in float32, bnsym's two-pass layer norm uses a few percent of the bound derived from the
    closed form, and E[x^2] - E[x]^2 (Flax's default use_fast_variance) exceeds it many times over."""
    for seed in range(3):
        example = bst.make_layer_example("layer_norm", (4, 64), 1, "large offset", 1e-3, seed, "float32")
        ref = reference.forward(example)
        bound = reference.LayerBound(example, ref).forward()
        x = example.x
        y = bnsym.layer_norm.forward(x, example.gamma, example.beta, eps=example.eps)[0]
        assert np.max(np.abs(y - ref.y) / bound) < 0.2
        mean = x.mean(axis=-1, keepdims=True)
        var = np.maximum((x * x).mean(axis=-1, keepdims=True) - mean * mean, 0)
        one_pass = example.gamma * (x - mean) / np.sqrt(var + np.float32(example.eps)) + example.beta
        assert np.max(np.abs(one_pass - ref.y) / bound) > 10


def test_magnitude_bounds_reduce_over_the_given_axes():
    from bnsym.symbolic.layers import derivation

    d = derivation("layer_norm")
    expr = d.backward[1][d.backward[0].outputs[0]]  # dx, with sums over a group
    values = {"dy": np.ones((2, 3)), "gamma": np.full((1, 3), 2.0), "invstd": np.full((2, 1), 0.5),
              "x_hat": np.ones((2, 3))}
    magnitude = compiled(expr).magnitude(values, 3, 2, axes=(1,))
    # |dy gamma s| + |x_hat s| sum|dy x_hat gamma| / M + |s| sum|dy gamma| / M = 1 + 1 + 1
    assert np.allclose(magnitude, 3.0) and magnitude.shape == (2, 3)


def test_descriptions_put_their_counts_in_the_right_number():
    """'axis(es)' and 'group(s)' are gone: one group, one axis, one channel are singular, more are plural."""
    from bnsym.testing.strategies import make_layer_example

    one = make_layer_example("layer_norm", (1, 6), 1, "well-conditioned", 1e-5, 0).describe()
    assert "normalised over the last axis: M = 6 per group, 1 group)" in one, one
    two = make_layer_example("layer_norm", (3, 2, 4), 2, "well-conditioned", 1e-5, 0).describe()
    assert "normalised over the last 2 axes: M = 8 per group, 3 groups)" in two, two
    grouped = make_layer_example("group_norm", (2, 4, 3), 4, "well-conditioned", 1e-5, 0).describe()
    assert "4 groups of 1 channel: M = 3 per group, 8 groups)" in grouped, grouped
    for text in (one, two, grouped):
        assert "(s)" not in text and "(es)" not in text, text


def test_a_subclass_of_a_grouping_draws_its_parents_example_shapes():
    """A user's grouping that subclasses a built-in one (``class LastAxis(TrailingAxes)``) gets its pools and its
    protocol probes from the parent: nothing in the checker is looked up by a grouping's exact class."""

    @dataclass(frozen=True)
    class LastAxis(TrailingAxes):
        pass

    layer = register(LayerSpec("subclassed_grouping_norm", "Subclassed grouping norm", "subclassed grouping norm",
                               "centred", LastAxis(), eps=1e-5, regimes=CENTRED_REGIMES, group="a row",
                               statistics_over="the trailing axes", parameters_are="the normalised shape"))
    try:
        for seed in range(3):
            pool = bst.layer_shape_pool(layer.name, seed)
            assert len(pool) == 6 and {2, 3} <= {bst.entry_count(layer.name, entry) for entry in pool}, pool
        assert layer.grouping.probe_entries == TrailingAxes().probe_entries
    finally:
        unregister(layer.name)
