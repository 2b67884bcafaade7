"""Error bounds for any derived closed form, by running error analysis on its magnitudes.

For a closed form E built from sums, products, positive powers and reductions of atoms a_1, ..., a_n (x_hat, dy,
gamma, invstd, ...), the standard bound of floating-point error analysis (Higham, Accuracy and Stability of
Numerical Algorithms, chapter 3) is

    |fl(E) - E| <= k u |E|(|a|)  +  ( |E|(|a| + e) - |E|(|a|) )

where |E| is E evaluated with every sign made positive (:func:`magnitude`: each sum becomes a sum of magnitudes),
u the unit roundoff, k the error growth of the longest reduction, and e_i a bound on the error of atom a_i (for
example the error of x_hat, which carries the error of the batch mean). The first term is the rounding of E's own
operations on exact atoms; the second, first order in e, is how far E can move when its atoms move within their
error bounds, which is monotone because |E| is. This is what the order-2 and eval-mode properties use, so that no
derived result needs a tolerance typed by hand: the bound comes from the same SymPy expression as the reference.
"""

from __future__ import annotations

import functools
from functools import cache

import numpy as np
import sympy

from bnsym.symbolic.reduction import BatchSum, Field, M, StopGradient

__all__ = ["MagnitudeBound", "compiled", "evaluate", "magnitude"]


def _abs_symbol(symbol: sympy.Symbol) -> sympy.Symbol:
    name = f"abs_{symbol.name}"
    return Field(name, nonnegative=True) if isinstance(symbol, Field) else sympy.Symbol(name, nonnegative=True)


def magnitude(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every sign made positive: symbols become their magnitudes, sums sums of magnitudes.

    Negative powers of anything but a constant are refused: making their base larger would make them smaller, and
    the bound would no longer be monotone in the atoms.
    """
    if isinstance(expr, BatchSum):
        return BatchSum(magnitude(expr.args[0]))
    if expr == M:
        return M
    if isinstance(expr, sympy.Symbol):
        return _abs_symbol(expr)
    if expr.is_Number:
        return abs(expr)
    if isinstance(expr, (sympy.Add, sympy.Mul)):
        return expr.func(*(magnitude(a) for a in expr.args))
    if isinstance(expr, sympy.Pow):
        if expr.exp.is_negative and expr.base.free_symbols - {M}:
            raise NotImplementedError(f"magnitude of a negative power of {expr.base}: not monotone")
        return sympy.Pow(magnitude(expr.base), expr.exp)
    raise NotImplementedError(f"magnitude of {type(expr).__name__}: {expr}")


class MagnitudeBound:
    """The bound of the module docstring for one closed form, compiled once to NumPy.

    Atom values are given by name (``"x_hat"``, ``"gamma"``, ...): fields with the example's shape, channel
    quantities with shape (1, C, 1, ...); reductions run over every axis but 1, or over ``axes`` when given (a
    layer's groups: :attr:`bnsym.spec.layout.GroupLayout.axes`, with group quantities of length 1 there).
    """

    def __init__(self, expr: sympy.Expr):
        self.expr = expr
        mag = magnitude(expr)
        self.atoms = tuple(sorted((s for s in expr.free_symbols if s != M), key=lambda s: s.name))
        arguments = [_abs_symbol(s) for s in self.atoms] + [M]
        self._axes: tuple[int, ...] = ()
        namespace = {"BatchSum": lambda a: np.sum(a, axis=self._axes, keepdims=True)}
        self._function = sympy.lambdify(arguments, mag, modules=[namespace, "numpy"])

    def magnitude(self, values: dict[str, np.ndarray], count: int, ndim: int, axes=None) -> np.ndarray:
        """|E| at the magnitudes of ``values``."""
        self._axes = (0,) + tuple(range(2, ndim)) if axes is None else tuple(axes)
        arguments = [np.abs(np.asarray(values[s.name], dtype=np.float64)) for s in self.atoms]
        return np.asarray(self._function(*arguments, count), dtype=np.float64)

    def bound(self, values: dict[str, np.ndarray], errors: dict[str, np.ndarray], *, u: float, k,
              count: int, ndim: int, axes=None) -> np.ndarray:
        """k u |E|(|a|) + |E|(|a| + e) - |E|(|a|); atoms missing from ``errors`` are exact. ``k`` may be an array
        (a growth per group)."""
        nominal = self.magnitude(values, count, ndim, axes)
        moved = {name: np.abs(np.asarray(value, np.float64)) + np.asarray(errors.get(name, 0.0), np.float64)
                 for name, value in values.items()}
        return k * u * nominal + (self.magnitude(moved, count, ndim, axes) - nominal)


@cache
def compiled(expr: sympy.Expr) -> MagnitudeBound:
    """A :class:`MagnitudeBound` per expression, compiled once per process."""
    return MagnitudeBound(expr)


_MINIMUM, _MAXIMUM = sympy.Function("_minimum"), sympy.Function("_maximum")


@cache
def _signed(expr: sympy.Expr):
    atoms = tuple(sorted((s for s in expr.free_symbols if s != M), key=lambda s: s.name))
    axes: list[tuple[int, ...]] = [()]
    # A stop-gradient value is its value; Min and Max are elementwise and broadcast (SymPy's NumPy printer would
    # stack their arguments, which needs equal shapes).
    expr = expr.replace(StopGradient, lambda argument: argument).replace(sympy.Min, _MINIMUM).replace(sympy.Max,
                                                                                                       _MAXIMUM)
    namespace = {"BatchSum": lambda a: np.sum(a, axis=axes[0], keepdims=True),
                 "_minimum": lambda *a: functools.reduce(np.minimum, a),
                 "_maximum": lambda *a: functools.reduce(np.maximum, a)}
    return atoms, axes, sympy.lambdify([*atoms, M], expr, modules=[namespace, "numpy"])


def evaluate(expr: sympy.Expr, values: dict[str, np.ndarray], count: int, axes: tuple[int, ...]) -> np.ndarray:
    """The value of ``expr`` (signs kept) at ``values``, reductions over ``axes``: float64, for the atoms of a
    bound."""
    atoms, where, function = _signed(expr)
    where[0] = tuple(axes)
    return np.asarray(function(*(np.asarray(values[s.name], np.float64) for s in atoms), count), np.float64)
