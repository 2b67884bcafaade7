"""Hypothesis strategies for normalisation-layer inputs, in the value regimes where real implementations go wrong.

Notation: x has shape (N, C, *spatial) with the channel axis at 1 (the protocol of :mod:`bnsym.testing`); every
channel holds M = x.size / C values, over which its statistics are taken.

Each example is drawn as a shape, an eps, a regime and a seed; the values come from a NumPy generator seeded by
that seed. Hypothesis then shrinks the shape (smaller), the regime (towards "well-conditioned") and eps (towards
1e-5), which is what a minimal counterexample needs; drawing every float through Hypothesis would be slower and
would shrink towards values (all zeros, constant channels) that no longer describe the regime.

The regimes, named as they appear in reports:

- ``"well-conditioned"``: per channel N(mu, sigma^2), |mu| of order 1, sigma within a factor 3 of 1.
- ``"large offset"``: mu between 1e3 and 1e4 in magnitude, sigma of order 1. In float32, E[x^2] - E[x]^2 loses
  every digit of the variance here: (mu/sigma)^2 * 2^-24 is about 6.
- ``"variance near eps"``: var between eps/10 and 10 eps, where eps outside the sqrt, sqrt(max(var, eps)) and a
  missing eps differ most from 1/sqrt(var + eps).
- ``"constant channel"``: at least one channel is constant, at a magnitude up to 1e3 (var = 0 exactly, the
  cancelling variance goes slightly negative); the others are well-conditioned.
- ``"tiny batch"``: M = 2 or 3, where the unbiased variance differs from the biased one by a factor 2 or 1.5.
- ``"wide dynamic range"``: magnitudes spread log-uniformly over 1e-3 to 1e3 within each channel, random signs.

gamma is drawn per channel from N(0, 1.5^2) with some channels exactly 0 (never all ones: gamma = 1 hides a
gamma missing from dx); beta from N(0, 2^2); dy from N(b, s^2) per channel with random offset b and scale s, so
that it is never ones and never has zero sum.

The other layers of the family (layer, RMS, group and instance norm: :func:`layer_examples`) are drawn the same
way, with their own *groups* in place of channels (a row over the normalised axes, a sample's C/G channels, a
sample's channel) and gamma and beta of the layer's parameter shape, drawn per element. Their regimes
(:func:`layer_regimes`) are batch norm's, per group: "constant group" and "tiny group" (M = 2 or 3 values per
group) in place of "constant channel" and "tiny batch", and for RMS norm, which takes no mean, "mean square near
eps" in place of "variance near eps". Their shapes come from :func:`layer_shape_pool`: pairs ``(shape, size)``
where ``size`` is the number of normalised trailing axes (layer and RMS norm: gamma has shape ``shape[-size:]``),
the number of groups (group norm), or 0 (instance norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from bnsym.spec.layout import GroupLayout, group_layout, instance_layout, normalised_axes_layout
from bnsym.testing.representable import dy_scale

__all__ = ["CONSTANT_REGIMES", "DTYPES", "LAYERS", "LONG_GROUP_LENGTHS", "MIN_EPS", "REGIMES", "Example",
           "batch_norm_examples", "channel_shapes", "dtypes", "entry_count", "epsilons", "layer_examples",
           "layer_regimes", "layer_shape_pool", "long_shapes", "regimes", "shape_pool"]

REGIMES = ("well-conditioned", "large offset", "variance near eps", "constant channel", "tiny batch",
           "wide dynamic range")
DTYPES = ("float64", "float32", "float16")
#: The layers with strategies: batch norm (:func:`batch_norm_examples`) and the family (:func:`layer_examples`).
LAYERS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")
_FAMILY_REGIMES = ("well-conditioned", "large offset", "variance near eps", "constant group", "tiny group",
                   "wide dynamic range")
_RMS_REGIMES = ("well-conditioned", "large offset", "mean square near eps", "constant group", "tiny group",
                "wide dynamic range")


def example_layout(layer: str, shape: tuple[int, ...], gamma_shape: tuple[int, ...],
                   num_groups: int | None = None) -> GroupLayout:
    """Which values of x of ``shape`` form a group for ``layer`` (batch norm: channel axis 1; layer and RMS norm:
    the trailing axes gamma's shape covers; group and instance norm: channel axis 1)."""
    shape = tuple(shape)
    if layer == "batch_norm":
        reduced = (0,) + tuple(range(2, len(shape)))
        return GroupLayout.of(shape, reduced=reduced, features=(1,), where=f"x has shape {shape}, channel axis 1",
                              parameter_meaning="one value per channel", statistics_meaning="one value per channel")
    if layer in ("layer_norm", "rms_norm"):
        k = len(gamma_shape)
        return normalised_axes_layout(shape, tuple(range(len(shape) - k, len(shape))) if k else -1)
    if layer == "group_norm":
        return group_layout(shape, 1, num_groups)
    if layer == "instance_norm":
        return instance_layout(shape, 1)
    raise ValueError(f"unknown layer {layer!r}; known: {', '.join(LAYERS)}")


@dataclass(frozen=True, eq=False)
class Example:
    """One problem of a normalisation layer: inputs in ``dtype``, the regime that produced them, and a seed for the
    auxiliary randomness of a property (directions, shifts, permutations), so that a saved example replays exactly.

    ``layer`` (default "batch_norm") says which layer the inputs are for, and ``num_groups`` is group norm's number
    of groups (None for the others). RMS norm has no beta: its ``beta`` is zeros of gamma's shape, never passed on.
    """

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    dy: np.ndarray
    regime: str
    seed: int = 0
    layer: str = "batch_norm"
    num_groups: int | None = None

    def __repr__(self) -> str:
        # One line, not every array: Hypothesis shows the repr of a failing example (and warns when it is long).
        layer = "" if self.layer == "batch_norm" else f"{self.layer}, "
        return f"Example({layer}{self.describe()}, seed {self.seed})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's pretty printer would print every field
        printer.text(repr(self))

    @cached_property
    def layout(self) -> GroupLayout:
        """Which values form a group, where the parameters live, M (:mod:`bnsym.spec.layout`)."""
        return example_layout(self.layer, self.x.shape, self.gamma.shape, self.num_groups)

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def channels(self) -> int:
        return self.x.shape[1]

    @property
    def count(self) -> int:
        """M, the number of values per channel (per group for the other layers; also when there are no channels)."""
        if self.layer != "batch_norm":
            return self.layout.count
        return math.prod(size for axis, size in enumerate(self.x.shape) if axis != 1)

    def describe(self) -> str:
        """One line naming every input that matters: shape, dtype, M, the ranges of x, gamma and beta (with the
        number of zero gammas), eps and the regime."""
        if self.layer != "batch_norm":
            return self._describe_group()
        if self.x.ndim < 2 or self.x.shape[1] == 0:
            return (f"x of shape {self.x.shape} ({self.dtype.name}, no channels: C = 0), eps = {self.eps:.3g}, regime "
                    f"\"{self.regime}\"")
        zeros = int(np.sum(self.gamma == 0))
        gamma = _range(self.gamma) + (f" ({zeros} of {self.gamma.size} zero)" if zeros else "")
        return (f"x of shape {self.x.shape} ({self.dtype.name}, M = {self.count} per channel) in {_range(self.x)}, "
                f"gamma {gamma}, beta {_range(self.beta)}, eps = {self.eps:.3g}, regime \"{self.regime}\"")

    def _describe_group(self) -> str:
        layout = self.layout
        groups = math.prod(layout.statistics_shape)
        if self.layer in ("layer_norm", "rms_norm"):
            how = "normalised over the last axis" if self.gamma.ndim == 1 else \
                f"normalised over the last {self.gamma.ndim} axes"
        elif self.layer == "group_norm":
            how = f"{_count(self.num_groups, 'group')} of {_count(self.x.shape[1] // self.num_groups, 'channel')}"
        else:
            how = "per sample and channel"
        zeros = int(np.sum(self.gamma == 0))
        gamma = _range(self.gamma) + (f" ({zeros} of {self.gamma.size} zero)" if zeros else "")
        beta = "" if self.layer == "rms_norm" else f", beta {_range(self.beta)}"
        return (f"x of shape {self.x.shape} ({self.dtype.name}, {how}: M = {layout.count} per group, "
                f"{_count(groups, 'group')}) in {_range(self.x)}, gamma {gamma}{beta}, eps = {self.eps:.3g}, regime "
                f"\"{self.regime}\"")

    def rng(self, salt: int = 0) -> np.random.Generator:
        """A generator for a property's own random draws, fixed by the example."""
        return np.random.default_rng([self.seed, salt])

    def replace(self, **changes) -> Example:
        values = {name: getattr(self, name) for name in ("x", "gamma", "beta", "eps", "dy", "regime", "seed",
                                                         "layer", "num_groups")}
        values.update(changes)
        return Example(**values)


def _count(number: int, noun: str) -> str:
    """``1 group``, ``2 groups``: a count with its noun in the right number."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _range(values: np.ndarray) -> str:
    """[min, max] of an array, or its one value."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return "(empty)"
    low, high = float(values.min()), float(values.max())
    return f"= {low:.4g}" if low == high else f"[{low:.4g}, {high:.4g}]"


# ----- argument validation, as in hypothesis.extra.numpy: at once, one error type, the bad value repeated -----

def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}={value!r} must be an int")
    if value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be at least {minimum}")


def _check_pair(low_name: str, low, high_name: str, high, minimum: int) -> None:
    _check_int(low_name, low, minimum)
    _check_int(high_name, high, minimum)
    if low > high:
        raise InvalidArgument(f"{low_name}={low!r} must not exceed {high_name}={high!r}")


def _check_dtype(dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise InvalidArgument(f"dtype={dtype!r} is not a NumPy dtype; use one of {DTYPES}") from None
    if resolved.name not in DTYPES:
        raise InvalidArgument(f"dtype={dtype!r} is not supported; use one of {DTYPES}")
    return resolved


def _check_regimes(names, argument: str = "regimes") -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise InvalidArgument(f"{argument}=() must name at least one regime")
    unknown = [n for n in names if n not in REGIMES]
    if unknown:
        raise InvalidArgument(f"{argument}={names!r} contains unknown regime(s) {unknown!r}; known: {REGIMES}")
    return names


# ----- public strategies -----

def dtypes(*, include_float16: bool = False) -> st.SearchStrategy[np.dtype]:
    """Floating-point dtypes a batch norm is checked in, float64 first (it shrinks towards float64).

    - ``include_float16`` (default False): also draw float16.

    >>> dtypes().example() in (np.dtype("float64"), np.dtype("float32"))
    True
    """
    if not isinstance(include_float16, bool):
        raise InvalidArgument(f"include_float16={include_float16!r} must be a bool")
    return st.sampled_from([np.dtype(n) for n in DTYPES[: 3 if include_float16 else 2]])


def regimes(*, names=REGIMES) -> st.SearchStrategy[str]:
    """Names of value regimes (see the module docstring), shrinking towards the first.

    - ``names`` (default: all of :data:`REGIMES`): the regimes to draw from.

    >>> regimes(names=("tiny batch",)).example()
    'tiny batch'
    """
    return st.sampled_from(_check_regimes(names, "names"))


#: The smallest eps drawn by default: BERT's layer norm uses 1e-12, below float16's smallest subnormal (a float16
#: kernel that rounds eps to float16 divides by zero on a constant group).
MIN_EPS = 1e-12
#: The largest eps drawn by default.
MAX_EPS = 0.1
#: eps values real models use, drawn often; the first is where eps shrinks to (PyTorch's default).
COMMON_EPS = (1e-5, 1e-12, 1e-6, 1e-3)


def epsilons(*, min_eps: float = MIN_EPS, max_eps: float = MAX_EPS) -> st.SearchStrategy[float]:
    """eps values, log-uniform in [min_eps, max_eps], with the end points and the values of :data:`COMMON_EPS` in
    range (1e-5, PyTorch's default; 1e-12, BERT's; 1e-6; 1e-3, Keras's) favoured, shrinking towards 1e-5 (or
    min_eps when 1e-5 is out of range).

    - ``min_eps`` (default 1e-12): the smallest eps, > 0.
    - ``max_eps`` (default 0.1): the largest eps, >= min_eps.

    >>> 1e-12 <= epsilons().example() <= 0.1
    True
    """
    for name, value in (("min_eps", min_eps), ("max_eps", max_eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise InvalidArgument(f"{name}={value!r} must be a finite number greater than 0")
    if min_eps > max_eps:
        raise InvalidArgument(f"min_eps={min_eps!r} must not exceed max_eps={max_eps!r}")
    special = list(dict.fromkeys(float(v) for v in (*COMMON_EPS, min_eps, max_eps) if min_eps <= v <= max_eps))
    low, high = math.log10(min_eps), math.log10(max_eps)
    spread = st.floats(low, high).map(lambda e: float(min(max(10.0**e, min_eps), max_eps)))
    return st.one_of(st.sampled_from(special), spread)


def channel_shapes(*, min_dims: int = 2, max_dims: int = 5, min_channels: int = 1, max_channels: int = 4,
                   min_count: int = 2, max_count: int = 512,
                   channel_axis: int = 1) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes (N, C, *spatial), or (N, *spatial, C) with ``channel_axis=-1``, with M = N * prod(spatial) values per
    channel.

    - ``min_dims`` (default 2): the fewest dimensions, >= 2.
    - ``max_dims`` (default 5): the most dimensions (5 is N, C, D, H, W).
    - ``min_channels`` (default 1): the fewest channels C.
    - ``max_channels`` (default 4): the most channels C.
    - ``min_count`` (default 2): the smallest M; training mode needs M >= 2 (M = 1 is a structure check).
    - ``max_count`` (default 512): the largest M.
    - ``channel_axis`` (default 1): where C goes, 1 (NCHW) or -1 (NHWC).

    >>> shape = channel_shapes(min_dims=4, max_dims=4).example()
    >>> len(shape)
    4
    """
    if channel_axis not in (1, -1) or isinstance(channel_axis, bool):
        raise InvalidArgument(f"channel_axis={channel_axis!r} must be 1 (NCHW) or -1 (NHWC)")
    _check_pair("min_dims", min_dims, "max_dims", max_dims, 2)
    _check_pair("min_channels", min_channels, "max_channels", max_channels, 1)
    _check_pair("min_count", min_count, "max_count", max_count, 1)

    @st.composite
    def shapes(draw):
        ndim = draw(st.integers(min_dims, max_dims))
        channels = draw(st.integers(min_channels, max_channels))
        count = draw(st.integers(min_count, max_count))
        # Split M into N * prod(spatial): factors drawn from M's divisors, so sizes differ across axes
        # (H != W != C is what exposes layout confusions).
        sizes, rest = [], count
        for _ in range(ndim - 2):
            divisors = [d for d in range(1, rest + 1) if rest % d == 0]
            size = draw(st.sampled_from(divisors))
            sizes.append(size)
            rest //= size
        return (rest, channels, *sizes) if channel_axis == 1 else (rest, *sizes, channels)

    return shapes()


def shape_pool(seed: int = 0, *, size: int = 6, min_dims: int = 2, max_dims: int = 5, max_channels: int = 4,
               max_count: int = 512) -> tuple[tuple[int, ...], ...]:
    """A small set of shapes (N, C, *spatial) for one run, smallest first, fixed by ``seed``.

    A compiled implementation (jax.jit, torch.compile, tinygrad) compiles once per input shape; drawing every
    example's shape from a handful per run keeps it to a handful of compilations, while different seeds still
    cover different shapes. The pool always holds M = 2 and M = 3 (for "tiny batch"), shapes with at least two
    channels (for "constant channel") and one shape of every number of dimensions from ``min_dims`` to
    ``max_dims``; sorted by size, so that Hypothesis shrinks towards the smallest.

    - ``seed`` (default 0): fixes the pool.
    - ``size`` (default 6): the number of shapes, at least the number of dimensions covered plus 2.
    - ``min_dims``, ``max_dims``, ``max_channels``, ``max_count``: as in :func:`channel_shapes`.

    >>> pool = shape_pool(0)
    >>> len(pool), min(shape[0] * shape[1] for shape in pool) <= 8
    (6, True)
    """
    _check_pair("min_dims", min_dims, "max_dims", max_dims, 2)
    _check_int("max_channels", max_channels, 1)
    _check_int("max_count", max_count, 4)
    _check_int("size", size, max_dims - min_dims + 3)
    rng = np.random.default_rng([seed, 7919])
    wide = min(2, max_channels)

    def split(count: int, ndim: int, channels: int) -> tuple[int, ...]:
        sizes, rest = [], count
        for _ in range(ndim - 2):
            divisors = [d for d in range(1, rest + 1) if rest % d == 0]
            sizes.append(int(rng.choice(divisors)))
            rest //= sizes[-1]
        return (rest, channels, *sizes)

    pool = {(2, 1 if max_channels == 1 else int(rng.integers(1, max_channels + 1))),
            split(3, max(min_dims, min(3, max_dims)), wide)}
    ndims = list(range(min_dims, max_dims + 1))
    while len(pool) < size:
        ndim = ndims.pop(0) if ndims else int(rng.integers(min_dims, max_dims + 1))
        count = int(round(10 ** rng.uniform(math.log10(4), math.log10(max_count))))
        channels = int(rng.integers(wide, max_channels + 1))
        pool.add(split(count, ndim, channels))
    return tuple(sorted(pool, key=lambda shape: (math.prod(shape), len(shape), shape)))


#: The lengths of long groups, by kind: just above a power of two (a block of 1024 and a few values), a block and a
#: half or so (a partial block of hundreds), several blocks and a partial one. Each run takes one of each kind.
LONG_GROUP_LENGTHS = ((1025, 1027, 1031, 1039), (1536, 1280, 1792, 2560), (4097, 3073, 4099, 5121))
#: The regimes with constant groups (batch norm's channels): where eps alone keeps 1/sqrt(var + eps) finite.
CONSTANT_REGIMES = ("constant channel", "constant group")


def _entry_parts(entry) -> tuple[tuple[int, ...], int | None]:
    """(shape, size) of a pool entry: batch norm's are shapes, the other layers' ``(shape, size)`` pairs."""
    if entry and isinstance(entry[0], tuple):
        return tuple(int(n) for n in entry[0]), int(entry[1])
    return tuple(int(n) for n in entry), None


def _entry_of(shape, size):
    return tuple(shape) if size is None else (tuple(shape), size)


def _entry_layout(layer: str, entry) -> GroupLayout:
    shape, size = _entry_parts(entry)
    return example_layout(layer, shape, (shape[1],)) if size is None else entry_layout(layer, shape, size)


def entry_count(layer: str, entry) -> int:
    """M, the values per group, of a pool entry of ``layer`` (a shape for batch norm, ``(shape, size)`` else)."""
    return _entry_layout(layer, entry).count


def _stretched(layer: str, entry, length: int):
    """Entries like ``entry`` whose groups hold at least ``length`` values: one axis that lengthens every group
    (found from the layout: doubling it doubles M and keeps the number of groups) made long enough. Yields
    (values over length, size of x, entry)."""
    shape, size = _entry_parts(entry)
    try:
        layout = _entry_layout(layer, entry)
    except ValueError:
        return
    for axis, extent in enumerate(shape):
        doubled = list(shape)
        doubled[axis] = 2 * extent
        try:
            longer = _entry_layout(layer, _entry_of(doubled, size))
        except ValueError:
            continue
        if longer.count != 2 * layout.count or longer.statistics_shape != layout.statistics_shape:
            continue
        # M is proportional to this axis (M = extent * count / extent); the first long enough extent the layout
        # takes (group norm's channel axis must stay a multiple of the number of groups).
        need = -(-length * extent // layout.count)
        for stretch in range(need, need + 8):
            stretched = list(shape)
            stretched[axis] = stretch
            candidate = _entry_of(stretched, size)
            try:
                count = _entry_layout(layer, candidate).count
            except ValueError:
                continue
            if count >= length:
                yield count - length, math.prod(stretched), candidate
                break


def long_shapes(layer: str, pool, seed: int = 0) -> tuple:
    """Pool entries with groups of several thousand values for one run of ``layer``, fixed by ``seed``: for each kind
    of :data:`LONG_GROUP_LENGTHS` one length (1025, 1536 and 4097 values, for instance), so that a kernel's code path
    for rows longer than one block, of a length that is not a multiple of the block, runs in every run. Each is an
    entry of the run's ``pool`` (:func:`shape_pool`, :func:`layer_shape_pool`) with one axis lengthened, the one
    whose length the groups are made of (read from the layer's layout), so the length is met exactly where the
    other axes of a group allow (group norm's 2 or 3 channels per group may round it up by one or two).

    >>> pool = layer_shape_pool("layer_norm", 0)
    >>> [entry_count("layer_norm", entry) >= 1025 for entry in long_shapes("layer_norm", pool, 0)]
    [True, True, True]
    """
    _check_layer(layer, family_only=False)
    rng = np.random.default_rng([seed, 104729])
    entries = []
    for lengths in LONG_GROUP_LENGTHS:
        length = int(rng.choice(lengths))
        candidates = [c for entry in pool for c in _stretched(layer, entry, length)]
        if candidates:
            entries.append(min(candidates)[2])
    return tuple(dict.fromkeys(entries))


def batch_norm_examples(*, dtype="float64", regimes=REGIMES, min_dims: int = 2, max_dims: int = 5,
                        max_channels: int = 4, max_count: int = 512, min_eps: float = MIN_EPS,
                        max_eps: float = MAX_EPS, shapes=None) -> st.SearchStrategy[Example]:
    """:class:`Example` batch-norm problems: x, gamma, beta, eps and a random upstream gradient dy.

    - ``dtype`` (default "float64"): the dtype of x, gamma, beta and dy; "float64", "float32" or "float16".
    - ``regimes`` (default: all of :data:`REGIMES`): the value regimes to draw from (module docstring).
    - ``min_dims`` (default 2): the fewest dimensions of x, >= 2.
    - ``max_dims`` (default 5): the most dimensions of x.
    - ``max_channels`` (default 4): the most channels C.
    - ``max_count`` (default 512): the largest M (the "tiny batch" regime uses M = 2 or 3 regardless).
    - ``min_eps`` (default 1e-12): the smallest eps.
    - ``max_eps`` (default 0.1): the largest eps.
    - ``shapes`` (default None: any shape within the limits above): draw shapes from this collection instead
      (:func:`shape_pool`); each regime uses the ones it can ("tiny batch" those with M <= 3, "constant channel"
      those with two channels or more when there are any), shrinking towards the first.

    >>> example = batch_norm_examples(dtype="float32", regimes=("large offset",)).example()
    >>> example.x.dtype.name, example.regime
    ('float32', 'large offset')
    """
    resolved = _check_dtype(dtype)
    names = _check_regimes(regimes)
    _check_pair("min_dims", min_dims, "max_dims", max_dims, 2)
    _check_int("max_channels", max_channels, 1)
    _check_int("max_count", max_count, 2)
    eps_strategy = epsilons(min_eps=min_eps, max_eps=max_eps)
    pools = None if shapes is None else _pools(shapes, names)

    @st.composite
    def examples(draw):
        regime = draw(st.sampled_from(names))
        if pools is not None:
            shape = draw(st.sampled_from(pools[regime]))
            return make_example(shape, regime, draw(eps_strategy), draw(st.integers(0, 2**32 - 1)), resolved)
        low, high = (2, 3) if regime == "tiny batch" else (2, max_count)
        shape = draw(channel_shapes(min_dims=min_dims, max_dims=max_dims, max_channels=max_channels,
                                    min_channels=2 if regime == "constant channel" and max_channels > 1 else 1,
                                    min_count=low, max_count=high))
        eps = draw(eps_strategy)
        seed = draw(st.integers(0, 2**32 - 1))
        return make_example(shape, regime, eps, seed, resolved)

    return examples()


def _pools(shapes, names) -> dict[str, list[tuple[int, ...]]]:
    """The shapes each regime draws from (see ``shapes`` of :func:`batch_norm_examples`)."""
    shapes = [tuple(int(n) for n in shape) for shape in shapes]
    if not shapes or any(len(shape) < 2 or min(shape) < 1 for shape in shapes):
        raise InvalidArgument(f"shapes={shapes!r} must be a non-empty collection of shapes (N, C, ...) of sizes >= 1")
    usable = [s for s in shapes if math.prod(s) // s[1] >= 2]
    if not usable:
        raise InvalidArgument(f"shapes={shapes!r} has no shape with M >= 2 values per channel")
    pools = {}
    for name in names:
        if name == "tiny batch":
            pool = [s for s in usable if math.prod(s) // s[1] <= 3]
        elif name == "constant channel":
            pool = [s for s in usable if s[1] >= 2] or usable
        else:
            pool = usable
        if not pool:
            raise InvalidArgument(f"shapes={shapes!r} has no shape for the regime {name!r} (M = 2 or 3)")
        pools[name] = pool
    return pools


def make_example(shape: tuple[int, ...], regime: str, eps: float, seed: int, dtype="float64") -> Example:
    """The example of ``regime`` for a shape, eps and seed: the deterministic half of :func:`batch_norm_examples`."""
    dtype = _check_dtype(dtype)
    _check_regimes((regime,), "regime")
    rng = np.random.default_rng(seed)
    channels = shape[1]
    per_channel = (1, channels) + (1,) * (len(shape) - 2)
    z = rng.standard_normal(shape)

    def channel_values(values):
        return np.asarray(values, dtype=np.float64).reshape(per_channel)

    if regime == "large offset":
        mu = rng.choice([-1.0, 1.0], channels) * 10.0 ** rng.uniform(3, 4, channels)
        sigma = 10.0 ** rng.uniform(-0.3, 0.3, channels)
        x = channel_values(mu) + channel_values(sigma) * z
    elif regime == "variance near eps":
        sigma = np.sqrt(eps * 10.0 ** rng.uniform(-1, 1, channels))
        x = channel_values(rng.normal(0, 1, channels)) + channel_values(sigma) * z
    elif regime == "wide dynamic range":
        x = rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-3, 3, shape)
    else:  # well-conditioned, tiny batch, and the non-constant channels of "constant channel"
        x = channel_values(rng.normal(0, 2, channels)) + channel_values(10.0 ** rng.uniform(-0.5, 0.5, channels)) * z
    if regime == "constant channel":
        constant = rng.random(channels) < 0.5
        constant[rng.integers(channels)] = True
        level = rng.choice([-1.0, 1.0], channels) * 10.0 ** rng.uniform(0, 3, channels)
        x = np.where(channel_values(constant), channel_values(level) * np.ones(shape), x)

    gamma = rng.normal(0, 1.5, channels)
    gamma[rng.random(channels) < 0.15] = 0.0
    beta = rng.normal(0, 2, channels)
    dy = channel_values(rng.uniform(-1, 1, channels)) + channel_values(10.0 ** rng.uniform(-1, 1, channels)) * \
        rng.standard_normal(shape)
    cast = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
    example = Example(cast(x), cast(gamma), cast(beta), float(eps), cast(dy), regime, int(seed))
    return _within_range(example, dy)


def _within_range(example: Example, dy: np.ndarray) -> Example:
    """The example with its float64 ``dy`` scaled by a power of two, when needed, so that its exact gradients are
    within the dtype's range (:mod:`bnsym.testing.representable`: float16 with eps = 1e-12 on a constant group)."""
    scale = dy_scale(example.layout, example.x, example.gamma, example.dy, example.eps, example.dtype)
    if scale == 1:
        return example
    return example.replace(dy=np.asarray(np.asarray(dy, np.float64) * scale, dtype=example.dtype))


# ----- the other layers of the family: layer, RMS, group and instance norm -----

def _check_layer(layer, family_only: bool = True) -> str:
    known = LAYERS[1:] if family_only else LAYERS
    if layer not in known:
        raise InvalidArgument(f"layer={layer!r} is not one of {known}")
    return layer


def layer_regimes(layer: str) -> tuple[str, ...]:
    """The value regimes of ``layer`` (module docstring), the well-conditioned one first.

    >>> layer_regimes("rms_norm")[2]
    'mean square near eps'
    """
    _check_layer(layer, family_only=False)
    if layer == "batch_norm":
        return REGIMES
    return _RMS_REGIMES if layer == "rms_norm" else _FAMILY_REGIMES


def _split(rng: np.random.Generator, count: int, parts: int) -> list[int]:
    """``count`` as a product of ``parts`` sizes, each a divisor drawn at random (the last takes the rest)."""
    sizes, rest = [], count
    for _ in range(parts - 1):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        sizes.append(int(rng.choice(divisors)))
        rest //= sizes[-1]
    return [*sizes, rest]


def _normalised_entry(rng, ndim: int, count: int, rows: int) -> tuple[tuple[int, ...], int]:
    # Four dimensions normalise two axes, both longer than 1 (normalising the last one only must differ).
    k = 2 if ndim == 4 else int(rng.integers(1, min(2, ndim - 1) + 1)) if ndim > 4 else 1
    if k == 1:
        return (*_split(rng, rows, ndim - 1), count), 1
    last = int(rng.integers(2, max(3, math.isqrt(count)) + 1))
    return (*_split(rng, rows, ndim - 2), max(count // last, 2), last), 2


def _grouped_entry(rng, ndim: int, count: int, samples: int) -> tuple[tuple[int, ...], int]:
    # Two or three channels per group: with one, grouping contiguously or with a stride would be the same.
    groups, per_group = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    spatial = _split(rng, max(count // per_group, 1), ndim - 2) if ndim > 2 else []
    return (samples, groups * per_group, *spatial), groups


def _instance_entry(rng, ndim: int, count: int, samples: int) -> tuple[tuple[int, ...], int]:
    return (samples, int(rng.integers(2, 5)), *_split(rng, max(count, 2), ndim - 2)), 0


def layer_shape_pool(layer: str, seed: int = 0, *, size: int = 6,
                     max_count: int = 256) -> tuple[tuple[tuple[int, ...], int], ...]:
    """A small set of ``(shape, size)`` pairs for one run of ``layer`` (module docstring), smallest first, fixed
    by ``seed``: a compiled implementation compiles once per pair, not once per example.

    The pool always holds groups of M = 2 and M = 3 values (for "tiny group"), shapes with two groups or more,
    every number of dimensions the layer takes (layer and RMS norm: 2 to 4, with one and two normalised axes;
    group norm: 2 to 5, with two to four groups of two or three channels; instance norm: 3 to 5, spatial size at
    least 2, as PyTorch requires).

    - ``layer``: "layer_norm", "rms_norm", "group_norm" or "instance_norm".
    - ``seed`` (default 0): fixes the pool.
    - ``size`` (default 6): the number of pairs, at least 5.
    - ``max_count`` (default 256): the largest M.

    >>> pool = layer_shape_pool("group_norm", 0)
    >>> len(pool), all(shape[1] % groups == 0 for shape, groups in pool)
    (6, True)
    """
    _check_layer(layer)
    _check_int("size", size, 5)
    _check_int("max_count", max_count, 4)
    rng = np.random.default_rng([seed, 7919, LAYERS.index(layer)])
    if layer in ("layer_norm", "rms_norm"):
        pool = {((int(rng.integers(2, 5)), 2), 1), ((int(rng.integers(2, 4)), 1, 3), 2)}
        ndims, make, low = [2, 3, 4], _normalised_entry, 2
    elif layer == "group_norm":
        pool = {((int(rng.integers(2, 4)), 4), 2), ((2, 6, 1), 2)}  # M = 2 (2 channels), M = 3 (3 channels)
        ndims, make, low = [3, 4, 5], _grouped_entry, 2
    else:
        pool = {((int(rng.integers(2, 4)), int(rng.integers(1, 4)), 2), 0), ((2, int(rng.integers(1, 4)), 3, 1), 0)}
        ndims, make, low = [3, 4, 5], _instance_entry, 3
    while len(pool) < size:
        ndim = ndims.pop(0) if ndims else int(rng.integers(low, 5))
        count = int(round(10 ** rng.uniform(math.log10(4), math.log10(max_count))))
        pool.add(make(rng, ndim, count, int(rng.integers(2, 6))))
    return tuple(sorted(pool, key=lambda entry: (math.prod(entry[0]), len(entry[0]), entry)))


def _layer_pools(layer: str, shapes, names) -> dict[str, list[tuple[tuple[int, ...], int]]]:
    entries = [(tuple(int(n) for n in shape), int(size)) for shape, size in shapes]
    if not entries:
        raise InvalidArgument(f"shapes={shapes!r} must be a non-empty collection of (shape, size) pairs")
    counts = {entry: entry_layout(layer, *entry).count for entry in entries}
    pools = {}
    for name in names:
        if name == "tiny group":
            pool = [e for e in entries if counts[e] <= 3]
        else:
            pool = [e for e in entries if counts[e] >= 2]
        if not pool:
            raise InvalidArgument(f"shapes={shapes!r} has no shape for the regime {name!r} of {layer}")
        pools[name] = pool
    return pools


def gamma_shape(layer: str, shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The shape of gamma (and beta) for a family layer's ``(shape, size)`` pool entry."""
    if layer in ("layer_norm", "rms_norm"):
        return tuple(shape[len(shape) - size:])
    return (shape[1],)


def _groups(layer: str, size: int) -> int | None:
    return size if layer == "group_norm" else None


def entry_layout(layer: str, shape: tuple[int, ...], size: int) -> GroupLayout:
    """The layout (groups, M) of a family layer's ``(shape, size)`` pool entry."""
    return example_layout(layer, shape, gamma_shape(layer, shape, size), _groups(layer, size))


def layer_examples(layer: str, *, dtype="float64", regimes=None, shapes=None,
                   min_eps: float = MIN_EPS, max_eps: float = MAX_EPS) -> st.SearchStrategy[Example]:
    """:class:`Example` problems of a family layer: x, gamma, beta (of the layer's parameter shape), eps, dy.

    - ``layer``: "layer_norm", "rms_norm", "group_norm" or "instance_norm".
    - ``dtype`` (default "float64"): the dtype of x, gamma, beta and dy.
    - ``regimes`` (default: all of :func:`layer_regimes`): the value regimes to draw from.
    - ``shapes`` (default: :func:`layer_shape_pool` with seed 0): the ``(shape, size)`` pairs to draw from,
      shrinking towards the first; "tiny group" uses those with M <= 3.
    - ``min_eps``, ``max_eps`` (default 1e-12, 0.1): the range of eps.

    >>> example = layer_examples("layer_norm", dtype="float32", regimes=("large offset",)).example()
    >>> example.layer, example.gamma.shape == example.x.shape[example.x.ndim - example.gamma.ndim:]
    ('layer_norm', True)
    """
    _check_layer(layer)
    resolved = _check_dtype(dtype)
    known = layer_regimes(layer)
    names = known if regimes is None else tuple([regimes] if isinstance(regimes, str) else regimes)
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise InvalidArgument(f"regimes={regimes!r} must name regimes of {layer}: {known}")
    pools = _layer_pools(layer, layer_shape_pool(layer) if shapes is None else shapes, names)
    eps_strategy = epsilons(min_eps=min_eps, max_eps=max_eps)

    @st.composite
    def examples(draw):
        regime = draw(st.sampled_from(names))
        shape, size = draw(st.sampled_from(pools[regime]))
        return make_layer_example(layer, shape, size, regime, draw(eps_strategy), draw(st.integers(0, 2**32 - 1)),
                                  resolved)

    return examples()


def make_layer_example(layer: str, shape: tuple[int, ...], size: int, regime: str, eps: float, seed: int,
                       dtype="float64") -> Example:
    """The example of ``regime`` for a family layer, a ``(shape, size)`` pair, eps and seed: the deterministic half
    of :func:`layer_examples`. Values are drawn per group, as batch norm's are per channel."""
    _check_layer(layer)
    dtype = _check_dtype(dtype)
    if regime not in layer_regimes(layer):
        raise InvalidArgument(f"regime={regime!r} is not a regime of {layer}: {layer_regimes(layer)}")
    shape = tuple(int(n) for n in shape)
    parameter_shape = gamma_shape(layer, shape, size)
    num_groups = _groups(layer, size)
    layout = example_layout(layer, shape, parameter_shape, num_groups)
    rng = np.random.default_rng(seed)
    per_group = layout.statistics_broadcast
    groups = math.prod(per_group)
    z = rng.standard_normal(layout.grouped)

    def group_values(values):
        return np.asarray(values, dtype=np.float64).reshape(per_group)

    if regime == "large offset":
        mu = rng.choice([-1.0, 1.0], groups) * 10.0 ** rng.uniform(3, 4, groups)
        x = group_values(mu) + group_values(10.0 ** rng.uniform(-0.3, 0.3, groups)) * z
    elif regime in ("variance near eps", "mean square near eps"):
        sigma = np.sqrt(eps * 10.0 ** rng.uniform(-1, 1, groups))
        # RMS norm's statistic is the mean square: keep the mean within the spread, so that it stays near eps too.
        mu = rng.normal(0, 1, groups) * (sigma if regime == "mean square near eps" else 1.0)
        x = group_values(mu) + group_values(sigma) * z
    elif regime == "wide dynamic range":
        x = rng.choice([-1.0, 1.0], layout.grouped) * 10.0 ** rng.uniform(-3, 3, layout.grouped)
    else:  # well-conditioned, tiny group, and the other groups of "constant group"
        x = group_values(rng.normal(0, 2, groups)) + group_values(10.0 ** rng.uniform(-0.5, 0.5, groups)) * z
    if regime == "constant group":
        constant = rng.random(groups) < 0.5
        constant[rng.integers(groups)] = True
        level = rng.choice([-1.0, 1.0], groups) * 10.0 ** rng.uniform(0, 3, groups)
        x = np.where(group_values(constant), group_values(level) * np.ones(layout.grouped), x)

    gamma = rng.normal(0, 1.5, parameter_shape)
    gamma[rng.random(parameter_shape) < 0.15] = 0.0
    beta = np.zeros(parameter_shape) if layer == "rms_norm" else rng.normal(0, 2, parameter_shape)
    dy = group_values(rng.uniform(-1, 1, groups)) + group_values(10.0 ** rng.uniform(-1, 1, groups)) * \
        rng.standard_normal(layout.grouped)
    field = lambda a: np.asarray(a, dtype=dtype).reshape(shape)  # noqa: E731  (from the grouped layout)
    parameter = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
    example = Example(field(x), parameter(gamma), parameter(beta), float(eps), field(dy), regime, int(seed), layer,
                      num_groups)
    return _within_range(example, np.reshape(dy, shape))
