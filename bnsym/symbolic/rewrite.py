"""From a derived program to a compact closed form in a chosen vocabulary.

A program derived by :mod:`bnsym.symbolic.program` is correct but verbose: it names every adjoint and still
mentions ``x - mean`` and ``var + eps``. :func:`closed_form` turns one of its outputs into a single expression in
the *vocabulary* of the layer (for batch norm: the field ``x_hat``, the saved ``mean`` and ``invstd``, the inputs),
in four steps:

1. inline every name outside the vocabulary;
2. eliminate names in favour of the vocabulary (``x -> mean + x_hat / invstd``, ``var -> invstd^-2 - eps``);
3. distribute products (inside reductions too, never expanding a power) and apply the layer's *facts*,
   identities such as ``sum_i x_hat_i = 0`` that :func:`prove_fact` has first proved from the forward definitions;
4. collect the result over its reductions so that it reads as coefficient times reduction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sympy

from bnsym.symbolic.program import Program
from bnsym.symbolic.reduction import BatchSum, outermost_sums

__all__ = ["Fact", "Vocabulary", "closed_form", "prove_fact"]


@dataclass(frozen=True)
class Fact:
    """An identity ``lhs = rhs`` about the forward pass, used as a rewrite rule once proved."""

    lhs: sympy.Expr
    rhs: sympy.Expr
    description: str


@dataclass(frozen=True)
class Vocabulary:
    """What a closed form may mention, and how to get there.

    * ``forward``: the forward program whose definitions ground every name.
    * ``keep``: the defined names a closed form keeps (for batch norm ``x_hat``, ``mean``, ``invstd``).
    * ``eliminate``: substitutions that remove other names (``x -> mean + x_hat/invstd``), each of which must be
      an identity of the forward program (checked by :func:`prove_fact` in the tests and the derivation).
    * ``facts``: proved identities about reductions.
    """

    forward: Program
    keep: tuple[sympy.Symbol, ...]
    eliminate: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    facts: tuple[Fact, ...]


def _is_zero(expr: sympy.Expr) -> bool:
    # The grounded forms are built from reductions, powers and sums; collecting over the reductions and
    # simplifying is exact, and it is never asked to expand a variance into E[x^2] - E[x]^2.
    difference = sympy.simplify(expr)
    return difference == 0


def prove_fact(forward: Program, lhs: sympy.Expr, rhs: sympy.Expr) -> bool:
    """True when ``lhs = rhs`` holds once every name is replaced by its definition in ``forward``."""
    return _is_zero(forward.inline(lhs) - forward.inline(rhs))


def _apply_facts(expr: sympy.Expr, facts: Sequence[Fact]) -> sympy.Expr:
    rules = {fact.lhs: fact.rhs for fact in facts}
    previous = None
    while previous != expr:
        previous = expr
        expr = expr.xreplace(rules)
    return expr


def _expand_products(expr: sympy.Expr) -> sympy.Expr:
    """Distribute products over sums, inside reductions too, so that every reduction is of a product of fields.

    Powers are never expanded: by this point x has been eliminated in favour of x_hat, and what is distributed are
    products of adjoints and x_hat, never a centred square.
    """
    def distribute(e: sympy.Expr) -> sympy.Expr:
        return sympy.expand(e, deep=True, mul=True, multinomial=False, power_exp=False, power_base=False, log=False)

    expr = expr.replace(lambda e: isinstance(e, BatchSum), lambda e: BatchSum(distribute(e.args[0])))
    return distribute(expr)


def closed_form(program: Program, output: sympy.Symbol, vocabulary: Vocabulary,
                collect_over: Sequence[sympy.Expr] = ()) -> sympy.Expr:
    """``output`` of ``program`` as one expression in ``vocabulary`` (see the module docstring)."""
    expr = program.inline(output, keep=vocabulary.keep)
    expr = expr.xreplace(dict(vocabulary.eliminate))
    expr = _apply_facts(expr, vocabulary.facts)
    expr = _expand_products(expr)
    expr = _apply_facts(expr, vocabulary.facts)
    sums = outermost_sums(expr)
    expr = sympy.collect(expr, list(collect_over) + sums, func=sympy.factor)
    return expr
