"""Small-M instantiation: the independent cross-check of every generic derivation.

A generic result speaks of "the element i" and of reductions over a symbolic number M of elements. For a fixed
small n, :func:`instantiate` turns it into ordinary SymPy expressions in n separate scalar symbols per field
(``x_0 ... x_{n-1}``), with each reduction written out as an explicit sum. The brute-force side differentiates
those explicit expressions with plain ``sympy.diff`` (the full Jacobian), never using the reduction calculus of
:mod:`bnsym.symbolic.program`; :func:`difference_is_zero` decides, exactly, whether the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy

from bnsym.symbolic.program import Program
from bnsym.symbolic.reduction import BatchSum, Field, M

__all__ = ["Elements", "difference_is_zero", "instantiate", "jacobian_vector_product"]


class Elements:
    """n scalar symbols for each field, created on demand: ``elements[x][i]`` is the symbol ``x_i``."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = n
        self._symbols: dict[Field, tuple[sympy.Symbol, ...]] = {}

    def __getitem__(self, field: Field) -> tuple[sympy.Symbol, ...]:
        if field not in self._symbols:
            self._symbols[field] = tuple(sympy.Symbol(f"{field.name}_{i}", real=True) for i in range(self.n))
        return self._symbols[field]


def instantiate(expr: sympy.Expr, elements: Elements, at: int, forward: Program | None = None) -> sympy.Expr:
    """``expr`` at element ``at`` of a group of ``elements.n`` values, with every reduction written out.

    Names defined by ``forward`` (for example ``mean`` or ``x_hat``) are first replaced by their definitions.
    """
    if forward is not None:
        expr = forward.inline(expr)
    n = elements.n

    def at_element(node: sympy.Expr, i: int) -> sympy.Expr:
        if isinstance(node, Field):
            return elements[node][i]
        if isinstance(node, BatchSum):
            inner = node.args[0]
            return sympy.Add(*(at_element(inner, k) for k in range(n)))
        if node == M:
            return sympy.Integer(n)
        if not node.args:
            return node
        return node.func(*(at_element(arg, i) for arg in node.args))

    return at_element(expr, at)


def _radicals(expr: sympy.Expr) -> list[sympy.Expr]:
    """Bases b of the powers b**(k/2) in ``expr``: each becomes t**2 for a new positive symbol t."""
    bases = {p.base for p in expr.atoms(sympy.Pow) if p.exp.is_Rational and p.exp.q == 2}
    return sorted(bases, key=sympy.default_sort_key)


def difference_is_zero(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Exactly whether ``a - b`` is identically zero.

    The expressions of a normalisation layer are rational functions of the inputs and of square roots
    ``sqrt(var + eps)``. Each such root becomes a new positive symbol t with t**2 = var + eps; the difference is
    brought over one denominator, and its numerator reduced modulo t**2 - (var + eps) must vanish.
    """
    difference = a - b
    radicals = _radicals(difference)
    roots = sympy.symbols(f"_t0:{len(radicals)}", positive=True)
    for base, root in zip(radicals, roots):
        difference = difference.replace(
            lambda e, base=base: isinstance(e, sympy.Pow) and e.base == base and e.exp.is_Rational
            and e.exp.q == 2,
            lambda e, root=root: root ** (2 * e.exp),
        )
    numerator, _ = sympy.fraction(sympy.together(difference))
    numerator = sympy.expand(numerator)
    for base, root in zip(radicals, roots):
        numerator = sympy.rem(numerator, root**2 - base, root)
    return sympy.expand(numerator) == 0


def jacobian_vector_product(outputs: Iterable[sympy.Expr], inputs: Iterable[sympy.Symbol],
                            cotangents: Iterable[sympy.Expr]) -> list[sympy.Expr]:
    """sum_k cotangent_k * d output_k / d input, for each input: a VJP by the full Jacobian."""
    outputs, cotangents = list(outputs), list(cotangents)
    return [sympy.Add(*(c * sympy.diff(o, u) for o, c in zip(outputs, cotangents))) for u in inputs]
