"""The inputs real kernels fail on are in every run: groups of several thousand values (lengths just above a
power of two, a block and a half, several blocks and a partial one) in the reference properties of every layer,
and eps down to 1e-12 on constant groups in every dtype. A kernel that drops the partial last block of a long row,
and a float16 layer norm that rounds eps = 1e-12 to zero, are caught at every seed from 0 to 9.

The runs are short on purpose (two examples per property): what must catch these bugs is the stratification, not
the luck of 50 draws."""

import numpy as np
import pytest

from bnsym.spec.layout import GroupLayout
from bnsym.testing import CheckFailed, check_normalization, properties_of, registry
from bnsym.testing import strategies as bst
from bnsym.testing.representable import dy_scale
from tests.testing import zoo, zoo_family

SEEDS = range(10)


@pytest.mark.parametrize("layer", bst.LAYERS)
def test_every_run_has_long_groups_of_each_kind(layer):
    for seed in SEEDS:
        pool = bst.layer_shape_pool(layer, seed)
        counts = sorted(bst.entry_count(layer, entry) for entry in bst.long_shapes(layer, pool, seed))
        assert len(counts) == 3, f"{layer} seed {seed}: long groups {counts}, expected one of each kind"
        for count, lengths in zip(counts, bst.LONG_GROUP_LENGTHS):
            # group norm's channels per group may round a length up by one or two values
            assert any(length <= count <= length + 2 for length in lengths), \
                f"{layer} seed {seed}: a group of {count} values is none of {lengths}"
            assert count % 1024, f"{layer} seed {seed}: {count} values is a whole number of blocks"
        assert counts[-1] > 3000, f"{layer} seed {seed}: no group of several thousand values ({counts})"


@pytest.mark.parametrize("layer", bst.LAYERS)
def test_the_reference_properties_of_every_layer_take_long_groups(layer):
    for name in ("forward_reference", "backward_reference"):
        assert registry(layer)[name].long_groups, f"{layer}'s {name} does not run on long groups"
    assert set(properties_of(layer)) >= {"forward_reference", "backward_reference"}


@pytest.mark.parametrize("bug, layer", [(zoo.DropsPartialBlock, "batch_norm"),
                                        (zoo_family.LayerNormDropsPartialBlock, "layer_norm")],
                         ids=["batch_norm", "layer_norm"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_kernel_that_drops_the_partial_block_of_long_rows_is_caught_at_every_seed(bug, layer, seed):
    with pytest.raises(CheckFailed) as info:
        check_normalization(bug(), layer=layer, dtype="float32", seed=seed, max_examples=2,
                            properties=["forward_reference"])
    report = info.value.report
    assert report.failed == ["forward_reference"], str(report)
    example = report.results[0].counterexample.example
    assert example.count > 1024, f"caught on a group of {example.count} values, yet the bug needs > 1024:\n{report}"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_float16_layer_norm_that_rounds_eps_to_zero_is_caught_at_every_seed(seed):
    with pytest.raises(CheckFailed) as info:
        check_normalization(zoo_family.LayerNormEpsInFloat16(), layer="layer_norm", dtype="float16", seed=seed,
                            max_examples=2, properties=["finite_outputs"])
    report = info.value.report
    assert report.failed == ["finite_outputs"], str(report)
    example = report.results[0].counterexample.example
    assert example.eps < float(np.finfo(np.float16).smallest_subnormal) / 2, \
        f"caught at eps = {example.eps}, which float16 can hold: not the bug planted\n{report}"


def test_eps_is_drawn_down_to_1e_12_and_shrinks_to_pytorchs_default():
    from hypothesis import find, settings

    quick = settings(database=None, max_examples=200)
    assert find(bst.epsilons(), lambda eps: eps <= 1e-12, settings=quick) == 1e-12, "eps never reaches 1e-12"
    assert find(bst.epsilons(), lambda eps: True, settings=quick) == 1e-5, "eps no longer shrinks to 1e-5"
    assert find(bst.epsilons(), lambda eps: eps < 1e-11, settings=quick) == 1e-12


def test_dy_is_scaled_only_where_the_exact_gradient_would_overflow_the_dtype():
    layout = GroupLayout.of((4, 8), reduced=(1,), features=(1,), where="x has shape (4, 8)",
                            parameter_meaning="the last axis", statistics_meaning="one per row")
    constant = np.full((4, 8), 3.0)
    gamma, dy = np.full(8, 2.0), np.linspace(-5, 5, 32).reshape(4, 8)
    # float16, eps = 1e-12, a constant row: dx = gamma dy / sqrt(1e-12), far past 65504
    scale = dy_scale(layout, constant, gamma, dy, 1e-12, np.float16)
    assert scale < 2.0**-10 and np.log2(scale) == int(np.log2(scale)), scale
    bound = 2.0 * 1e6 * (5 + 2.5 + 5) * scale  # |gamma| s (max|dy| + mean|dy| + ...) at the scale chosen
    assert bound <= np.finfo(np.float16).max, f"scaled dy still overflows: {bound}"
    assert dy_scale(layout, constant, gamma, dy, 1e-12, np.float32) == 1.0, "float32 holds 1e7: no scaling"
    assert dy_scale(layout, np.random.default_rng(0).normal(size=(4, 8)), gamma, dy, 1e-5, np.float16) == 1.0


@pytest.mark.parametrize("layer", bst.LAYERS)
def test_float16_examples_keep_their_exact_gradients_in_range(layer):
    """Every float16 example of the constant regime at eps = 1e-12: the float64 reference's dx is finite in
    float16."""
    from bnsym.testing import reference

    pool = bst.layer_shape_pool(layer, 0)
    constant = next(r for r in bst.layer_regimes(layer) if r in bst.CONSTANT_REGIMES)
    for seed, entry in enumerate(pool[2:]):
        example = bst.make_layer_example(layer, *entry, constant, 1e-12, seed, "float16")
        dx = reference.backward(example)[0]
        assert np.all(np.abs(dx) < np.finfo(np.float16).max), \
            f"{layer} {entry}: the exact dx reaches {np.max(np.abs(dx)):.3g}, beyond float16"
