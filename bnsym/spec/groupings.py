"""Groupings: which values of x form one group, and where a layer's parameters live, as a function of x's shape and
the layer's options.

A *group* is the set of M values that share one set of statistics. Every layer of the family is one of four
groupings (Flax's split of a layer's axes into reduction axes and feature axes):

* :class:`TrailingAxes`: each row (the leading axes) over its trailing ``axis`` axes; the parameters have the
  normalised shape, one value per position of a group (layer norm, RMS norm).
* :class:`Channels`: one channel (the axis ``axis``) over every other axis, the batch included; one parameter value
  per group (batch norm).
* :class:`ChannelGroups`: one sample's ``num_groups`` contiguous blocks of channels with every spatial position; one
  parameter value per channel, so several per group (group norm).
* :class:`SampleChannels`: one sample's channel over the spatial positions; one parameter value per channel, shared
  by the samples (instance norm).

and a fifth for adaptive norms, whose parameters come per sample from a conditioning vector:

* :class:`SampleTrailingAxes`: as :class:`TrailingAxes`, but the parameters hold one row per sample, (N,
  *normalised), shared by the rows of that sample only (DiT's adaLN); their gradients are per sample.

Where the parameters live is the grouping's unless the declaration says otherwise: ``scalar_parameters=True`` (for
instance ``TrailingAxes(scalar_parameters=True)``, ScaleNorm's one learned g) makes each parameter one value of
shape (), the same for every value of every group, whatever x's shape; its gradient sums over all of x.

A grouping states its options (:class:`Option`: ``axis``, ``num_groups``) with their defaults, computes the
:class:`~bnsym.spec.layout.GroupLayout` of one call, and states the facts the rest of the product needs about its
groups: whether each group lies within one sample (so that compiled loops can finish a group while it is in cache,
and a batch can be sharded without changing the statistics), whether the layer takes a channel axis, whether one
parameter value serves several groups (its gradient is then a sum over them), and how an example input of a given
shape is written for it (:meth:`Grouping.example_options`: the checker draws shapes and asks the grouping for the
options that go with them), and which example shapes it draws (:meth:`Grouping.example_entry`,
:meth:`Grouping.tiny_example_entries`, ``example_ndims``, ``probe_entries``; :mod:`bnsym.spec.example_shapes`). A
subclass of a grouping inherits all of these, so a user's ``class LastAxis(TrailingAxes)`` is checked as layer norm
is.

This module is plain shape arithmetic (NumPy only): the runtime, the checker and the derivation all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnsym.spec import example_shapes as _shapes
from bnsym.spec import layout as _layout
from bnsym.spec.layout import GroupLayout

__all__ = ["REQUIRED", "ChannelGroups", "Channels", "Grouping", "Option", "SampleChannels", "SampleTrailingAxes",
           "TrailingAxes"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of an option that every call must give (group norm's ``num_groups``).
REQUIRED = _Required()


@dataclass(frozen=True)
class Option:
    """One option of a layer: its keyword ``name``, its ``default`` (:data:`REQUIRED` when there is none) and what
    it means, for documents and messages."""

    name: str
    default: object
    meaning: str


_CHANNEL_AXIS = Option("axis", 1, "the channel axis of x (1 for channel-first input, -1 for channel-last)")


@dataclass(frozen=True)
class Grouping:
    """What a group is (module docstring). Subclasses define :meth:`layout` and :meth:`example_options`.

    * ``options``: the layer's options, in the order its public functions take them.
    * ``min_ndim``: the fewest dimensions x may have.
    * ``per_sample``: every group lies within one sample (axis 0), so the batch can be split between workers and
      each sample normalised alone.
    * ``channel_axis``: the layer takes a channel axis, which may be the last one.
    * ``per_element_parameters``: a parameter varies within a group (it is a field of the derivation, not a scalar
      per group).
    * ``shared_parameters``: one parameter value serves several groups, so its gradient sums over them.
    * ``parameter_per_value``: a parameter holds one value for every value of a group (the normalised shape).
    * ``group_noun``: what one group is called in reports and regime names ("channel", "group").
    * ``sample_parameters``: the parameters also vary along the batch axis 0, one row per sample (adaptive norms):
      a parameter's leading axis is x's batch axis, and its gradient is never summed over the batch.
    * ``scalar_parameters``: declared, not a fact of the grouping: each parameter is one value of shape (), shared
      by every value of every group (ScaleNorm's g). It overrides the placement the grouping would give (the
      three facts above become False, True, False: a scalar of the derivation whose gradient sums over the
      groups), and :meth:`place` gives the layout's parameters shape ().

    Example shapes (the checker's pools; entries are ``(shape, size)`` pairs, :mod:`bnsym.spec.example_shapes`):

    * ``example_ndims``: the numbers of dimensions a pool covers first, in order; ``example_min_ndim``: the fewest
      dimensions of the pool's further entries (drawn up to 4).
    * ``probe_entries``: a small entry and a larger one, on which a target's protocol is tried before a run.
    """

    options: tuple[Option, ...]
    min_ndim: int
    per_sample: bool
    channel_axis: bool
    per_element_parameters: bool
    shared_parameters: bool
    parameter_per_value: bool
    group_noun: str
    sample_parameters: bool = False
    example_ndims: tuple[int, ...] = ()
    example_min_ndim: int = 2
    probe_entries: tuple[tuple[tuple[int, ...], int], ...] = ()
    scalar_parameters: bool = False

    def __post_init__(self):
        if not isinstance(self.scalar_parameters, bool):
            raise TypeError(f"{type(self).__name__}: scalar_parameters must be True or False, got "
                            f"{self.scalar_parameters!r}")
        if self.scalar_parameters:
            if self.sample_parameters:
                raise ValueError(f"{type(self).__name__}: scalar_parameters=True declares one value per parameter "
                                 "for all of x, which contradicts its parameters of one row per sample")
            # One value for every group: a scalar of the derivation (not a field), whose gradient sums over the
            # groups, and that has no value per value of a group.
            for name, value in (("per_element_parameters", False), ("shared_parameters", True),
                                ("parameter_per_value", False)):
                object.__setattr__(self, name, value)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(option.name for option in self.options)

    def defaults(self) -> dict[str, object]:
        """The options that have defaults, with them."""
        return {o.name: o.default for o in self.options if o.default is not REQUIRED}

    def layout(self, shape: tuple[int, ...], **options) -> GroupLayout:
        """The layout of x of ``shape`` under ``options`` (validated: ValueError naming the option and x's shape).
        Each grouping computes its own and returns it through :meth:`place`."""
        raise NotImplementedError

    def place(self, layout: GroupLayout) -> GroupLayout:
        """``layout`` with the parameters where the declaration puts them: as computed, or of shape () for
        ``scalar_parameters``."""
        return layout.with_scalar_parameters() if self.scalar_parameters else layout

    def example_options(self, shape: tuple[int, ...], size: int) -> dict[str, object]:
        """The options of an example input of ``shape`` drawn with the grouping's ``size`` (the number of trailing
        normalised axes, or the number of groups; ignored by the groupings that have no such choice), channel-first.
        """
        raise NotImplementedError

    def example_sizes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The sizes :meth:`example_options` accepts for ``shape`` (the checker draws one of them)."""
        return (0,)

    def fit_entry(self, entry: tuple[tuple[int, ...], int]) -> tuple[tuple[int, ...], int]:
        """``entry`` (a ``(shape, size)`` pair drawn by :meth:`example_entry`) with its size one that
        :meth:`example_sizes` accepts for its shape: the largest accepted size not above it (else the least). A
        subclass that narrows :meth:`example_sizes` (a layer of the last axis only) so draws its parent's shapes."""
        shape, size = entry
        allowed = self.example_sizes(shape)
        if size in allowed:
            return entry
        below = [s for s in allowed if s <= size]
        return shape, max(below) if below else min(allowed)

    def protocol_options(self, shape: tuple[int, ...], parameter_shape: tuple[int, ...]) -> dict[str, object]:
        """The options that the checker's protocol leaves to the shapes (channel-first input; the normalised axes
        that gamma's shape names), for a call of bnsym's own functions on x of ``shape`` with parameters of
        ``parameter_shape``. Options without a default (``num_groups``) are the protocol's positional ones and are
        not here."""
        return {option.name: option.default for option in self.options if option.default is not REQUIRED}

    def example_entry(self, rng, ndim: int, count: int, samples: int) -> tuple[tuple[int, ...], int]:
        """One example entry ``(shape, size)`` of ``ndim`` dimensions whose groups hold about ``count`` values, with
        ``samples`` rows or samples, drawn from the NumPy generator ``rng``."""
        raise NotImplementedError(f"{type(self).__name__} draws no example shapes")

    def tiny_example_entries(self, rng) -> tuple[tuple[tuple[int, ...], int], ...]:
        """Example entries whose groups hold M = 2 and M = 3 values (the tiny regime), with two groups or more."""
        raise NotImplementedError(f"{type(self).__name__} draws no example shapes")


@dataclass(frozen=True)
class TrailingAxes(Grouping):
    """Each row normalised over its trailing ``axis`` axes; parameters of the normalised shape."""

    options: tuple[Option, ...] = (Option("axis", -1, "the normalised axes, the last ones of x (an integer or a "
                                                      "tuple of integers)"),)
    min_ndim: int = 1
    per_sample: bool = True
    channel_axis: bool = False
    per_element_parameters: bool = True
    shared_parameters: bool = True
    parameter_per_value: bool = True
    group_noun: str = "group"
    example_ndims: tuple[int, ...] = (2, 3, 4)
    example_min_ndim: int = 2
    probe_entries: tuple[tuple[tuple[int, ...], int], ...] = (((4, 3), 1), ((2, 3, 4), 2))

    def layout(self, shape, axis=-1) -> GroupLayout:
        return self.place(_layout.normalised_axes_layout(tuple(shape), axis))

    def example_options(self, shape, size):
        return {"axis": tuple(range(len(shape) - size, len(shape))) if size > 1 else -1}

    def example_sizes(self, shape):
        if self.scalar_parameters:  # a scalar gamma does not name the normalised axes: the protocol's is the last
            return (1,)
        return tuple(range(1, min(len(shape), 2) + 1))

    def protocol_options(self, shape, parameter_shape):
        normalised = 1 if self.scalar_parameters else len(parameter_shape) - int(self.sample_parameters)
        return {"axis": tuple(range(len(shape) - normalised, len(shape))) if normalised != 1 else -1}

    def example_entry(self, rng, ndim, count, samples):
        return _shapes.normalised_entry(rng, ndim, count, samples)

    def tiny_example_entries(self, rng):
        return (((int(rng.integers(2, 5)), 2), 1), ((int(rng.integers(2, 4)), 1, 3), 2))


@dataclass(frozen=True)
class Channels(Grouping):
    """One group per channel, over every other axis (the batch too); one parameter value per group."""

    options: tuple[Option, ...] = (_CHANNEL_AXIS,)
    min_ndim: int = 2
    per_sample: bool = False
    channel_axis: bool = True
    per_element_parameters: bool = False
    shared_parameters: bool = False
    parameter_per_value: bool = False
    group_noun: str = "channel"
    probe_entries: tuple[tuple[tuple[int, ...], int], ...] = (((4, 3), 0), ((2, 3, 4, 5), 0))

    def layout(self, shape, axis=1) -> GroupLayout:
        return self.place(_layout.channel_layout(tuple(shape), axis))

    def example_options(self, shape, size):
        return {"axis": 1}


@dataclass(frozen=True)
class ChannelGroups(Grouping):
    """Each sample's channels in ``num_groups`` contiguous groups, each with every spatial position."""

    options: tuple[Option, ...] = (Option("num_groups", REQUIRED, "the number of groups G the channels are split "
                                                                  "into (it divides C)"), _CHANNEL_AXIS)
    min_ndim: int = 2
    per_sample: bool = True
    channel_axis: bool = True
    per_element_parameters: bool = True
    shared_parameters: bool = True
    parameter_per_value: bool = False
    group_noun: str = "group"
    example_ndims: tuple[int, ...] = (3, 4, 5)
    example_min_ndim: int = 2
    probe_entries: tuple[tuple[tuple[int, ...], int], ...] = (((2, 6, 3), 2), ((2, 6, 4, 5), 3))

    def layout(self, shape, num_groups=None, axis=1) -> GroupLayout:
        return self.place(_layout.group_layout(tuple(shape), axis, num_groups))

    def example_options(self, shape, size):
        return {"num_groups": size, "axis": 1}

    def example_sizes(self, shape):
        channels = shape[1]
        return tuple(g for g in range(1, channels + 1) if channels % g == 0)

    def example_entry(self, rng, ndim, count, samples):
        return _shapes.channel_groups_entry(rng, ndim, count, samples)

    def tiny_example_entries(self, rng):
        return (((int(rng.integers(2, 4)), 4), 2), ((2, 6, 1), 2))  # M = 2 (2 channels), M = 3 (3 channels)


@dataclass(frozen=True)
class SampleChannels(Grouping):
    """Each sample's channel over the spatial positions; one parameter value per channel, shared by the samples."""

    options: tuple[Option, ...] = (_CHANNEL_AXIS,)
    min_ndim: int = 2
    per_sample: bool = True
    channel_axis: bool = True
    per_element_parameters: bool = False
    shared_parameters: bool = True
    parameter_per_value: bool = False
    group_noun: str = "group"
    example_ndims: tuple[int, ...] = (3, 4, 5)
    example_min_ndim: int = 3  # a spatial axis at least: PyTorch refuses one value per sample and channel
    probe_entries: tuple[tuple[tuple[int, ...], int], ...] = (((2, 3, 4), 0), ((2, 3, 4, 5), 0))

    def layout(self, shape, axis=1) -> GroupLayout:
        return self.place(_layout.instance_layout(tuple(shape), axis))

    def example_options(self, shape, size):
        return {"axis": 1}

    def example_entry(self, rng, ndim, count, samples):
        return _shapes.sample_channels_entry(rng, ndim, count, samples)

    def tiny_example_entries(self, rng):
        return (((int(rng.integers(2, 4)), int(rng.integers(1, 4)), 2), 0),
                ((2, int(rng.integers(1, 4)), 3, 1), 0))


@dataclass(frozen=True)
class SampleTrailingAxes(TrailingAxes):
    """Each row normalised over its trailing ``axis`` axes, as :class:`TrailingAxes`; the parameters hold one row
    per sample, shape (N, *normalised): shared by the rows of one sample (the middle axes of (N, ..., D)), never
    by two samples."""

    options: tuple[Option, ...] = (Option("axis", -1, "the normalised axes, the last ones of x but never its batch "
                                                      "axis 0 (an integer or a tuple of integers)"),)
    min_ndim: int = 2
    sample_parameters: bool = True

    def layout(self, shape, axis=-1) -> GroupLayout:
        return self.place(_layout.sample_normalised_axes_layout(tuple(shape), axis))

    def example_sizes(self, shape):
        return tuple(range(1, min(len(shape) - 1, 2) + 1))

    def example_entry(self, rng, ndim, count, samples):
        return _shapes.sample_rows_entry(rng, ndim, count, samples)
