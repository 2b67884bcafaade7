"""One analysis of a plan for the compiled loops that finish a group (or a sample) at a time: what each name is, and
the steps of the loops over a group in the plan's order (:mod:`bnsym.codegen.numba_local`,
:mod:`bnsym.codegen.numba_interleaved`)."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from bnsym.codegen.numba_text import atoms_used, names_read, plan_symbols
from bnsym.codegen.plan import Accumulate, Assign, KernelPlan, Reduce
from bnsym.symbolic.naming import COUNT, REDUCER
from bnsym.symbolic.reduction import M, ParameterField

__all__ = ["LoopStep", "PlanNames", "form", "loop_steps", "merged_passes", "product", "split_names"]


class PlanNames:
    """What each name of a plan is, for every loop printer: the one analysis of a plan.

    ``fields``: full-size inputs and outputs; ``parameters``: parameter-shaped inputs (:class:`ParameterField`);
    ``atoms``: element-valued assignments (computed in the loop bodies, never stored); ``scalars``: values of M
    alone; ``parameter_values``: parameter sums and what is computed from them (after the loops); everything else
    is a per-group value. ``accumulates``: the field outputs' statements; ``group_results``: the per-group values
    that the kernel returns (its statistics); ``every_field``: every full-size name; ``totals``: the names of the
    group sums.
    """

    def __init__(self, plan: KernelPlan):
        symbols = plan_symbols(plan)
        self.parameters = [p for p in plan.parameters
                           if any(isinstance(s, ParameterField) and s.name == p for s in symbols)]
        self.inputs = [p for p in plan.parameters if p not in (REDUCER, COUNT)]
        self.fields = [n for n in self.inputs if n in plan.fields and n not in self.parameters]
        self.accumulates = [s for s in plan.statements if isinstance(s, Accumulate)]
        self.outputs = [s.name.name for s in self.accumulates]
        element = set(plan.fields) - set(self.outputs)
        self.atoms: dict[str, sympy.Expr] = {}
        self.scalars: list[tuple[str, sympy.Expr]] = []
        self.parameter_values = {n.name for s in plan.statements if isinstance(s, Reduce) and s.over == "parameter"
                                 for n in s.names}
        scalar_names: set[str] = set()
        for s in plan.statements:
            if not isinstance(s, Assign):
                continue
            reads = {f.name for f in s.expr.free_symbols if f != M}
            if reads & element:
                element.add(s.name.name)
                self.atoms[s.name.name] = s.expr
            elif reads & self.parameter_values:
                self.parameter_values.add(s.name.name)
            elif reads <= scalar_names:
                scalar_names.add(s.name.name)
                self.scalars.append((s.name.name, s.expr))
        self.scalar_names = scalar_names
        self.element = element
        self.every_field = set(plan.fields)  # full-size values: inputs, atoms and outputs
        self.totals = {n.name for s in plan.statements if isinstance(s, Reduce) for n in s.names}
        self.group_results = [s.name for s in plan.returns if s.name not in self.fields and s.name not in self.outputs
                              and s.name not in self.parameter_values]

    def read(self, exprs) -> list[str]:
        """The names that loops evaluating ``exprs`` (expressions or names) read, atoms expanded, first seen first;
        ``count`` for M."""
        return names_read(self.atoms, exprs)

    def atoms_used(self, exprs) -> list[str]:
        """The atoms that ``exprs`` read (directly or through other atoms), in definition order."""
        return atoms_used(self.atoms, exprs)


@dataclass(frozen=True)
class LoopStep:
    """One step of the loops over a group (or a sample), in the plan's order (:func:`loop_steps`).

    ``kind``: "group value" (a per-group :class:`Assign`, in ``statement``), "parameter value" (an Assign computed
    from parameter sums, after the loops) or "pass" (one pass over the values: ``stage``, its 1-based number, the
    group sums ``group`` and the parameter sums ``parameter`` that it takes, either may be None).
    """

    kind: str
    statement: Assign | None = None
    stage: int = 0
    group: Reduce | None = None
    parameter: Reduce | None = None


def loop_steps(statements, names: PlanNames):
    """The :class:`LoopStep` of a plan's statements, for the group-local and the sample-wise printers: atoms (computed
    in the loop bodies) and scalars (before the loops) are left out, and each parameter sum rides along the pass
    that :func:`merged_passes` gives it, or gets a pass of its own."""
    statements = list(statements)
    merged = merged_passes(statements, names)
    stage = 0
    for index, statement in enumerate(statements):
        if isinstance(statement, Assign):
            name = statement.name.name
            if name in names.element or name in names.scalar_names:
                continue
            yield LoopStep("parameter value" if name in names.parameter_values else "group value", statement)
        elif isinstance(statement, Reduce) and (statement.over == "group" or index not in merged):
            stage += 1
            if statement.over == "group":
                parameter = next((statements[j] for j, k in merged.items() if k == index), None)
                yield LoopStep("pass", stage=stage, group=statement, parameter=parameter)
            else:
                yield LoopStep("pass", stage=stage, parameter=statement)


def merged_passes(statements, names: PlanNames) -> dict[int, int]:
    """{index of a parameter Reduce: index of the group Reduce whose pass also takes it}: the earliest group
    stage before which everything its terms read is known (layer norm's dgamma and dbeta join the pass that
    sums dy*gamma), so that a group's values are read once fewer. The others get a pass of their own."""
    known = set(names.inputs) | names.scalar_names | {COUNT}
    group_stages: list[tuple[int, set]] = []
    merges: dict[int, int] = {}
    for index, statement in enumerate(statements):
        if isinstance(statement, Reduce) and statement.over == "group":
            group_stages.append((index, set(known)))
            known |= {n.name for n in statement.names}
        elif isinstance(statement, Reduce):
            reads = set(names.read([f.name for term in statement.terms for f in term]))
            earlier = [stage for stage, available in group_stages if reads <= available
                       and stage not in merges.values()]
            if earlier:
                merges[index] = earlier[0]
        elif isinstance(statement, Assign):
            known.add(statement.name.name)
    return merges


def split_names(names: PlanNames, read: list[str]):
    """(fields, parameters, per-group values, scalars) among the names a loop reads."""
    fields = [n for n in read if n in names.fields or n in names.outputs]
    parameters = [n for n in read if n in names.parameters]
    scalars = [n for n in read if n in names.scalar_names or n == COUNT]
    per_group = [n for n in read if n not in fields + parameters + scalars]
    return fields, parameters, per_group, scalars


def product(term) -> sympy.Expr:
    """A term of a sum, a product of factors, built unevaluated so that x_minus_mean*x_minus_mean prints as such,
    not as a power."""
    return sympy.Mul(*term, evaluate=False) if len(term) > 1 else term[0]


def form(statement: Accumulate) -> sympy.Expr:
    """A field output's expression in the NumPy kernel's order: the start term first, then the rest, constant,
    scale."""
    terms = [statement.start] + [t for t in statement.form.terms if t != statement.start]
    total = None
    for monomial, coefficient in terms:
        term = monomial if coefficient == 1 else (sympy.Mul(-1, monomial, evaluate=False) if coefficient == -1
                                                  else sympy.Mul(monomial, coefficient, evaluate=False))
        total = term if total is None else sympy.Add(total, term, evaluate=False)
    if statement.form.constant != 0:
        total = sympy.Add(total, statement.form.constant, evaluate=False)
    if statement.scale != 1:
        total = sympy.Mul(total, statement.scale, evaluate=False)
    return total
