"""Example input shapes of each kind of grouping, drawn from a NumPy generator: what the checker's shape pools
(:func:`bnsym.testing.strategies.layer_shape_pool`) are made of, and the two shapes a target's protocol is first
tried on.

An *entry* is a pair ``(shape, size)``: x's shape (channel-first) and the grouping's size for it
(:meth:`bnsym.spec.groupings.Grouping.example_options`: the number of normalised trailing axes, or the number of
groups, or 0 for a grouping that takes no size). Each function draws one entry of ``ndim`` dimensions whose groups
hold about ``count`` values, with ``rows`` rows or ``samples`` samples; the groupings
(:mod:`bnsym.spec.groupings`) say which function draws their entries.

Plain integer arithmetic on a ``numpy.random.Generator``: the draws of a given generator never change, so a
checker's run replays.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["channel_groups_entry", "normalised_entry", "sample_channels_entry", "sample_rows_entry", "split"]


def split(rng: np.random.Generator, count: int, parts: int) -> list[int]:
    """``count`` as a product of ``parts`` sizes, each a divisor drawn at random (the last takes the rest)."""
    sizes, rest = [], count
    for _ in range(parts - 1):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        sizes.append(int(rng.choice(divisors)))
        rest //= sizes[-1]
    return [*sizes, rest]


def normalised_entry(rng: np.random.Generator, ndim: int, count: int, rows: int) -> tuple[tuple[int, ...], int]:
    """Rows normalised over their trailing axes: ``rows`` rows over the leading axes, about ``count`` values per
    row over one or two trailing axes."""
    # Four dimensions normalise two axes, both longer than 1 (normalising the last one only must differ).
    k = 2 if ndim == 4 else int(rng.integers(1, min(2, ndim - 1) + 1)) if ndim > 4 else 1
    if k == 1:
        return (*split(rng, rows, ndim - 1), count), 1
    last = int(rng.integers(2, max(3, math.isqrt(count)) + 1))
    return (*split(rng, rows, ndim - 2), max(count // last, 2), last), 2


def sample_rows_entry(rng: np.random.Generator, ndim: int, count: int, samples: int) -> tuple[tuple[int, ...], int]:
    """Rows normalised over their trailing axes, with parameters of one row per sample: ``samples`` samples on axis
    0, each of two to four rows (tokens) over the middle axes when there are any (so that a parameter's gradient sums
    over a sample's rows), about ``count`` values per row over one or two trailing axes."""
    if ndim == 2:
        return (samples, count), 1
    k = 2 if ndim == 4 else int(rng.integers(1, 3)) if ndim > 4 else 1
    tokens = split(rng, int(rng.integers(2, 5)), ndim - 1 - k)
    if k == 1:
        return (samples, *tokens, count), 1
    last = int(rng.integers(2, max(3, math.isqrt(count)) + 1))
    return (samples, *tokens, max(count // last, 2), last), 2


def channel_groups_entry(rng: np.random.Generator, ndim: int, count: int,
                         samples: int) -> tuple[tuple[int, ...], int]:
    """One sample's channels in groups: two to four groups of two or three channels, the spatial axes holding
    about ``count`` values per group between them."""
    # Two or three channels per group: with one, grouping contiguously or with a stride would be the same.
    groups, per_group = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    spatial = split(rng, max(count // per_group, 1), ndim - 2) if ndim > 2 else []
    return (samples, groups * per_group, *spatial), groups


def sample_channels_entry(rng: np.random.Generator, ndim: int, count: int,
                          samples: int) -> tuple[tuple[int, ...], int]:
    """One sample's channel over the spatial axes: two to four channels, about ``count`` spatial positions."""
    return (samples, int(rng.integers(2, 5)), *split(rng, max(count, 2), ndim - 2)), 0
