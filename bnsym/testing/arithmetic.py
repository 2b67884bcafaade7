"""Whether a float64 result was computed in float64: told by what the result is, not only by how far off it is.

A float64 result that is far from the float64 reference is either float64 arithmetic with a wrong formula (eps
outside the square root, ``sqrt(max(var, eps))``, eps rounded to float32) or a shorter arithmetic (the input, or
something computed from it, rounded to float32 or float16). The distance cannot tell them apart: a formula bug's
error may happen to be near float32's rounding. Two facts about the values can:

- a float32 (or float16, bfloat16) result cast back to float64 is representable in float32; a float64 result is,
  per nonzero value, with probability about 2^-29;
- a computation that rounds x, or its statistics, to float32 does not notice when x moves by 2^-40 of itself (far
  below float32's resolution of 2^-24, yet 2^12 float64 ulps), while a float64 computation moves wherever the
  float64 reference does. This also finds a kernel that computes the statistics in float32 and applies gamma and
  beta in float64 (Hugging Face's LlamaRMSNorm), whose y is not representable in float32.

:func:`shorter_arithmetic` applies both; the ``float64_arithmetic`` properties of every layer call it only when y
is further from the reference than float64 arithmetic can explain.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["NUDGE", "judge", "nudged", "shorter_arithmetic"]

#: How far x moves, relative to itself, for the second test: 2^16 times below float32's unit roundoff.
NUDGE = 2.0**-40


def nudged(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x moved by between 1/2 and 1 times :data:`NUDGE` of itself, elementwise (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x * (1 + NUDGE * rng.uniform(0.5, 1.0, x.shape))


def shorter_arithmetic(y: np.ndarray, y_nudged: np.ndarray, reference: np.ndarray,
                       reference_nudged: np.ndarray) -> str:
    """Why float64 results ``y`` (at x) and ``y_nudged`` (at :func:`nudged` x) look computed in a shorter type than
    float64, as a clause for a report, or "" when they look computed in float64.

    ``reference`` and ``reference_nudged`` are the float64 reference at the same two inputs: they say which values
    of y a float64 computation moves. Arrays of one shape; NaN counts as neither representable nor unmoved."""
    y, y_nudged = np.asarray(y, np.float64), np.asarray(y_nudged, np.float64)
    if y.shape != np.shape(reference) or y_nudged.shape != y.shape:
        raise ValueError(f"y {y.shape}, y_nudged {y_nudged.shape} and reference {np.shape(reference)} must have "
                         "one shape")
    nonzero = y != 0
    if nonzero.any() and np.all(y[nonzero] == y[nonzero].astype(np.float32)):
        return (f"every nonzero value of y ({int(nonzero.sum())} of {y.size}) is exactly representable in float32, as "
                "a float32 result cast to float64 is (a float64 result almost never is)")
    should_move = np.asarray(reference_nudged, np.float64) != np.asarray(reference, np.float64)
    if should_move.any():
        unmoved = int(np.sum((y_nudged == y) & should_move))
        if unmoved > should_move.sum() / 2:
            return (f"y did not move in {unmoved} of the {int(should_move.sum())} values where the float64 reference "
                    f"moves when x moves by {NUDGE:.2g} of itself, below float32's resolution: x, or what is "
                    "computed from it, is rounded to a shorter type")
    return ""


def judge(y: np.ndarray, forward: Callable[[np.ndarray], np.ndarray], reference: Callable[[np.ndarray], np.ndarray],
          x: np.ndarray, reference_y: np.ndarray, rng: np.random.Generator) -> str:
    """:func:`shorter_arithmetic` for an implementation's ``forward(x) -> y`` and the float64 ``reference(x) -> y``
    at ``x``, where ``y`` and ``reference_y`` are already known (one more call of each, at the nudged x)."""
    moved = nudged(x, rng)
    return shorter_arithmetic(y, forward(moved), reference_y, reference(moved))
