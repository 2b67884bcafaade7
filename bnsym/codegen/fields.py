"""Rewrite a kernel's derived expressions into a form that is cheap to evaluate on large fields.

Notation as in :mod:`bnsym.symbolic.reduction`: a *field* varies from element to element (x, dy), a *channel
scalar* is one value per group (gamma, mean, a reduction). Evaluating a field expression costs a pass over the
whole array per operation; evaluating a channel-scalar expression costs nothing in comparison. So every field
expression is brought to the *coefficient form*

    c_1 * m_1 + ... + c_k * m_k + c_0

where each m_j is a product of field *atoms* and every c_j is a channel scalar, computed once per channel.

An atom is a field symbol or a field expression that is not a product or a power, such as ``x - mean``. The
rewriting only ever

* pulls channel-scalar factors out of products, and
* regroups the terms of the expression's top-level sum,

which are exact up to one rounding per operation. It never distributes a product over a sum, so every difference
that the derivation writes (``x - mean``) stays a difference evaluated as written: a centred value is never
traded for the difference of two large products, which in float32 with a large common offset would cancel
catastrophically (the E[x^2] - E[x]^2 failure).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from bnsym.symbolic.reduction import BatchSum, Field, ParameterField, is_field_expr, is_full_field

__all__ = ["CoefficientForm", "atomise", "atomise_argument", "coefficient_form", "inline_field_steps"]


def inline_field_steps(steps, outputs):
    """Substitute every field-valued step into the later expressions; return (scalar steps, outputs).

    A field step (``x_hat = invstd * (x - mean)``) would cost a full pass and a full-size array; inlined, its
    channel-scalar factors join the coefficients of the expressions that use it (reductions pull them out, by
    :class:`BatchSum`'s own linearity).
    """
    replacements: dict[sympy.Symbol, sympy.Expr] = {}
    kept = []
    for name, expr in steps:
        expr = expr.xreplace(replacements)
        if is_field_expr(expr):
            replacements[name] = expr
        else:
            kept.append((name, expr))
    return kept, [(name, expr.xreplace(replacements)) for name, expr in outputs]


def _atom_name(atom: sympy.Expr, taken: set[str]) -> str:
    """``x - mean`` -> ``x_minus_mean``; anything else -> ``field_<k>``; never a name in ``taken``."""
    name = None
    if isinstance(atom, sympy.Add) and len(atom.args) == 2:
        plus = [a for a in atom.args if isinstance(a, sympy.Symbol)]
        minus = [-a for a in atom.args if isinstance(-a, sympy.Symbol) and not isinstance(a, sympy.Symbol)]
        if len(plus) == 1 and len(minus) == 1:
            name = f"{plus[0].name}_minus_{minus[0].name}"
        elif len(plus) == 2:
            first, second = sorted(plus, key=lambda s: (not isinstance(s, Field), s.name))
            name = f"{first.name}_plus_{second.name}"
    index = 0
    while name is None or name in taken:
        name, index = f"field_{index}", index + 1
    return name


def atomise(expr: sympy.Expr, atoms: dict[sympy.Expr, sympy.Symbol], taken: set[str]) -> sympy.Expr:
    """``expr`` with every field atom that is not a symbol replaced by a new field symbol, recorded in ``atoms``.

    Reductions are channel scalars, left alone (their arguments are atomised when the reductions are named).
    """
    if not is_field_expr(expr) or isinstance(expr, sympy.Symbol):
        return expr
    if isinstance(expr, sympy.Add | sympy.Mul):
        return expr.func(*(atomise(arg, atoms, taken) for arg in expr.args))
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer:
        return sympy.Pow(atomise(expr.base, atoms, taken), expr.exp)
    return _new_atom(expr, atoms, taken)


def _new_atom(expr, atoms, taken) -> Field:
    """The field symbol of the atom ``expr``, created once; a ParameterField when no full-size field is in it."""
    if expr not in atoms:
        name = _atom_name(expr, taken)
        taken.add(name)
        kind = Field if is_full_field(expr) else ParameterField
        atoms[expr] = kind(name, real=True)
    return atoms[expr]


def atomise_argument(expr, atoms, taken):
    """Atomise, but keep a top-level sum as a sum: its terms are regrouped, never its inner differences."""
    if isinstance(expr, sympy.Add):
        return sympy.Add(*(_term_atomise(term, atoms, taken) for term in expr.args))
    return _term_atomise(expr, atoms, taken)


def _term_atomise(term, atoms, taken):
    if isinstance(term, sympy.Mul):
        return sympy.Mul(*(_factor_atomise(f, atoms, taken) for f in term.args))
    return _factor_atomise(term, atoms, taken)


def _factor_atomise(factor, atoms, taken):
    if isinstance(factor, sympy.Pow) and factor.exp.is_Integer and factor.exp > 0:
        return sympy.Pow(_factor_atomise(factor.base, atoms, taken), factor.exp)
    if isinstance(factor, sympy.Add) and is_field_expr(factor):
        # A sum inside a product is an atom as a whole: distributing the product would split a centred value.
        return _new_atom(factor, atoms, taken)
    return atomise(factor, atoms, taken)


@dataclass(frozen=True)
class CoefficientForm:
    """``sum(coefficient * monomial) + constant``: monomials are products of field symbols, in canonical order."""

    terms: tuple[tuple[sympy.Expr, sympy.Expr], ...]
    constant: sympy.Expr


def coefficient_form(expr: sympy.Expr, atoms: dict[sympy.Expr, sympy.Symbol], taken: set[str]) -> CoefficientForm:
    """The coefficient form of the field expression ``expr`` (atoms are recorded in ``atoms``)."""
    expr = atomise_argument(expr, atoms, taken)
    grouped: dict[sympy.Expr, list[sympy.Expr]] = {}
    constant = []
    for term in sympy.Add.make_args(expr):
        scalars = [f for f in sympy.Mul.make_args(term) if not is_field_expr(f)]
        fields = [f for f in sympy.Mul.make_args(term) if is_field_expr(f)]
        if not fields:
            constant.append(term)
            continue
        if any(f.has(BatchSum) for f in fields):
            raise ValueError(f"a field factor of {term} still holds a reduction; name reductions first")
        grouped.setdefault(sympy.Mul(*fields), []).append(sympy.Mul(*scalars))
    terms = tuple((monomial, sympy.Add(*grouped[monomial]))
                  for monomial in sorted(grouped, key=sympy.default_sort_key))
    return CoefficientForm(terms, sympy.Add(*constant))


def common_factor(coefficients: list[sympy.Expr]) -> sympy.Expr:
    """The product of the symbolic factors (with their smallest positive power) that every coefficient has."""
    powers = None
    for coefficient in coefficients:
        _, rest = coefficient.as_coeff_Mul()
        mine = {base: exp for base, exp in rest.as_powers_dict().items() if exp.is_Integer and exp > 0}
        powers = mine if powers is None else {b: min(e, mine[b]) for b, e in powers.items() if b in mine}
    if not powers:
        return sympy.S.One
    return sympy.Mul(*(base**exp for base, exp in sorted(powers.items(), key=lambda i: sympy.default_sort_key(i[0]))))
