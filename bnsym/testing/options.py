"""What a check covers beyond the training forward and backward: eval mode, running statistics, second order.

- ``mode``: ``"train"`` (default) checks the training forward and backward; ``"eval"`` checks the eval-mode
  methods (``eval_forward``, ``eval_backward``, and with ``order=2`` ``eval_double_backward``).
- ``convention``: a preset of :mod:`bnsym.conventions` (torch, keras, flax, cumulative, chainer, haiku)
  adds the running-statistics properties, which call ``train_forward`` and ``eval_forward``, and expect that
  convention. None (default) leaves them out.
- ``order``: 2 adds the double-backward properties of the mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnsym.conventions import CONVENTIONS

__all__ = ["MODES", "CheckOptions"]

MODES = ("train", "eval")


@dataclass(frozen=True)
class CheckOptions:
    """The options of one check (module docstring); invalid values raise ValueError at once."""

    mode: str = "train"
    convention: str | None = None
    order: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.convention is not None and self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {tuple(CONVENTIONS)} or None, got {self.convention!r}")
        if isinstance(self.order, bool) or self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order!r}")

    def describe(self) -> str:
        parts = [f"{self.mode} mode"]
        if self.convention:
            parts.append(f"{self.convention} running statistics")
        if self.order == 2:
            parts.append("order 2")
        return ", ".join(parts)
