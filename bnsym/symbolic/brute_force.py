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
from bnsym.symbolic.reduction import BatchSum, Field, M, StopGradient

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
    """Bases b of the powers b**(k/2) in ``expr``."""
    bases = {p.base for p in expr.atoms(sympy.Pow) if p.exp.is_Rational and p.exp.q == 2}
    return sorted(bases, key=sympy.default_sort_key)


def _polynomial_is_zero(expr: sympy.Expr) -> bool:
    numerator, _ = sympy.fraction(sympy.together(expr))
    return sympy.expand(numerator) == 0


def _opaque_constants(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with each distinct :class:`~bnsym.symbolic.reduction.StopGradient` value (batch renormalisation's
    r and d, clipped) replaced by a symbol of its own: both sides of a comparison compute such a value by the same
    forward pass, and it enters every derivative only as a factor, never differentiated."""
    constants = sorted(expr.atoms(StopGradient), key=sympy.default_sort_key)
    # The same value may be written two ways ((mean - running_mean) / s or mean / s - running_mean / s): expanded
    # (into the arguments of Min, Max and the radicals too), they are one expression.
    canonical = {c: sympy.expand(c.args[0]) for c in constants}
    names = {value: sympy.Symbol(f"_constant{k}", real=True)
             for k, value in enumerate(sorted(set(canonical.values()), key=sympy.default_sort_key))}
    return expr.xreplace({c: names[canonical[c]] for c in constants})


def difference_is_zero(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Exactly whether ``a - b`` is identically zero.

    The expressions of a normalisation layer are polynomials in the inputs and in s = (var + eps)**(-1/2), with
    integer denominators. Every power of var + eps becomes a power of a new symbol s; the difference, a polynomial
    P(s), splits into its even and odd parts in s. Because s is not a rational function of the inputs, P vanishes
    exactly when both parts vanish once s**2 = 1/(var + eps) is substituted and the denominators are cleared: two
    polynomial identities that ``sympy.expand`` decides. A stop-gradient value is an opaque constant here (the same
    value on both sides is the same symbol), so that the comparison is exact for it too.
    """
    difference = sympy.expand(_opaque_constants(a - b), mul=False, multinomial=False, power_exp=False,
                              power_base=False, log=False)
    radicals = _radicals(difference)
    if not radicals:
        return _polynomial_is_zero(difference)
    if len(radicals) > 1:
        raise NotImplementedError(f"more than one radical in a difference: {radicals}")
    (base,) = radicals
    s = sympy.Dummy("s", positive=True)
    difference = difference.replace(lambda e: isinstance(e, sympy.Pow) and e.base == base,
                                    lambda e: s ** (-2 * e.exp))
    # The only denominators are powers of s and integers: multiplying by the highest power of 1/s clears them, and
    # one expansion gives the numerator's monomials (sympy.together, which finds the common denominator of a large
    # sum term by term, cost about a third of the comparison).
    lowest = min((p.exp for p in difference.atoms(sympy.Pow) if p.base == s), default=0)
    numerator = sympy.expand(difference * s ** max(0, -lowest))
    for term in sympy.Add.make_args(numerator):
        denominator = sympy.fraction(term)[1]
        if denominator.free_symbols:
            raise NotImplementedError(f"a denominator other than a power of var + eps: {denominator}")
    coefficients = sympy.Poly(numerator, s).all_coeffs()[::-1]  # c_0, c_1, ... of s**k
    for parity in (0, 1):
        terms = [(k, c) for k, c in enumerate(coefficients) if k % 2 == parity and c != 0]
        if terms:
            top = max(k // 2 for k, _ in terms)
            if sympy.expand(sympy.Add(*(c * base ** (top - k // 2) for k, c in terms))) != 0:
                return False
    return True


def jacobian_vector_product(outputs: Iterable[sympy.Expr], inputs: Iterable[sympy.Symbol],
                            cotangents: Iterable[sympy.Expr]) -> list[sympy.Expr]:
    """sum_k cotangent_k * d output_k / d input, for each input: a VJP by the full Jacobian."""
    outputs, cotangents = list(outputs), list(cotangents)
    return [sympy.Add(*(c * sympy.diff(o, u) for o, c in zip(outputs, cotangents))) for u in inputs]
