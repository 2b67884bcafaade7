"""What a check covers: the layer, and beyond the training forward and backward: eval mode, running statistics,
second order.

- ``layer``: which layer's protocol and properties (:mod:`bnsym.testing.protocols`): a layer of
  :data:`bnsym.spec.SPECS`, batch norm by default. Only a layer with running statistics (``spec.running_statistics``:
  batch norm) has an eval mode and running-statistics properties.

- ``mode``: ``"train"`` (default) checks the training forward and backward; ``"eval"`` checks the eval-mode
  methods (``eval_forward``, ``eval_backward``, and with ``order=2`` ``eval_double_backward``).
- ``convention``: a preset of :mod:`bnsym.conventions` (torch, keras, flax, cumulative, chainer, haiku)
  adds the running-statistics properties, which call ``train_forward`` and ``eval_forward``, and expect that
  convention. None (default) leaves them out.
- ``order``: 2 adds the double-backward properties of the mode.
- ``shards``: K, the sharded mode (:mod:`bnsym.testing.sharded`): the implementation follows the sharded protocol
  and gets each batch split into K shards; the sharded properties run. None (default) is the unsharded check. Only
  for a layer whose groups span samples, in train mode, first order.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from bnsym.conventions import CONVENTIONS
from bnsym.spec import spec
from bnsym.testing.protocols import DEFAULT_LAYER, layer_names, protocol
from bnsym.testing.sharded import not_shardable_reason, shardable, signatures

__all__ = ["MODES", "CheckOptions"]

MODES = ("train", "eval")


@dataclass(frozen=True)
class CheckOptions:
    """The options of one check (module docstring); invalid values raise ValueError at once."""

    mode: str = "train"
    convention: str | None = None
    order: int = 1
    layer: str = DEFAULT_LAYER
    shards: int | None = None

    def __post_init__(self):
        if self.layer not in layer_names():
            raise ValueError(f"layer must be one of {layer_names()}, got {self.layer!r}")
        if not spec(self.layer).running_statistics and (self.mode != "train" or self.convention is not None):
            with_running = [name for name in layer_names() if spec(name).running_statistics]
            raise ValueError(f"{protocol(self.layer).title} has no eval mode and no running statistics: mode "
                             f"{self.mode!r} and convention {self.convention!r} are for the layers that keep "
                             f"running statistics ({', '.join(with_running)})")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.convention is not None and self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {tuple(CONVENTIONS)} or None, got {self.convention!r}")
        if isinstance(self.order, bool) or self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order!r}")
        if self.order == 2 and "double_backward" not in protocol(self.layer).signatures:
            raise ValueError(f"order 2: the checker's protocol of {protocol(self.layer).title} has no double "
                             "backward")
        if self.shards is not None:
            self._check_shards()

    def _check_shards(self) -> None:
        """What a sharded run cannot do: ValueError saying why."""
        if isinstance(self.shards, bool) or not isinstance(self.shards, numbers.Integral) or self.shards < 1:
            raise ValueError(f"shards must be a positive integer (the number of workers) or None, got "
                             f"{self.shards!r}")
        if not shardable(self.layer):
            raise ValueError(not_shardable_reason(self.layer))
        if self.mode != "train":
            raise ValueError(f"shards: {self.mode} mode normalises with the running statistics, which every worker "
                             "holds whole, so a sharded batch has nothing to synchronise; the sharded check is of "
                             "the training step (mode 'train')")
        if self.order != 1:
            raise ValueError("shards: the sharded protocol has no double backward (order 2 is the unsharded "
                             "check's)")

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods of the protocol a run with these options calls: the layer's
        (:mod:`bnsym.testing.protocols`), or with ``shards`` the sharded protocol's (:mod:`bnsym.testing.sharded`).
        A property belongs to the run when these include every method it needs."""
        if self.shards is not None:
            return tuple(signatures(self.layer))
        return tuple(protocol(self.layer).signatures)

    def describe(self) -> str:
        parts = [] if self.layer == DEFAULT_LAYER else [protocol(self.layer).title]
        parts.append(f"{self.mode} mode")
        if self.convention:
            parts.append(f"{self.convention} running statistics")
        if self.order == 2:
            parts.append("order 2")
        if self.shards is not None:
            parts.append(f"{self.shards} shard{'s' if self.shards != 1 else ''}")
        return ", ".join(parts)


#: The input dtypes a check can draw.
DTYPES = ("float16", "float32", "float64")


def run_arguments(dtype, max_examples, seed) -> tuple[np.dtype, int, int]:
    """``(dtype, max_examples, seed)`` of a check from Python, validated: ValueError naming the bad one."""
    try:
        resolved = None if dtype is None else np.dtype(dtype)  # np.dtype(None) would quietly be float64
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, numbers.Integral) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer, got {max_examples!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return resolved, int(max_examples), int(seed)
