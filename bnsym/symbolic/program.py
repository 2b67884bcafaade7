"""Straight-line programs over fields and channel scalars, and their derivatives.

A :class:`Program` is an ordered list of definitions ``name = expr``; each ``expr`` uses the program's inputs and
the names defined before it. Derivatives of a program are new programs, built by two rules and SymPy:

* the local partial derivative of one definition with respect to one of its arguments is ``sympy.diff`` of that
  definition, with every reduction in it held fixed (replaced by a stand-in symbol while differentiating);
* the calculus of the reduction ``S(g) = sum_i g_i`` (:class:`~bnsym.symbolic.reduction.BatchSum`):

  - forward mode: the tangent of ``S(g)`` is ``S(tangent of g)``;
  - reverse mode: a channel scalar that feeds a field receives the *sum* of that field's adjoint (broadcast in the
    forward pass becomes reduction in the backward pass), and a field inside ``S(g)`` receives the adjoint of the
    reduction, broadcast back over the elements.

Nothing else is written by hand: no derivative formula of batch norm (or of any other layer) appears anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sympy

from bnsym.symbolic.reduction import BatchSum, Field, M, is_field_expr, outermost_sums

__all__ = ["Definition", "Program", "field_like", "partial", "jvp_expr", "vjp_expr"]


@dataclass(frozen=True)
class Definition:
    """``name = expr``, one step of a :class:`Program`."""

    name: sympy.Symbol
    expr: sympy.Expr


def field_like(template: sympy.Symbol, name: str) -> sympy.Symbol:
    """A new symbol named ``name`` that is a field when ``template`` is one and a channel scalar otherwise."""
    if isinstance(template, Field):
        return Field(name, real=True)
    return sympy.Symbol(name, real=True)


def partial(expr: sympy.Expr, wrt: sympy.Symbol) -> sympy.Expr:
    """d expr / d wrt with every outermost reduction in ``expr`` held fixed."""
    sums = outermost_sums(expr)
    if not sums:
        return sympy.diff(expr, wrt)
    stand_ins = sympy.symbols(f"_S0:{len(sums)}", cls=sympy.Dummy)
    frozen = expr.xreplace(dict(zip(sums, stand_ins)))
    return sympy.diff(frozen, wrt).xreplace(dict(zip(stand_ins, sums)))


def _partial_by_sum(expr: sympy.Expr, total: BatchSum) -> sympy.Expr:
    """d expr / d S with S one of the outermost reductions of ``expr`` and the others held fixed."""
    sums = outermost_sums(expr)
    stand_ins = sympy.symbols(f"_S0:{len(sums)}", cls=sympy.Dummy)
    frozen = expr.xreplace(dict(zip(sums, stand_ins)))
    position = sums.index(total)
    return sympy.diff(frozen, stand_ins[position]).xreplace(dict(zip(stand_ins, sums)))


def jvp_expr(expr: sympy.Expr, tangents: Mapping[sympy.Symbol, sympy.Expr]) -> sympy.Expr:
    """The directional derivative of ``expr`` when each symbol ``u`` moves along ``tangents[u]``."""
    result = sympy.S.Zero
    for symbol, tangent in tangents.items():
        if tangent != 0 and expr.has(symbol):
            result += partial(expr, symbol) * tangent
    for total in outermost_sums(expr):
        inner = jvp_expr(total.args[0], tangents)
        if inner != 0:
            result += _partial_by_sum(expr, total) * BatchSum(inner)
    return result


def vjp_expr(expr: sympy.Expr, cotangent: sympy.Expr, wrt: sympy.Symbol) -> sympy.Expr:
    """The contribution that ``expr``, with adjoint ``cotangent``, sends back to the adjoint of ``wrt``.

    ``cotangent`` has the kind of ``expr``: a field when ``expr`` is one, a channel scalar otherwise. The
    contribution has the kind of ``wrt``; where a field's adjoint flows to a channel scalar it is summed.
    """
    result = sympy.S.Zero
    if expr.has(wrt):
        direct = cotangent * partial(expr, wrt)
        if direct != 0:
            if isinstance(wrt, Field) or not is_field_expr(direct):
                result += direct
            else:
                result += BatchSum(direct)
    for total in outermost_sums(expr):
        if not total.has(wrt):
            continue
        adjoint_of_sum = cotangent * _partial_by_sum(expr, total)
        if is_field_expr(adjoint_of_sum):
            adjoint_of_sum = BatchSum(adjoint_of_sum)
        # Inside the reduction every element sees the same adjoint: broadcast it.
        result += vjp_expr(total.args[0], adjoint_of_sum, wrt)
    return result


class Program:
    """An ordered list of definitions over ``inputs``; ``outputs`` names what the program computes.

    Names are SymPy symbols: :class:`~bnsym.symbolic.reduction.Field` for per-element values, plain symbols for
    channel scalars. Each definition may use the inputs and any earlier name.
    """

    def __init__(self, inputs: Sequence[sympy.Symbol], definitions: Sequence[Definition],
                 outputs: Sequence[sympy.Symbol]):
        self.inputs = tuple(inputs)
        self.definitions = tuple(definitions)
        self.outputs = tuple(outputs)
        known = set(self.inputs)
        for definition in self.definitions:
            unknown = definition.expr.free_symbols - known - {M}
            if unknown:
                names = ", ".join(sorted(str(s) for s in unknown))
                raise ValueError(f"definition of {definition.name} uses {names} before it is defined")
            if is_field_expr(definition.expr) and not isinstance(definition.name, Field):
                raise ValueError(f"{definition.name} is a channel scalar but its definition varies per element")
            known.add(definition.name)
        missing = [o for o in self.outputs if o not in known]
        if missing:
            raise ValueError(f"outputs {missing} are neither inputs nor defined")

    # -- views -----------------------------------------------------------------------------------------------

    def __getitem__(self, name: sympy.Symbol) -> sympy.Expr:
        for definition in self.definitions:
            if definition.name == name:
                return definition.expr
        raise KeyError(name)

    def inline(self, expr: sympy.Expr, keep: Sequence[sympy.Symbol] = ()) -> sympy.Expr:
        """``expr`` with every defined name replaced by its definition, except the names in ``keep``."""
        keep = set(keep)
        for definition in reversed(self.definitions):
            if definition.name not in keep and expr.has(definition.name):
                expr = expr.xreplace({definition.name: definition.expr})
        return expr

    def freeze(self, names: Mapping[sympy.Symbol, sympy.Expr]) -> Program:
        """The same program with each defined name in ``names`` replaced by its value there: a new input (a
        symbol that is not an input yet) or an expression of the inputs.

        This is how inference mode comes from the training forward pass: the batch statistics stop being computed
        from x and become given (running) statistics.
        """
        replaced = {name: sympy.sympify(value) for name, value in names.items()}
        definitions = [Definition(d.name, d.expr.xreplace(replaced))
                       for d in self.definitions if d.name not in replaced]
        inputs = list(self.inputs)
        for d in self.definitions:
            value = replaced.get(d.name)
            if isinstance(value, sympy.Symbol) and value not in inputs:
                inputs.append(value)
        outputs = [replaced.get(o, o) for o in self.outputs]
        return Program(inputs, definitions, outputs).prune()

    def prune(self) -> Program:
        """Drop definitions and inputs that no output depends on (inputs keep their order)."""
        needed = set(self.outputs)
        kept = []
        for definition in reversed(self.definitions):
            if definition.name in needed:
                kept.append(definition)
                needed |= definition.expr.free_symbols
        inputs = [s for s in self.inputs if s in needed]
        return Program(inputs, list(reversed(kept)), self.outputs)

    # -- derivatives -----------------------------------------------------------------------------------------

    def jvp(self, tangent_of: Mapping[sympy.Symbol, sympy.Symbol], name=lambda s: f"t_{s}") -> Program:
        """Forward mode: a program computing this one's definitions and the tangent of each.

        ``tangent_of`` maps an input to the symbol of its tangent (the new program's extra inputs). The tangent of
        each defined name ``v`` is named ``name(v)``; the outputs are the original outputs followed by theirs.
        """
        tangents: dict[sympy.Symbol, sympy.Expr] = dict(tangent_of)
        definitions = list(self.definitions)
        for definition in self.definitions:
            tangent = jvp_expr(definition.expr, tangents)
            symbol = field_like(definition.name, name(definition.name))
            definitions.append(Definition(symbol, tangent))
            tangents[definition.name] = symbol
        outputs = list(self.outputs) + [tangents[o] for o in self.outputs]
        return Program(list(self.inputs) + list(tangent_of.values()), definitions, outputs)

    def vjp(self, seeds: Mapping[sympy.Symbol, sympy.Symbol], wrt: Sequence[sympy.Symbol],
            name=lambda s: f"d_{s}") -> Program:
        """Reverse mode: a program computing the adjoint of each name in ``wrt``.

        ``seeds`` maps each output to the symbol of its adjoint (for example y to dy). The scalar being
        differentiated is ``sum over outputs o of <seed_o, o>``. An output may also feed later steps (fused
        residual add + RMS norm returns h = x + residual and normalises it): its adjoint is then its seed plus what
        those steps send back, a definition named ``name(v)``, which must differ from the seed's name. Adjoints of
        intermediate names are definitions named ``name(v)``, so that the derivation can be read step by step; each
        is complete (every consumer has contributed) before it is used. The new program's outputs are the adjoints
        of ``wrt``, in that order.
        """
        adjoint: dict[sympy.Symbol, sympy.Expr] = {o: s for o, s in seeds.items()}
        adjoint_symbol: dict[sympy.Symbol, sympy.Symbol] = dict(seeds)
        contributions: dict[sympy.Symbol, sympy.Expr] = {}

        def receive(target: sympy.Symbol, amount: sympy.Expr) -> None:
            if amount != 0:
                contributions[target] = contributions.get(target, sympy.S.Zero) + amount

        backward: list[Definition] = []
        for definition in reversed(self.definitions):
            v = definition.name
            total = contributions.pop(v, sympy.S.Zero)
            if v in seeds:
                total += seeds[v]
            if total == 0:
                continue
            if v in seeds and total == seeds[v]:
                bar_v = seeds[v]
            else:
                bar_v = field_like(v, name(v))
                if v in seeds and bar_v == seeds[v]:
                    # An output that feeds later steps (fused add + norm's h): its total adjoint is its seed plus
                    # what the later steps send back, so it needs a name of its own.
                    raise ValueError(f"the adjoint of {v} would be named {bar_v}, as its seed is: {v} is also used "
                                     f"by later steps, so give its seed another name")
                backward.append(Definition(bar_v, total))
            adjoint[v] = adjoint_symbol[v] = bar_v
            for u in sorted(definition.expr.free_symbols, key=sympy.default_sort_key):
                receive(u, vjp_expr(definition.expr, bar_v, u))
        outputs = []
        for u in wrt:
            total = contributions.get(u, sympy.S.Zero) + (seeds[u] if u in seeds else 0)
            bar_u = field_like(u, name(u))
            backward.append(Definition(bar_u, total))
            outputs.append(bar_u)
        inputs = list(self.inputs) + [s for s in seeds.values() if s not in self.inputs]
        return Program(inputs, list(self.definitions) + backward, outputs)
