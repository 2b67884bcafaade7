"""How a property says that it does not hold, and what the runner watches while an example runs.

- :class:`PropertyFailure`: a property does not hold on an example; ``worst`` locates the worst element,
  ``note`` adds a diagnosis ("these running statistics follow the chainer convention").
- :class:`ProtocolError`: the implementation broke the protocol (a tuple where one array belongs, a tensor that
  requires grad, the wrong layout): a failure whose ``cause`` is the mistake, so that the report names it once.
- :func:`observing`: the runner's record of one example: the worst |error| / tolerance of its comparisons, and
  whether the forward returned non-finite values (a cause that many properties share).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Observation", "PropertyFailure", "ProtocolError", "Worst", "current", "observing"]


def _digits(expected: float, actual: float) -> int:
    """Significant digits that show two different numbers as different (9 unless they agree further)."""
    for digits in range(9, 18):
        if f"{expected:.{digits}g}" != f"{actual:.{digits}g}":
            return digits
    return 17


@dataclass(frozen=True)
class Worst:
    """The element furthest outside its tolerance."""

    what: str
    index: tuple[int, ...]
    expected: float
    actual: float
    tolerance: float
    #: How the two values are named: a reference and a result ("expected", "got") by default; two estimates of one
    #: quantity, neither of them the truth, are named for what they are.
    labels: tuple[str, str] = ("expected", "got")

    def __str__(self) -> str:
        digits = _digits(self.expected, self.actual)
        difference = abs(self.actual - self.expected)
        relative = f", relative {difference / abs(self.expected):.3g}" if self.expected else ""
        first, second = self.labels
        return (f"worst element of {self.what} at index {self.index}: {first} {self.expected:.{digits}g}, {second} "
                f"{self.actual:.{digits}g} (|difference| {difference:.3g}{relative}; tolerance {self.tolerance:.3g})")


class PropertyFailure(AssertionError):
    """A property does not hold on an example; ``worst`` locates the worst element when there is one."""

    cause = ""  # set by subclasses whose failures several properties share

    def __init__(self, message: str, worst: Worst | None = None, note: str = ""):
        super().__init__("; ".join(part for part in (message, worst and str(worst), note) if part))
        self.message, self.worst, self.note = message, worst, note


class ProtocolError(PropertyFailure):
    """The implementation does not follow the protocol: one line saying what it expects and what came back."""

    def __init__(self, message: str):
        super().__init__(message)
        self.cause = f"protocol: {message}"


@dataclass
class Observation:
    worst: float = 0.0
    nonfinite_forward: bool = False
    compared: bool = False  # whether any number was compared (a worst of 0 is then exact agreement, a margin)

    def ratio(self, value: float) -> None:
        self.compared = True
        if value > self.worst or value != value:  # NaN: as bad as it gets
            self.worst = float("inf") if value != value else value


_CURRENT: ContextVar[Observation | None] = ContextVar("bnsym_observation", default=None)


def current() -> Observation | None:
    return _CURRENT.get()


@contextmanager
def observing():
    observation = Observation()
    token = _CURRENT.set(observation)
    try:
        yield observation
    finally:
        _CURRENT.reset(token)
