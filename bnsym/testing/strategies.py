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

Every layer (:func:`layer_examples`) is drawn the same way, with its own *groups* in place of channels (a row over
the normalised axes, a sample's C/G channels, a sample's channel: ``spec.layout``) and gamma and beta of the
layer's parameter shape, drawn per element. Its regimes are ``spec.regimes`` (:func:`layer_regimes`): batch
norm's, per group ("constant group" and "tiny group", M = 2 or 3 values per group, in place of "constant channel"
and "tiny batch"), and for a layer that takes no mean "mean square near eps" in place of "variance near eps". Its
shapes come from :func:`layer_shape_pool`: pairs ``(shape, size)`` where ``size`` is what the layer's grouping
draws (:meth:`bnsym.spec.groupings.Grouping.example_options`: the number of normalised trailing axes, gamma
having shape ``shape[-size:]``; the number of groups; or 0).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from bnsym.spec import BUILT_IN, LayerSpec, spec
from bnsym.spec.groupings import Channels
from bnsym.spec.layers import CHANNEL_REGIMES
from bnsym.spec.layout import GroupLayout
from bnsym.testing.protocols import DEFAULT_LAYER
from bnsym.testing.representable import dy_scale

__all__ = ["CONSTANT_REGIMES", "DTYPES", "LAYERS", "LONG_GROUP_LENGTHS", "MIN_EPS", "REGIMES", "Example",
           "batch_norm_examples", "channel_shapes", "dtypes", "entry_count", "epsilons", "layer_examples",
           "layer_regimes", "layer_shape_pool", "long_shapes", "regimes", "shape_pool"]

#: Batch norm's regimes (:data:`bnsym.spec.CHANNEL_REGIMES`), those of :func:`batch_norm_examples`.
REGIMES = CHANNEL_REGIMES
DTYPES = ("float64", "float32", "float16")
#: The layers bnsym ships (every registered layer has strategies: :func:`layer_examples`).
LAYERS = BUILT_IN


def _spec(layer) -> LayerSpec:
    try:
        return spec(layer)
    except ValueError as error:
        raise InvalidArgument(f"layer={layer!r}: {error}") from None


def regime_kind(regime: str) -> str:
    """What a regime is, whatever a layer calls it: "constant" (a constant channel or group), "tiny" (M = 2 or 3),
    "near eps" (the variance, or the mean square, near eps), or the regime itself."""
    if regime.startswith("constant "):
        return "constant"
    if regime.startswith("tiny "):
        return "tiny"
    if regime.endswith(" near eps"):
        return "near eps"
    return regime


def example_size(layer: LayerSpec, gamma_shape: tuple[int, ...], num_groups: int | None) -> int:
    """The grouping's size of an example (:meth:`bnsym.spec.groupings.Grouping.example_options`): the number of
    groups for a layer that takes ``num_groups``, the number of normalised axes (gamma's dimensions) for a layer whose
    parameters hold one value per value of a group, 0 otherwise."""
    if "num_groups" in layer.options:
        return int(num_groups)
    return normalised_ndim(layer, gamma_shape) if layer.grouping.parameter_per_value else 0


def normalised_ndim(layer: LayerSpec, gamma_shape: tuple[int, ...]) -> int:
    """The number of normalised axes that gamma of ``gamma_shape`` covers, for a layer whose parameters hold one
    value per value of a group: gamma's dimensions, less the batch axis when it holds one row per sample
    (``Grouping.sample_parameters``: adaptive layer norm's (N, D))."""
    return len(gamma_shape) - int(layer.grouping.sample_parameters)


def example_options(layer: str, shape: tuple[int, ...], size: int) -> dict:
    """The options (``axis``, ``num_groups``) of an example of ``layer`` of ``shape`` drawn with ``size``."""
    return spec(layer).grouping.example_options(tuple(shape), size)


def example_layout(layer: str, shape: tuple[int, ...], gamma_shape: tuple[int, ...],
                   num_groups: int | None = None) -> GroupLayout:
    """Which values of x of ``shape`` form a group for ``layer``, with the channel axis at 1 and, for a layer whose
    parameters have the normalised shape, the trailing axes that gamma's shape covers."""
    layer_spec = spec(layer)
    shape = tuple(shape)
    size = example_size(layer_spec, tuple(gamma_shape), num_groups)
    return layer_spec.layout(shape, **layer_spec.grouping.example_options(shape, size))


@dataclass(frozen=True, eq=False)
class Example:
    """One problem of a normalisation layer: inputs in ``dtype``, the regime that produced them, and a seed for the
    auxiliary randomness of a property (directions, shifts, permutations), so that a saved example replays exactly.

    ``layer`` (default batch norm) says which layer the inputs are for, and ``num_groups`` is the number of groups
    of a layer that takes it (None for the others). A layer with no beta (``spec.parameters``) has zeros of gamma's
    shape as ``beta``, never passed on. ``fields`` holds, by name, the arrays of a layer with field inputs and
    outputs (``spec.field_inputs``, ``spec.field_outputs``): each field input (fused add + RMS norm's
    ``residual``) and the upstream gradient ``d<o>`` of each field output (``dh``), shaped like x; each is also an
    attribute (``example.residual``).
    """

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    dy: np.ndarray
    regime: str
    seed: int = 0
    layer: str = DEFAULT_LAYER
    num_groups: int | None = None
    #: A layer's field inputs and the upstream gradients of its field outputs (fused add + RMS norm's residual and
    #: dh), as (name, array) pairs; read as attributes.
    fields: tuple[tuple[str, np.ndarray], ...] = ()
    #: The inputs of a layer's training forward that are never differentiated, as (name, value) pairs: the running
    #: statistics it reads (per group, the statistics shape) and its scalar options (floats); read as attributes.
    constants: tuple = ()

    def __getattr__(self, name: str):
        # Only called when ordinary lookup fails: a field of the layer (example.residual) or a constant
        # (example.running_mean, example.r_max).
        for key, value in (*object.__getattribute__(self, "fields"), *object.__getattribute__(self, "constants")):
            if key == name:
                return value
        raise AttributeError(f"Example has no attribute {name!r}")

    def __repr__(self) -> str:
        # One line, not every array: Hypothesis shows the repr of a failing example (and warns when it is long).
        return f"Example({self.layer}, {self.describe()}, seed {self.seed})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's pretty printer would print every field
        printer.text(repr(self))

    @property
    def spec(self) -> LayerSpec:
        return spec(self.layer)

    @cached_property
    def options(self) -> dict:
        """The layer's options for this example (the keyword arguments of bnsym's public functions)."""
        layer = self.spec
        return layer.grouping.example_options(self.x.shape, example_size(layer, self.gamma.shape, self.num_groups))

    @cached_property
    def layout(self) -> GroupLayout:
        """Which values form a group, where the parameters live, M (:mod:`bnsym.spec.layout`)."""
        return self.spec.layout(self.x.shape, **self.options)

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def channels(self) -> int:
        return self.x.shape[1]

    @property
    def count(self) -> int:
        """M, the number of values per group (per channel for batch norm)."""
        return self.layout.count

    def describe(self) -> str:
        """One line naming every input that matters: shape, dtype, M, the ranges of x, gamma and beta (with the
        number of zero gammas), eps and the regime."""
        if self.x.ndim < 2 or self.x.shape[1] == 0:
            return (f"x of shape {self.x.shape} ({self.dtype.name}, no channels: C = 0), eps = {self.eps:.3g}, regime "
                    f"\"{self.regime}\"")
        layout, grouping = self.layout, self.spec.grouping
        zeros = int(np.sum(self.gamma == 0))
        gamma = _range(self.gamma) + (f" ({zeros} of {self.gamma.size} zero)" if zeros else "")
        beta = f", beta {_range(self.beta)}" if "beta" in self.spec.parameters else ""
        if not grouping.per_sample:  # one group per channel: the channels say it all
            values = f"M = {layout.count} per {grouping.group_noun}"
        else:
            groups = math.prod(layout.statistics_shape)
            values = f"{self._grouping_words()}: M = {layout.count} per group, {_count(groups, 'group')}"
        constants = "".join(f", {name} {_range(np.asarray(value))}" if np.ndim(value) else f", {name} = {value:g}"
                            for name, value in self.constants)
        return (f"x of shape {self.x.shape} ({self.dtype.name}, {values}) in {_range(self.x)}, gamma {gamma}{beta}"
                f"{constants}, eps = {self.eps:.3g}, regime \"{self.regime}\"")

    def _grouping_words(self) -> str:
        """How the groups are formed: over the last axes, in groups of channels, per sample and channel."""
        grouping = self.spec.grouping
        if grouping.parameter_per_value:
            normalised = normalised_ndim(self.spec, self.gamma.shape)
            return "normalised over the last axis" if normalised == 1 else f"normalised over the last {normalised} axes"
        if self.num_groups is not None:
            return f"{_count(self.num_groups, 'group')} of {_count(self.x.shape[1] // self.num_groups, 'channel')}"
        if not grouping.channel_axis:  # rows over trailing axes, with parameters of another shape (a scalar)
            normalised = len(self.layout.axes)
            return "normalised over the last axis" if normalised == 1 else f"normalised over the last {normalised} axes"
        return "per sample and channel"

    def rng(self, salt: int = 0) -> np.random.Generator:
        """A generator for a property's own random draws, fixed by the example."""
        return np.random.default_rng([self.seed, salt])

    def replace(self, **changes) -> Example:
        values = {name: getattr(self, name) for name in ("x", "gamma", "beta", "eps", "dy", "regime", "seed",
                                                         "layer", "num_groups", "constants")}
        fields = dict(self.fields)
        for name in [n for n in changes if n in fields]:
            fields[name] = changes.pop(name)
        values.update(changes)
        values.setdefault("fields", tuple(fields.items()))
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


def _entry_parts(entry) -> tuple[tuple[int, ...], int]:
    """(shape, size) of a pool entry: a ``(shape, size)`` pair, or a bare shape (size 0, for a grouping that takes
    no size: batch norm's pools were written so)."""
    if entry and isinstance(entry[0], (tuple, list)):
        return tuple(int(n) for n in entry[0]), int(entry[1])
    return tuple(int(n) for n in entry), 0


def pool_entries(layer: str, shapes) -> tuple[tuple[tuple[int, ...], int], ...]:
    """``shapes`` (``(shape, size)`` pairs, or bare shapes for a layer whose grouping takes no size) as pairs."""
    _spec(layer)
    return tuple(_entry_parts(entry) for entry in shapes)


def _entry_layout(layer: str, entry) -> GroupLayout:
    return entry_layout(layer, *_entry_parts(entry))


def entry_count(layer: str, entry) -> int:
    """M, the values per group, of a pool entry of ``layer`` (a ``(shape, size)`` pair, or a bare shape)."""
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
            longer = _entry_layout(layer, (tuple(doubled), size))
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
            candidate = (tuple(stretched), size)
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
    _spec(layer)
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
    pools = None if shapes is None else _layer_pools(DEFAULT_LAYER, pool_entries(DEFAULT_LAYER, shapes), names)

    @st.composite
    def examples(draw):
        regime = draw(st.sampled_from(names))
        if pools is not None:
            shape, _ = draw(st.sampled_from(pools[regime]))
            return make_example(shape, regime, draw(eps_strategy), draw(st.integers(0, 2**32 - 1)), resolved)
        low, high = (2, 3) if regime == "tiny batch" else (2, max_count)
        shape = draw(channel_shapes(min_dims=min_dims, max_dims=max_dims, max_channels=max_channels,
                                    min_channels=2 if regime == "constant channel" and max_channels > 1 else 1,
                                    min_count=low, max_count=high))
        eps = draw(eps_strategy)
        seed = draw(st.integers(0, 2**32 - 1))
        return make_example(shape, regime, eps, seed, resolved)

    return examples()


def make_example(shape: tuple[int, ...], regime: str, eps: float, seed: int, dtype="float64") -> Example:
    """The batch-norm example of ``regime`` for a shape, eps and seed: the deterministic half of
    :func:`batch_norm_examples` (:func:`make_layer_example` of the default layer)."""
    _check_regimes((regime,), "regime")
    return make_layer_example(DEFAULT_LAYER, shape, 0, regime, eps, seed, dtype)


def _within_range(example: Example, dy: np.ndarray) -> Example:
    """The example with its float64 ``dy`` scaled by a power of two, when needed, so that its exact gradients are
    within the dtype's range (:mod:`bnsym.testing.representable`: float16 with eps = 1e-12 on a constant group)."""
    scale = dy_scale(example.layout, example.x, example.gamma, example.dy, example.eps, example.dtype)
    if scale == 1:
        return example
    return example.replace(dy=np.asarray(np.asarray(dy, np.float64) * scale, dtype=example.dtype))


# ----- every layer: its own groups, regimes and pools, from its specification -----

def layer_regimes(layer: str) -> tuple[str, ...]:
    """The value regimes of ``layer`` (``spec.regimes``; module docstring), the well-conditioned one first.

    >>> layer_regimes("rms_norm")[2]
    'mean square near eps'
    """
    return _spec(layer).regimes


def layer_shape_pool(layer: str, seed: int = 0, *, size: int = 6,
                     max_count: int = 256) -> tuple[tuple[tuple[int, ...], int], ...]:
    """A small set of ``(shape, size)`` pairs for one run of ``layer`` (module docstring), smallest first, fixed
    by ``seed``: a compiled implementation compiles once per pair, not once per example.

    The pool always holds groups of M = 2 and M = 3 values (for the tiny regime), shapes with two groups or more,
    every number of dimensions the layer's grouping takes (normalised trailing axes: 2 to 4, with one and two
    normalised axes; groups of channels: 2 to 5, with two to four groups of two or three channels; a sample's
    channel: 3 to 5, spatial size at least 2, as PyTorch requires). A layer whose groups are channels (batch norm)
    draws :func:`shape_pool` (of ``size`` shapes, M up to 512), each shape paired with size 0.

    - ``layer``: a layer's name (:data:`bnsym.spec.SPECS`).
    - ``seed`` (default 0): fixes the pool.
    - ``size`` (default 6): the number of pairs, at least 5.
    - ``max_count`` (default 256): the largest M.

    >>> pool = layer_shape_pool("group_norm", 0)
    >>> len(pool), all(shape[1] % groups == 0 for shape, groups in pool)
    (6, True)
    """
    grouping = _spec(layer).grouping
    _check_int("size", size, 5)
    _check_int("max_count", max_count, 4)
    if isinstance(grouping, Channels):
        return tuple((shape, 0) for shape in shape_pool(seed, size=max(size, 6)))
    # Keyed by the layer's name, not its place in the table: declaring another layer changes no other's pool.
    rng = np.random.default_rng([seed, 7919, zlib.crc32(layer.encode())])
    pool, ndims = {grouping.fit_entry(e) for e in grouping.tiny_example_entries(rng)}, list(grouping.example_ndims)
    while len(pool) < size:
        ndim = ndims.pop(0) if ndims else int(rng.integers(grouping.example_min_ndim, 5))
        count = int(round(10 ** rng.uniform(math.log10(4), math.log10(max_count))))
        pool.add(grouping.fit_entry(grouping.example_entry(rng, ndim, count, int(rng.integers(2, 6)))))
    return tuple(sorted(pool, key=lambda entry: (math.prod(entry[0]), len(entry[0]), entry)))


def _layer_pools(layer: str, entries, names) -> dict[str, list[tuple[tuple[int, ...], int]]]:
    """The entries each regime draws from: those with M >= 2 (the tiny regime: M <= 3; constant groups: two groups
    or more when there are any)."""
    entries = [(tuple(int(n) for n in shape), int(size)) for shape, size in entries]
    if not entries:
        raise InvalidArgument(f"shapes={entries!r} must be a non-empty collection of (shape, size) pairs")
    layouts = {}
    for entry in entries:
        try:
            layouts[entry] = entry_layout(layer, *entry)
        except ValueError as error:
            raise InvalidArgument(f"shapes: {entry!r} is not an input of {layer}: {error}") from None
    usable = [e for e in entries if layouts[e].count >= 2]
    pools = {}
    for name in names:
        kind = regime_kind(name)
        if kind == "tiny":
            pool = [e for e in usable if layouts[e].count <= 3]
        elif kind == "constant":
            pool = [e for e in usable if math.prod(layouts[e].statistics_shape) >= 2] or usable
        else:
            pool = usable
        if not pool:
            raise InvalidArgument(f"shapes={entries!r} has no shape for the regime {name!r} of {layer}")
        pools[name] = pool
    return pools


def gamma_shape(layer: str, shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The shape of gamma (and beta) for a ``(shape, size)`` pool entry of ``layer``."""
    return entry_layout(layer, shape, size).parameter_shape


def entry_layout(layer: str, shape: tuple[int, ...], size: int) -> GroupLayout:
    """The layout (groups, M) of a ``(shape, size)`` pool entry of ``layer``."""
    return spec(layer).layout(tuple(shape), **example_options(layer, shape, size))


def layer_examples(layer: str, *, dtype="float64", regimes=None, shapes=None,
                   min_eps: float = MIN_EPS, max_eps: float = MAX_EPS) -> st.SearchStrategy[Example]:
    """:class:`Example` problems of any layer: x, gamma, beta (of the layer's parameter shape), eps, dy.

    - ``layer``: a layer's name (:data:`bnsym.spec.SPECS`).
    - ``dtype`` (default "float64"): the dtype of x, gamma, beta and dy.
    - ``regimes`` (default: all of :func:`layer_regimes`): the value regimes to draw from.
    - ``shapes`` (default: :func:`layer_shape_pool` with seed 0): the ``(shape, size)`` pairs to draw from,
      shrinking towards the first; the tiny regime uses those with M <= 3.
    - ``min_eps``, ``max_eps`` (default 1e-12, 0.1): the range of eps.

    >>> example = layer_examples("layer_norm", dtype="float32", regimes=("large offset",)).example()
    >>> example.layer, example.gamma.shape == example.x.shape[example.x.ndim - example.gamma.ndim:]
    ('layer_norm', True)
    """
    known = layer_regimes(layer)
    resolved = _check_dtype(dtype)
    names = known if regimes is None else tuple([regimes] if isinstance(regimes, str) else regimes)
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise InvalidArgument(f"regimes={regimes!r} must name regimes of {layer}: {known}")
    entries = layer_shape_pool(layer) if shapes is None else pool_entries(layer, shapes)
    pools = _layer_pools(layer, entries, names)
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
    """The example of ``regime`` for ``layer``, a ``(shape, size)`` pair, eps and seed: the deterministic half of
    :func:`layer_examples`. Values are drawn per group (batch norm's groups are its channels)."""
    layer_spec = _spec(layer)
    dtype = _check_dtype(dtype)
    if regime not in layer_spec.regimes:
        raise InvalidArgument(f"regime={regime!r} is not a regime of {layer}: {layer_spec.regimes}")
    shape = tuple(int(n) for n in shape)
    options = example_options(layer, shape, size)
    layout = layer_spec.layout(shape, **options)
    parameter_shape = layout.parameter_shape
    rng = np.random.default_rng(seed)
    per_group = layout.statistics_broadcast
    groups = math.prod(per_group)
    kind = regime_kind(regime)

    def group_values(values):
        return np.asarray(values, dtype=np.float64).reshape(per_group)

    x = _regime_values(layer_spec, layout, kind, eps, rng, group_values)
    gamma = rng.normal(0, 1.5, parameter_shape)
    gamma[rng.random(parameter_shape) < 0.15] = 0.0
    beta = rng.normal(0, 2, parameter_shape) if "beta" in layer_spec.parameters else np.zeros(parameter_shape)

    def upstream(generator):
        return group_values(generator.uniform(-1, 1, groups)) + group_values(10.0 ** generator.uniform(-1, 1, groups)) \
            * generator.standard_normal(layout.grouped)

    dy = upstream(rng)
    field = lambda a: np.asarray(a, dtype=dtype).reshape(shape)  # noqa: E731  (from the grouped layout)
    parameter = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
    # A layer's field inputs are drawn from the same regime as x, each with a generator of its own (so that the
    # draws of x, gamma, beta and dy are those of a layer without them), and each field output's upstream
    # gradient as dy is.
    fields = [(name, field(_regime_values(layer_spec, layout, kind, eps, np.random.default_rng([seed, 1, k]),
                                          group_values)))
              for k, name in enumerate(layer_spec.field_inputs)]
    fields += [("d" + name, field(upstream(np.random.default_rng([seed, 2, k]))))
               for k, name in enumerate(layer_spec.field_outputs)]
    constants = _constants(layer_spec, layout, np.asarray(x, np.float64).reshape(layout.grouped), eps, rng, dtype)
    example = Example(field(x), parameter(gamma), parameter(beta), float(eps), field(dy), regime, int(seed), layer,
                      options.get("num_groups"), fields=tuple(fields), constants=constants)
    return _within_range(example, np.reshape(dy, shape))


def _regime_values(layer_spec: LayerSpec, layout, kind: str, eps: float, rng: np.random.Generator, group_values):
    """The values of x (in the grouped layout) of a regime of kind ``kind``, per group."""
    per_group = layout.statistics_broadcast
    groups = math.prod(per_group)
    z = rng.standard_normal(layout.grouped)
    if kind == "large offset":
        mu = rng.choice([-1.0, 1.0], groups) * 10.0 ** rng.uniform(3, 4, groups)
        x = group_values(mu) + group_values(10.0 ** rng.uniform(-0.3, 0.3, groups)) * z
    elif kind == "near eps":
        sigma = np.sqrt(eps * 10.0 ** rng.uniform(-1, 1, groups))
        # A layer that takes no mean normalises by the mean square: keep the mean within the spread, so that the
        # mean square stays near eps too.
        mu = rng.normal(0, 1, groups) * (1.0 if layer_spec.centred else sigma)
        x = group_values(mu) + group_values(sigma) * z
    elif kind == "wide dynamic range":
        x = rng.choice([-1.0, 1.0], layout.grouped) * 10.0 ** rng.uniform(-3, 3, layout.grouped)
    else:  # well-conditioned, tiny, and the other groups of the constant regime
        x = group_values(rng.normal(0, 2, groups)) + group_values(10.0 ** rng.uniform(-0.5, 0.5, groups)) * z
    if kind == "constant":
        constant = rng.random(groups) < 0.5
        constant[rng.integers(groups)] = True
        level = rng.choice([-1.0, 1.0], groups) * 10.0 ** rng.uniform(0, 3, groups)
        x = np.where(group_values(constant), group_values(level) * np.ones(layout.grouped), x)
    return x

def _constants(layer_spec: LayerSpec, layout, grouped: np.ndarray, eps: float, rng, dtype) -> tuple:
    """The layer's constants for one example (:attr:`Example.constants`): its scalar options at their defaults, and
    the running statistics its training forward reads, drawn around the batch's own so that a correction clipped
    by those options is clipped in some groups and not in others: the running mean within 3 of the batch's
    standard deviations of its mean, every other running statistic (a spread) the batch's sqrt(var + eps) times
    10**uniform(-0.8, 0.8)."""
    if not layer_spec.reads_running:
        return tuple(layer_spec.scalar_defaults.items())
    mean = np.mean(grouped, axis=layout.axes, keepdims=True)
    spread = np.sqrt(np.mean((grouped - mean) ** 2, axis=layout.axes, keepdims=True) + eps)
    shape = layout.statistics_shape
    running = []
    for name in layer_spec.running_names:
        if name == "running_mean":
            value = mean + spread * rng.normal(0, 3, spread.shape)
        else:
            value = spread * 10.0 ** rng.uniform(-0.8, 0.8, spread.shape)
        running.append((name, np.asarray(value.reshape(shape), dtype=dtype)))
    return (*running, *layer_spec.scalar_defaults.items())
