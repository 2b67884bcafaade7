"""The sharded mode of the check (``bnsym check TARGET --shards K``, ``check_normalization(..., shards=K)``): a
data-parallel layer, given the batch split into K shards, must return what one process returns for the whole batch.

Sharding is a mode of the one checker, not a checker of its own: the options carry ``shards``
(:class:`bnsym.testing.options.CheckOptions`), the runner, the report, the counterexample files, ``--json``,
``--plot`` and ``--isolate`` are the same as in every run, and the sharded properties
(:mod:`bnsym.testing.sharded_properties`) are properties of the one registry. This module holds what the mode
adds: the sharded protocol, the implementation that follows it, and the sharded examples.

Which layers. Sharding applies to a layer whose groups span samples (``not spec.grouping.per_sample``: batch norm's
channel is one group over the whole batch); a layer whose groups lie within one sample normalises a shard exactly
as it would the whole batch, so there is nothing to synchronise and ``--shards`` is a usage error there.

The sharded protocol (:func:`signatures`; ``P`` are the layer's parameters, ``spec.parameters``: gamma, beta). An
implementation is an object with

- ``sharded_forward(xs, *P, eps) -> ys``: ``xs`` is a list of K arrays, worker k's shard (N_k, C, ...), split along
  the batch axis; ``ys`` the K outputs. Training mode, statistics over all the shards together;
- ``sharded_backward(dys, xs, *P, eps) -> (dxs, dgammas, dbetas)``: per shard dx, and each worker's own parameter
  gradients, the data-parallel convention (PyTorch's): the wrapper that synchronises parameter gradients sums
  them, so they must sum to the whole batch's;
- optionally, for a layer with running statistics, ``sharded_train_forward(xs, *P, eps, running_mean, running_var,
  momentum, num_batches_tracked) -> (ys, running_means, running_vars)``: a training step from the given running
  statistics, returning every worker's outputs and running statistics afterwards (checked with ``--convention``);
- optionally ``equal_shards = True`` when it takes shards of equal size only (then it gets equal shards), and
  ``unavailable``, a reason why it cannot run here (then its properties are skipped with that reason);
- optionally ``close()``, called when the check is done with it (the built-in adapters stop their workers).

Every method leaves its arguments unchanged, the shards and the running statistics included (it returns new
arrays; a worker's running statistics are its own, not the caller's). NumPy in and out, channel axis 1. Shards may
hold one sample, or none (an empty array of shape (0, C, ...)).

The sharded examples (:func:`sharded_examples`) draw the layer's regimes and one of their own, "shards with
different means" (every shard moved by its own offset, so that the shard means differ), and split every batch
unevenly: shards of one sample and empty shards come up, and shrink like everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from bnsym.spec import SPECS, spec
from bnsym.testing import strategies as bst
from bnsym.testing.implementation import TargetError
from bnsym.testing.protocols import DEFAULT_LAYER
from bnsym.testing.strategies import Example

__all__ = ["DIFFERENT_MEANS", "METHODS", "ShardedExample", "ShardedImplementation", "not_shardable_reason",
           "shardable", "sharded_examples", "sharded_regimes", "signatures"]

#: The regime only the sharded mode draws: every shard gets its own offset, so the shard means differ.
DIFFERENT_MEANS = "shards with different means"
#: The methods of the sharded protocol, every layer's (a layer without running statistics has no train forward).
METHODS = ("sharded_forward", "sharded_backward", "sharded_train_forward")


def shardable(layer: str) -> bool:
    """Whether ``layer``'s groups span samples, so that a batch split between workers must be synchronised (the
    layer's grouping says it: ``not per_sample``)."""
    return not spec(layer).grouping.per_sample


def not_shardable_reason(layer: str) -> str:
    """Why ``--shards`` has nothing to check on ``layer`` (one whose groups lie within one sample)."""
    spanning = ", ".join(name for name in SPECS if shardable(name))
    return (f"{spec(layer).short} has no sharded check: each of its groups lies within one sample, so a batch split "
            "between workers is normalised as it is whole and there is nothing to synchronise (--shards checks "
            f"layers whose groups span samples: {spanning})")


def signatures(layer: str) -> dict[str, tuple[str, ...]]:
    """Each method of ``layer``'s sharded protocol and its positional arguments (module docstring)."""
    layer_spec = spec(layer)
    parameters = layer_spec.parameters
    methods = {"sharded_forward": ("xs", *parameters, "eps"), "sharded_backward": ("dys", "xs", *parameters, "eps")}
    if layer_spec.running_statistics:
        methods["sharded_train_forward"] = ("xs", *parameters, "eps", "running_mean", "running_var", "momentum",
                                            "num_batches_tracked")
    return methods


def sharded_regimes(layer: str) -> tuple[str, ...]:
    """The regimes of a sharded run of ``layer``: the layer's own, and shards with different means."""
    return (*spec(layer).regimes, DIFFERENT_MEANS)


# ----- examples -----

@dataclass(frozen=True, eq=False)
class ShardedExample(Example):
    """An :class:`~bnsym.testing.strategies.Example` of the whole batch and the sizes of its K shards along the batch
    axis (``sizes``, summing to N). Everything that takes an example takes it: the runner, the report, the
    counterexample files (which keep the split)."""

    sizes: tuple[int, ...] = ()

    def split(self, array: np.ndarray) -> list[np.ndarray]:
        """``array`` (N, ...) as the K shards, copies in its dtype."""
        return [np.array(part) for part in np.split(np.asarray(array), np.cumsum(self.sizes)[:-1])]

    def locate(self, index: tuple[int, ...]) -> str:
        """Where element ``index`` of the whole batch lives: "shard k at its index (i, ...)"."""
        row = index[0]
        for k, start in enumerate(np.cumsum((0,) + self.sizes[:-1])):
            if start <= row < start + self.sizes[k]:
                return f"shard {k} at its index {(row - int(start),) + tuple(index[1:])}"
        return f"index {index}"

    def describe(self) -> str:
        return f"{super().describe()}, split into {len(self.sizes)} shards of {list(self.sizes)} samples"

    def replace(self, **changes) -> ShardedExample:
        return ShardedExample.of(super().replace(**changes), self.sizes)

    @classmethod
    def of(cls, example: Example, sizes) -> ShardedExample:
        """``example`` split into shards of ``sizes``."""
        sizes = tuple(int(s) for s in sizes)
        if sum(sizes) != example.x.shape[0] or min(sizes, default=-1) < 0:
            raise ValueError(f"shard sizes {list(sizes)} must be non-negative and add up to the batch of x, "
                             f"{example.x.shape[0]} (x of shape {example.x.shape})")
        fields = {name: getattr(example, name) for name in ("x", "gamma", "beta", "eps", "dy", "regime", "seed",
                                                            "layer", "num_groups", "fields", "constants")}
        return cls(**fields, sizes=sizes)


def _shard_sizes(draw, batch: int, shards: int) -> tuple[int, ...]:
    """``batch`` samples over ``shards`` workers: cut points anywhere, so shards of 0 and 1 samples come up."""
    cuts = sorted(draw(st.lists(st.integers(0, batch), min_size=shards - 1, max_size=shards - 1)))
    bounds = [0, *cuts, batch]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def sharded_examples(*, layer: str = DEFAULT_LAYER, dtype="float64", shards: int, equal_shards: bool = False,
                     max_per_shard: int = 4, regimes=None, min_eps: float = bst.MIN_EPS,
                     max_eps: float = bst.MAX_EPS) -> st.SearchStrategy[ShardedExample]:
    """:class:`ShardedExample` problems: a batch of the layer's regimes (and "shards with different means"), split
    into ``shards`` shards.

    - ``layer`` (default batch norm): a layer whose groups span samples (:func:`shardable`).
    - ``regimes`` (default None: every regime of :func:`sharded_regimes`): the regimes to draw from.
    - ``dtype`` (default "float64"): the dtype of the arrays.
    - ``shards``: K, the number of shards, at least 1.
    - ``equal_shards`` (default False): every shard the same size (1 to ``max_per_shard`` samples); otherwise
      the sizes are uneven, and may be 0 or 1.
    - ``max_per_shard`` (default 4): with equal shards the largest shard; otherwise the batch has up to
      ``shards * max_per_shard`` samples.
    - ``min_eps``, ``max_eps`` (default 1e-12 and 0.1): the range of eps, as the unsharded examples'.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    if not shardable(layer):
        raise ValueError(not_shardable_reason(layer))
    resolved = np.dtype(dtype)
    known = sharded_regimes(layer)
    names = known if regimes is None else tuple(regimes)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"regimes={regimes!r} must name regimes of the sharded check: {known}")
    eps_strategy = bst.epsilons(min_eps=min_eps, max_eps=max_eps)

    @st.composite
    def examples(draw):
        regime = draw(st.sampled_from(names))
        if equal_shards:
            sizes = (draw(st.integers(1, max_per_shard)),) * shards
        else:
            batch = draw(st.integers(1, shards * max_per_shard))
            sizes = _shard_sizes(draw, batch, shards)
        batch = sum(sizes)
        channels = draw(st.integers(2 if regime == "constant channel" else 1, 3))
        spatial_dims = draw(st.integers(0, 2))
        # "tiny batch": no spatial extent, so that M is the (small) number of samples.
        spatial = tuple(1 if regime == "tiny batch" else draw(st.integers(1, 4)) for _ in range(spatial_dims))
        if batch * int(np.prod(spatial)) < 2:  # training needs two values per channel in all
            spatial = (2,) + spatial[1:] if spatial else (2,)
        eps = draw(eps_strategy)
        seed = draw(st.integers(0, 2**32 - 1))
        base = "well-conditioned" if regime == DIFFERENT_MEANS else regime
        example = bst.make_example((batch, channels, *spatial), base, eps, seed, resolved)
        if regime == DIFFERENT_MEANS:
            example = _offset_shards(example, sizes)
        return ShardedExample.of(example.replace(regime=regime), sizes)

    return examples()


def _offset_shards(example: Example, sizes) -> Example:
    """Each shard's values moved by its own offset (up to 100 times the spread), in float64 then rounded."""
    rng = example.rng(40)
    offsets = np.repeat(rng.choice([-1.0, 1.0], len(sizes)) * 10.0 ** rng.uniform(-1, 2, len(sizes)), sizes)
    x = example.x.astype(np.float64) + offsets.reshape((-1,) + (1,) * (example.x.ndim - 1))
    return example.replace(x=x.astype(example.dtype))


# ----- the implementation -----

class ShardedImplementation:
    """A data-parallel layer under test (module docstring): the protocol's methods (None when not offered), which
    ones it offers (``capabilities``, as :class:`bnsym.testing.implementation.Implementation` has), and whether it
    takes equal shards only or cannot run here."""

    def __init__(self, name: str, sharded_forward: Callable, sharded_backward: Callable | None = None,
                 sharded_train_forward: Callable | None = None, *, equal_shards: bool = False,
                 unavailable: Callable[[], str | None] | str | None = None, close: Callable | None = None,
                 layer: str = DEFAULT_LAYER):
        if not callable(sharded_forward):
            raise TargetError(f"{name}: sharded_forward must be callable, got {sharded_forward!r}")
        self.name = name
        self.layer = layer
        self.sharded_forward, self.sharded_backward = sharded_forward, sharded_backward
        self.sharded_train_forward = sharded_train_forward if "sharded_train_forward" in signatures(layer) else None
        self.equal_shards = bool(equal_shards)
        self._unavailable = unavailable
        self._close = close

    @property
    def unavailable(self) -> str | None:
        reason = self._unavailable
        return reason() if callable(reason) else reason

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(m for m in METHODS if getattr(self, m) is not None)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    @classmethod
    def wrap(cls, impl, name: str | None = None, layer: str = DEFAULT_LAYER) -> ShardedImplementation:
        """An implementation from an object with ``sharded_forward`` (and the other methods of the protocol), or a
        class of such objects that needs no constructor arguments."""
        if isinstance(impl, ShardedImplementation):
            return impl
        if isinstance(impl, type):
            try:
                impl = impl()
            except Exception as error:
                raise TargetError(f"{impl.__name__} is a class; bnsym instantiates it with no arguments, which "
                                  f"failed: {type(error).__name__}: {error}") from None
        label = name or getattr(impl, "name", None) or type(impl).__name__
        forward = getattr(impl, "sharded_forward", None)
        if forward is None:
            raise TargetError(f"{label} has no sharded_forward(xs, gamma, beta, eps): --shards checks the sharded "
                              "protocol (see `bnsym check --help` and bnsym.testing.sharded)")
        owner = type(impl)
        unavailable = (lambda: impl.unavailable) if isinstance(getattr(owner, "unavailable", None), property) \
            else getattr(impl, "unavailable", None)
        return cls(label, forward, getattr(impl, "sharded_backward", None),
                   getattr(impl, "sharded_train_forward", None), equal_shards=getattr(impl, "equal_shards", False),
                   unavailable=unavailable, close=getattr(impl, "close", None), layer=layer)
