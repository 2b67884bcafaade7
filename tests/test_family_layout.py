"""The generic layout: each layer's groups, parameter axes, statistics shapes and M, from its declaration alone."""

import numpy as np
import pytest

from bnsym.spec.layout import GroupLayout, channel_layout, group_layout, instance_layout, normalised_axes_layout

# (id, layout, grouped shape, reduced axes, parameter-gradient axes, parameter shape, statistics shape, M)
CASES = [
    ("layer-norm-last-axis", normalised_axes_layout((4, 3, 5), -1), (4, 3, 5), (2,), (0, 1), (5,), (4, 3), 5),
    ("layer-norm-two-axes", normalised_axes_layout((4, 3, 5), (-2, -1)), (4, 3, 5), (1, 2), (0,), (3, 5), (4,), 15),
    ("layer-norm-positive-axes", normalised_axes_layout((4, 3, 5), (2, 1)), (4, 3, 5), (1, 2), (0,), (3, 5), (4,),
     15),
    ("layer-norm-1d", normalised_axes_layout((7,), 0), (7,), (0,), (), (7,), (), 7),
    ("layer-norm-all-axes", normalised_axes_layout((2, 3), (0, 1)), (2, 3), (0, 1), (), (2, 3), (), 6),
    ("group-norm-nchw", group_layout((2, 6, 3, 4), 1, 3), (2, 3, 2, 3, 4), (2, 3, 4), (0, 3, 4), (6,), (2, 3),
     24),
    ("group-norm-nhwc", group_layout((2, 3, 4, 6), -1, 2), (2, 3, 4, 2, 3), (1, 2, 4), (0, 1, 2), (6,), (2, 2),
     36),
    ("group-norm-2d", group_layout((5, 6), 1, 2), (5, 2, 3), (2,), (0,), (6,), (5, 2), 3),
    ("group-norm-one-group", group_layout((2, 6, 3), 1, 1), (2, 1, 6, 3), (2, 3), (0, 3), (6,), (2, 1), 18),
    ("group-norm-a-group-per-channel", group_layout((2, 6, 3), 1, 6), (2, 6, 1, 3), (2, 3), (0, 3), (6,),
     (2, 6), 3),
    ("instance-norm-ncl", instance_layout((2, 3, 5), 1), (2, 3, 5), (2,), (0, 2), (3,), (2, 3), 5),
    ("instance-norm-ndhwc", instance_layout((2, 2, 3, 4, 5), -1), (2, 2, 3, 4, 5), (1, 2, 3), (0, 1, 2, 3), (5,),
     (2, 5), 24),
]


@pytest.mark.parametrize("layout, grouped, axes, parameter_axes, parameter_shape, statistics_shape, count",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layout_of_each_layer(layout, grouped, axes, parameter_axes, parameter_shape, statistics_shape, count):
    assert layout.grouped == grouped, f"the kernels see x as {layout.grouped}, expected {grouped}"
    assert layout.axes == axes, f"statistics over axes {layout.axes}, expected {axes}"
    assert layout.parameter_axes == parameter_axes, (
        f"parameter gradients sum over axes {layout.parameter_axes}, expected {parameter_axes}")
    assert layout.parameter_shape == parameter_shape
    assert layout.statistics_shape == statistics_shape
    assert layout.count == count
    # The broadcast shapes agree with the axes: a statistic is 1 exactly on the reduced axes, a parameter exactly
    # on the parameter-gradient axes, and M is the product of the reduced sizes.
    assert layout.statistics_broadcast == tuple(1 if i in axes else n for i, n in enumerate(grouped))
    assert layout.parameter_broadcast == tuple(1 if i in parameter_axes else n for i, n in enumerate(grouped))
    assert np.prod(layout.statistics_broadcast) == np.prod(statistics_shape)
    assert np.prod(layout.parameter_broadcast) == np.prod(parameter_shape)


@pytest.mark.parametrize("shape, axis", [((2, 6, 3, 4), 1), ((2, 3, 4, 6), -1), ((2, 3, 6, 4), 2)])
def test_group_norm_groups_are_contiguous_channels_and_never_copy_x(shape, axis):
    """Channels 0 .. C/G - 1 form group 0 (PyTorch's and Flax's grouping, not a stride), and the grouped view of x
    is a reshape of x itself, also for channel-last input."""
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    layout = group_layout(shape, axis, 3)
    grouped = layout.field(x, np.float64)
    assert np.shares_memory(grouped, x), "the grouped view of x is a copy"
    channel = axis % len(shape)
    group_axis = channel  # the split axis becomes (G, C/G) in place
    for group in range(3):
        members = np.take(grouped, group, axis=group_axis)
        expected = np.take(x, range(2 * group, 2 * group + 2), axis=channel)
        np.testing.assert_array_equal(np.sort(members, axis=None), np.sort(expected, axis=None),
                                      err_msg=f"group {group} does not hold channels {2 * group} and {2 * group + 1}")


@pytest.mark.parametrize("shape, axis", [((4, 3), 1), ((4, 3, 5), 1), ((4, 5, 6, 3), -1), ((2, 3, 2, 2, 2), 1)])
def test_batch_norms_layout_is_one_group_per_channel(shape, axis):
    """Batch norm's layout: every axis but the channel axis reduced, parameters and statistics of shape (C,) on the
    channel axis, M = x.size / C, and no axis split."""
    channel = axis % len(shape)
    layout = channel_layout(shape, axis)
    others = tuple(a for a in range(len(shape)) if a != channel)
    broadcast = tuple(n if a == channel else 1 for a, n in enumerate(shape))
    assert layout.grouped == shape, "batch norm's kernels see x as it is"
    assert layout.axes == others
    assert layout.parameter_axes == others, "batch norm's parameters live on its statistics' axis"
    assert layout.parameter_broadcast == layout.statistics_broadcast == broadcast
    assert layout.count == int(np.prod(shape)) // shape[channel]
    assert layout.statistics_shape == layout.parameter_shape == (shape[channel],)
    assert layout == GroupLayout.of(shape, reduced=others, features=(channel,), where=layout.where,
                                    parameter_meaning=layout.parameter_meaning,
                                    statistics_meaning=layout.statistics_meaning)
