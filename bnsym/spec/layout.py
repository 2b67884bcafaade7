"""How a normalisation layer sees its input: which values form a group, where the parameters live, and M.

Notation. x is the layer input as the caller gives it. A layer normalises *groups* of M values, each with its own
statistics. A layer's layout is computed from three things only (Flax's split into reduction and feature axes):

* ``reduced``: the axes of x that a group spans whole (layer norm: the trailing normalised axes; instance norm: the
  spatial axes; batch norm: every axis but the channel axis);
* ``features``: the axes of x that the parameters gamma and beta live on (layer norm: the normalised axes; group,
  instance and batch norm: the channel axis);
* ``split``: for group norm, the channel axis (size C) seen as two axes (G, C/G): the G groups are kept apart and
  the C/G channels of one group are reduced together. Splitting one axis in two is a reshape that never copies.

From these, :meth:`GroupLayout.of` computes the shape the generated kernels see (``grouped``: x with the split
axis in two), the reduced axes there, the broadcast shapes of the parameters and of the statistics ("group-shaped":
length 1 on the reduced axes), the public shapes of the statistics (the kept axes: (N, G) for group norm, the row
shape for layer norm) and of the parameters, M, and the axes on which a parameter has length 1. A parameter's
gradient is summed over those axes by the kernels (``Reducer.parameter_sums``), which is how LayerNorm's dgamma sums
over the batch and GroupNorm's over the samples and the spatial positions, with no code in any one layer.

This module knows shapes only; the generated kernels do all the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from bnsym.spec import validation as v

__all__ = ["GroupLayout", "channel_layout", "group_layout", "instance_layout", "normalised_axes_layout",
           "sample_normalised_axes_layout"]


@dataclass(frozen=True)
class GroupLayout:
    """The layout of one call: shapes as the caller sees them and as the kernels see them.

    ``where`` describes x and the layer's options for error messages ("x has shape (2, 6, 3), channel axis 1, 3
    groups"); ``parameter_meaning`` and ``statistics_meaning`` say what the parameter and statistics shapes are.
    """

    shape: tuple[int, ...]
    grouped: tuple[int, ...]
    axes: tuple[int, ...]
    parameter_axes: tuple[int, ...]
    parameter_shape: tuple[int, ...]
    parameter_broadcast: tuple[int, ...]
    statistics_shape: tuple[int, ...]
    statistics_broadcast: tuple[int, ...]
    count: int
    where: str
    parameter_meaning: str
    statistics_meaning: str

    @classmethod
    def of(cls, shape: tuple[int, ...], *, reduced: tuple[int, ...], features: tuple[int, ...],
           split: tuple[int, int] | None = None, where: str, parameter_meaning: str,
           statistics_meaning: str) -> GroupLayout:
        """The layout of x of ``shape`` for a layer that reduces the axes ``reduced`` and has parameters on the axes
        ``features`` (non-negative axes of x). ``split = (axis, groups)`` views the feature axis ``axis`` as
        (groups, size // groups), the second part reduced; ``groups`` must divide its size (validated before)."""
        grouped: list[int] = []
        kernel_axes: list[tuple[int, ...]] = []  # the axes of `grouped` that each axis of x became
        within: tuple[int, ...] = ()  # the reduced half of the split axis
        for axis, size in enumerate(shape):
            if split is not None and axis == split[0]:
                groups = split[1]
                kernel_axes.append((len(grouped), len(grouped) + 1))
                within = (len(grouped) + 1,)
                grouped += [groups, size // groups]
            else:
                kernel_axes.append((len(grouped),))
                grouped.append(size)
        axes = tuple(sorted(sum((kernel_axes[a] for a in reduced), ()) + within))
        on_parameter = set(sum((kernel_axes[a] for a in features), ()))
        parameter_broadcast = tuple(n if i in on_parameter else 1 for i, n in enumerate(grouped))
        return cls(
            shape=tuple(shape),
            grouped=tuple(grouped),
            axes=axes,
            parameter_axes=tuple(i for i in range(len(grouped)) if i not in on_parameter),
            parameter_shape=tuple(shape[a] for a in features),
            parameter_broadcast=parameter_broadcast,
            statistics_shape=tuple(n for i, n in enumerate(grouped) if i not in axes),
            statistics_broadcast=tuple(1 if i in axes else n for i, n in enumerate(grouped)),
            count=math.prod(grouped[i] for i in axes),
            where=where,
            parameter_meaning=parameter_meaning,
            statistics_meaning=statistics_meaning,
        )

    def with_scalar_parameters(self) -> GroupLayout:
        """This layout with parameters of shape (): one value for every value of x, so a parameter's gradient
        sums over every axis (a grouping declared with ``scalar_parameters``)."""
        return replace(self, parameter_axes=tuple(range(len(self.grouped))), parameter_shape=(),
                       parameter_broadcast=(1,) * len(self.grouped),
                       parameter_meaning="a scalar, one value for all of x")

    # Arguments, validated and arranged for the kernels.

    def field(self, array: np.ndarray, dtype) -> np.ndarray:
        """An array shaped like x (already validated), as the kernels see it, in ``dtype``."""
        return array.astype(dtype, copy=False).reshape(self.grouped)

    def parameter(self, value, name: str, dtype) -> np.ndarray:
        """gamma, beta or a (co)tangent of them: validated to the parameter shape, then broadcast-shaped."""
        array = v.check_shaped(value, name, self.parameter_shape, f"{self.parameter_meaning} ({self.where})")
        return array.astype(dtype, copy=False).reshape(self.parameter_broadcast)

    def statistic(self, value, name: str, dtype) -> np.ndarray:
        """A statistic, saved by the forward pass (mean, invstd, invrms) or running (running_mean, running_var):
        validated to the statistics shape, then group-shaped."""
        array = v.check_shaped(value, name, self.statistics_shape, f"{self.statistics_meaning} ({self.where})")
        return array.astype(dtype, copy=False).reshape(self.statistics_broadcast)


def normalised_axes_layout(shape: tuple[int, ...], axis) -> GroupLayout:
    """Layer norm and RMS norm: each row (the leading axes) normalised over the trailing axes named by ``axis`` (an
    integer or a tuple of them); the parameters have the normalised shape, the statistics the row shape."""
    axes = v.normalise_axes(axis, len(shape), shape)
    trailing = tuple(range(len(shape) - len(axes), len(shape)))
    if axes != trailing:
        many = "axis" if len(axes) == 1 else "axes"
        raise ValueError(f"axis {axis!r} must name trailing axes of x (shape {shape}): the normalised axes are the "
                         f"last ones, such as {trailing} for {len(axes)} {many}, got axes {axes}")
    return GroupLayout.of(shape, reduced=axes, features=axes, where=f"x has shape {shape}, normalised axes {axes}",
                          parameter_meaning="the normalised shape of x",
                          statistics_meaning="one value per row of x, the shape of its unnormalised leading axes")


def sample_normalised_axes_layout(shape: tuple[int, ...], axis) -> GroupLayout:
    """Adaptive norms (DiT's adaLN): x is (N, ..., *normalised); each row normalised over the trailing axes named by
    ``axis``, as layer norm, but the parameters hold one row per sample: shape (N, *normalised), the same for every
    row of a sample. The batch axis 0 cannot be normalised."""
    axes = normalised_axes_layout(shape, axis).axes
    if 0 in axes:
        raise ValueError(f"axis {axis!r} normalises the batch axis 0 of x (shape {shape}); the parameters of this "
                         "layer hold one row per sample, so x needs a batch axis before its normalised axes")
    normalised = tuple(shape[a] for a in axes)
    return GroupLayout.of(shape, reduced=axes, features=(0,) + axes,
                          where=f"x has shape {shape}, normalised axes {axes}",
                          parameter_meaning=f"one row per sample of x of the normalised shape, (N, *{normalised})",
                          statistics_meaning="one value per row of x, the shape of its unnormalised leading axes")


def channel_layout(shape: tuple[int, ...], axis) -> GroupLayout:
    """Batch norm: each channel of x (the axis ``axis``: 1 for NCHW, -1 for NHWC) is one group, normalised over
    every other axis (the batch and the spatial positions); the parameters and the statistics have one value per
    channel, shape (C,)."""
    channel = v.normalise_axis(axis, len(shape), shape)
    return GroupLayout.of(shape, reduced=tuple(a for a in range(len(shape)) if a != channel), features=(channel,),
                          where=f"x has shape {shape}, channel axis {channel}",
                          parameter_meaning="one value per channel of x",
                          statistics_meaning="one value per channel of x")


def group_layout(shape: tuple[int, ...], axis, num_groups) -> GroupLayout:
    """Group norm: x is (N, C, *spatial) with the channel axis ``axis`` (any axis but 0, the batch axis); each
    sample's channels are split into ``num_groups`` = G contiguous groups of C/G channels, each group normalised with
    its spatial positions. The parameters have one value per channel, the statistics shape (N, G)."""
    channel, spatial = _sample_axes(shape, axis)
    groups = v.check_num_groups(num_groups, shape[channel], shape, channel)
    return GroupLayout.of(shape, reduced=spatial, features=(channel,), split=(channel, groups),
                          where=f"x has shape {shape}, channel axis {channel}, {groups} groups",
                          parameter_meaning="one value per channel of x",
                          statistics_meaning="one value per sample and group of x, (N, num_groups)")


def instance_layout(shape: tuple[int, ...], axis) -> GroupLayout:
    """Instance norm: x is (N, C, *spatial) with the channel axis ``axis`` (any axis but 0, the batch axis); each
    sample's channel is normalised over its spatial positions. The parameters have one value per channel, the
    statistics shape (N, C)."""
    channel, spatial = _sample_axes(shape, axis)
    return GroupLayout.of(shape, reduced=spatial, features=(channel,),
                          where=f"x has shape {shape}, channel axis {channel}",
                          parameter_meaning="one value per channel of x",
                          statistics_meaning="one value per sample and channel of x, (N, C)")


def _sample_axes(shape: tuple[int, ...], axis) -> tuple[int, tuple[int, ...]]:
    """The channel axis and the spatial axes (all but the batch axis 0 and the channel axis)."""
    channel = v.normalise_channel_axis(axis, len(shape), shape)
    return channel, tuple(a for a in range(1, len(shape)) if a != channel)
