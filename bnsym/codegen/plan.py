"""The intermediate form of a generated kernel: a :class:`KernelPlan`, which every printer renders.

A :class:`~bnsym.codegen.kernel.Kernel` says *what* a generated function computes (derived expressions); its plan
says *how*, in three kinds of statement that any backend can render:

* :class:`Assign` ``name = expr``: a per-group value (statistics, coefficients) or a field atom such as
  ``x_minus_mean = x - mean`` that is materialised once;
* :class:`Reduce` ``names = reducer.sums(terms)`` (or ``parameter_sums``): one *stage* of reductions, every sum that
  can be taken at that point, each the sum of a product of arrays. A stage is one pass over memory for a fused
  backend and one round of communication for a sharded reducer;
* :class:`Accumulate`: a field output in coefficient form ``c_1*m_1 + ... + c_0`` evaluated in place, in its own
  buffer or in the buffer of an atom that nothing later reads (``reuse``), then multiplied by ``scale``.

Building a plan (each step keeps the derived value; :mod:`bnsym.codegen.fields` says why each is exact up to rounding
and never introduces cancellation):

1. field-valued steps (``x_hat``) are inlined, so their channel-scalar factors fold into per-group coefficients;
2. every reduction becomes a named total, innermost first, with its argument split into field *atoms*;
   a parameter's gradient (:class:`~bnsym.symbolic.reduction.ParameterSum`) becomes a parameter-shaped total;
3. every field output is brought to coefficient form; a factor common to all coefficients is applied last when
   that turns a term's coefficient into 1;
4. the per-group expressions and the atoms' definitions go through ``sympy.cse`` together (canonical order, so
   output is deterministic). A temporary that CSE takes out of atoms' definitions can vary per element (``tmp0 =
   x - mean`` when the atoms ``x - mean`` and ``d + r*invstd*(x - mean)`` share it): the plan's ``fields`` records
   it, so that no printer takes it for a per-group value;
5. statements are scheduled: every ready assignment, then every ready reduction as one stage, and so on; field
   outputs last. Ties keep the order above, so the plan is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from bnsym.codegen.fields import CoefficientForm, atomise_argument, coefficient_form, common_factor, inline_field_steps
from bnsym.symbolic.naming import COUNT, REDUCER, reduction_name
from bnsym.symbolic.reduction import BatchSum, Field, M, ParameterSum, is_field_expr, is_full_field

__all__ = ["Accumulate", "Assign", "KernelPlan", "Reduce", "plan_kernel"]


@dataclass(frozen=True)
class Assign:
    """``name = expr``; ``expr`` reads only names defined earlier (or parameters)."""

    name: sympy.Symbol
    expr: sympy.Expr


@dataclass(frozen=True)
class Reduce:
    """``names[k] = sum of the product of terms[k]``, over the group (``over="group"``) or over the groups that
    share a parameter (``over="parameter"``). Each term is a tuple of symbols (fields, per-group values)."""

    names: tuple[sympy.Symbol, ...]
    terms: tuple[tuple[sympy.Symbol, ...], ...]
    over: str = "group"


@dataclass(frozen=True)
class Accumulate:
    """A field output ``name = scale * (form)``, evaluated in place.

    Evaluation starts with the term ``start`` (a pair monomial, coefficient of ``form``), which has the full shape;
    ``reuse`` is the atom of that monomial whose buffer the output takes over (nothing reads it afterwards), or
    None when the start term is computed into a new buffer. The other terms are added to it.
    """

    name: sympy.Symbol
    form: CoefficientForm
    scale: sympy.Expr
    start: tuple[sympy.Expr, sympy.Expr]
    reuse: sympy.Symbol | None


@dataclass(frozen=True)
class KernelPlan:
    """One generated function: ``def name(*parameters)``, ``statements`` in order, ``return returns``.

    ``parameters`` are names (strings); the reducer, when the kernel reduces or uses M, is the last one, named
    :data:`bnsym.symbolic.naming.REDUCER`, and ``uses_count`` says whether the body reads ``count`` (M) from it.
    ``docstring`` holds its paragraphs.
    """

    name: str
    parameters: tuple[str, ...]
    statements: tuple[Assign | Reduce | Accumulate, ...]
    returns: tuple[sympy.Symbol, ...]
    docstring: tuple[str, ...]
    uses_count: bool = False  # the body reads M; from ``reducer.count`` when the reducer is a parameter
    # Names of the values that vary per element: field inputs, atoms and the CSE temporaries they share, outputs.
    fields: frozenset = field(default_factory=frozenset)


# ----- naming -----

def _factor_names(monomial: sympy.Expr) -> list[str] | None:
    """``dy*x_hat`` -> ``["dy", "x_hat"]`` for products of plain symbols (squares twice), else None."""
    factors = []
    for factor in sympy.Mul.make_args(monomial):
        if isinstance(factor, sympy.Symbol):
            factors.append(factor.name)
        elif isinstance(factor, sympy.Pow) and isinstance(factor.base, sympy.Symbol) and factor.exp == 2:
            factors.extend([factor.base.name, factor.base.name])
        else:
            return None
    return sorted(factors)


def _fresh(label: str | None, taken: set[str], fallback: str) -> sympy.Symbol:
    index = 0
    while label is None or label in taken:
        label, index = f"{fallback}_{index}", index + 1
    taken.add(label)
    return sympy.Symbol(label, real=True)


def _factors(monomial: sympy.Expr) -> tuple[sympy.Symbol, ...]:
    """The symbols of a product, a power repeated as often as its exponent; ValueError for anything else."""
    factors: list[sympy.Symbol] = []
    for factor in sympy.Mul.make_args(monomial):
        if isinstance(factor, sympy.Symbol):
            factors.append(factor)
        elif isinstance(factor, sympy.Pow) and isinstance(factor.base, sympy.Symbol) and factor.exp.is_Integer \
                and factor.exp > 0:
            factors.extend([factor.base] * int(factor.exp))
        else:
            raise ValueError(f"a reduction of {monomial} is not a sum of a product of named arrays")
    return tuple(sorted(factors, key=sympy.default_sort_key))


# ----- reductions -----

def _innermost_sums(expr: sympy.Expr) -> list[BatchSum]:
    return sorted((s for s in expr.atoms(BatchSum) if not s.args[0].has(BatchSum)), key=sympy.default_sort_key)


@dataclass
class _Reduction:
    """A named total: ``name = sum over ``over`` of prod(factors)``; ``uses`` are the names it reads."""

    name: sympy.Symbol
    factors: tuple[sympy.Symbol, ...]
    over: str

    @property
    def uses(self) -> frozenset:
        return frozenset(self.factors)


def _name_group_sums(exprs: list[sympy.Expr], taken: set[str], atoms: dict):
    """Replace every BatchSum by a named total, innermost first; return (reductions, rewritten exprs).

    Each reduction's argument is split into field atoms first, so that equal reductions written differently
    (``dy*x_hat`` with x_hat inlined, ``dy*(x - mean)``) are computed once.
    """
    reductions: list[_Reduction] = []
    named: dict[sympy.Expr, sympy.Symbol] = {}
    while True:
        pending = sorted({s for e in exprs for s in _innermost_sums(e)}, key=sympy.default_sort_key)
        if not pending:
            return reductions, exprs
        replacements = {}
        for total in pending:
            reduction = BatchSum(atomise_argument(total.args[0], atoms, taken))
            if reduction not in named:
                if not isinstance(reduction, BatchSum):  # linearity split it: name each part
                    raise ValueError(f"the reduction {total} is not of a single product after atomising")
                names = _factor_names(reduction.args[0])
                named[reduction] = _fresh(reduction_name(names) if names else None, taken, "sum")
                reductions.append(_Reduction(named[reduction], _factors(reduction.args[0]), "group"))
            replacements[total] = named[reduction]
        exprs = [e.xreplace(replacements) for e in exprs]


def _name_parameter_sums(exprs: list[sympy.Expr], taken: set[str], atoms: dict, scalars: list):
    """Replace every ParameterSum by a combination of named parameter-shaped totals.

    A term's per-group (channel-scalar) factors are named as one coefficient (added to ``scalars``, to go through
    CSE); its field factors are atomised. Returns (reductions, rewritten exprs).
    """
    reductions: list[_Reduction] = []
    named: dict[tuple, sympy.Symbol] = {}

    def total_of(term: sympy.Expr) -> sympy.Expr:
        number, rest = term.as_coeff_Mul()
        product = atomise_argument(rest, atoms, taken)
        fields = sympy.Mul(*(f for f in sympy.Mul.make_args(product) if is_field_expr(f)))
        per_group = sympy.Mul(*(f for f in sympy.Mul.make_args(product) if not is_field_expr(f)))
        factors = _factors(fields) if fields != 1 else ()
        if per_group != 1:
            if not per_group.is_Symbol:
                symbol = _fresh("coef_" + "_".join(s.name for s in factors), taken, "coef")
                scalars.append((symbol, per_group))
                per_group = symbol
            factors = tuple(sorted(factors + (per_group,), key=sympy.default_sort_key))
        if factors not in named:
            label = "psum_" + "_".join(s.name for s in factors)
            named[factors] = _fresh(label, taken, "psum")
            reductions.append(_Reduction(named[factors], factors, "parameter"))
        return number * named[factors]

    def replace(expr: sympy.Expr) -> sympy.Expr:
        found = sorted(expr.atoms(ParameterSum), key=sympy.default_sort_key)
        return expr.xreplace({p: total_of(p.args[0]) for p in found})

    return reductions, [replace(e) for e in exprs]


# ----- coefficient forms -----

def _coefficients(name: sympy.Symbol, form: CoefficientForm, owned: set, taken: set[str]):
    """Name the non-trivial coefficients of ``form``; returns (named form, scale, coefficient definitions).

    The scale (a factor common to every coefficient) is taken out only when it turns the coefficient of a term
    that cannot start the evaluation in place (not an atom's buffer) into 1 or -1: that term is then added
    without a temporary, at the price of one multiplication at the end.
    """
    coefficients = [c for _, c in form.terms] + ([form.constant] if form.constant != 0 else [])
    scale = common_factor(coefficients) if len(coefficients) > 1 else sympy.S.One
    if not any(abs(c / scale) == 1 for m, c in form.terms if m not in owned):
        scale = sympy.S.One
    definitions = []

    def named(value: sympy.Expr, label: str) -> sympy.Expr:
        if value.is_Symbol or value.is_Number or (-value).is_Symbol:
            return value
        symbol = _fresh(f"{name.name}_{label}", taken, f"{name.name}_{label}")
        definitions.append((symbol, value))
        return symbol

    terms = tuple((m, named(c / scale, "coef_" + "_".join(_factor_names(m) or ["field"]))) for m, c in form.terms)
    constant = named(form.constant / scale, "shift") if form.constant != 0 else sympy.S.Zero
    return CoefficientForm(terms, constant), named(scale, "scale"), definitions


def _buffer_atom(monomial: sympy.Expr, owned: set) -> sympy.Symbol | None:
    """The atom whose buffer an evaluation of ``monomial`` can start in: its one full-size factor, when that is an
    atom of this kernel (``owned``) to the first power and every other factor is parameter-shaped."""
    full = [f for f in sympy.Mul.make_args(monomial) if is_full_field(f)]
    if len(full) == 1 and full[0] in owned:
        return full[0]
    return None


# ----- scheduling -----

@dataclass(frozen=True)
class _Pending:
    name: sympy.Symbol
    uses: frozenset
    kind: str  # "assign", "reduce", "accumulate"
    payload: object = None


def _schedule(pending: list[_Pending]) -> list[list[_Pending]]:
    """Batches in execution order: ready assignments first (in the given order), then every ready reduction as
    one stage, and field outputs only when nothing else is ready."""
    defined = {p.name for p in pending}
    done: set[sympy.Symbol] = set()
    remaining = list(pending)
    batches: list[list[_Pending]] = []

    def ready(p: _Pending) -> bool:
        return (p.uses & defined) <= done

    while remaining:
        for kinds in (("assign",), ("reduce",), ("accumulate",)):
            if kinds == ("assign",):
                # Assignments one at a time: each may make the next ready.
                batch = []
                progress = True
                while progress:
                    progress = False
                    for p in remaining:
                        if p.kind == "assign" and ready(p):
                            batch.append(p)
                            done.add(p.name)
                            remaining.remove(p)
                            progress = True
                            break
                if batch:
                    batches.append(batch)
                    break
            else:
                batch = [p for p in remaining if p.kind in kinds and ready(p)]
                if kinds == ("reduce",):
                    # A stage holds reductions of one kind; group sums first (a sharded run communicates them).
                    over = "group" if any(p.payload.over == "group" for p in batch) else "parameter"
                    batch = [p for p in batch if p.payload.over == over]
                elif batch:
                    batch = batch[:1]
                if batch:
                    batches.append(batch)
                    for p in batch:
                        done.add(p.name)
                        remaining.remove(p)
                    break
        else:
            raise ValueError("the kernel's statements depend on each other in a cycle")
    return batches


def _field_temporaries(replacements) -> set[sympy.Symbol]:
    """The temporaries of ``sympy.cse`` (``replacements``, in order) that vary per element.

    CSE names every common subexpression with a plain symbol, whatever it holds, so ``is_field_expr`` cannot tell
    by the name alone: a temporary varies per element when it reads a field (an input such as ``x``, an atom) or
    such a temporary. A parameter-shaped one (it reads no field but a
    :class:`~bnsym.symbolic.reduction.ParameterField`) counts too, as the parameter-shaped atoms do.
    """
    found: set[sympy.Symbol] = set()
    for symbol, expr in replacements:
        if is_field_expr(expr) or expr.free_symbols & found:
            found.add(symbol)
    return found


def plan_kernel(kernel) -> KernelPlan:
    """The :class:`KernelPlan` of a :class:`~bnsym.codegen.kernel.Kernel` (module docstring)."""
    taken = {s.name for s in kernel.inputs} | {s.name for s, _ in kernel.steps} | {s.name for s, _ in kernel.outputs}
    taken |= {REDUCER, COUNT, "numpy"}
    scalar_steps, outputs = inline_field_steps(kernel.steps, kernel.outputs)
    atoms: dict[sympy.Expr, sympy.Symbol] = {}
    exprs = [e for _, e in scalar_steps] + [e for _, e in outputs]
    reductions, exprs = _name_group_sums(exprs, taken, atoms)
    extra_scalars: list[tuple[sympy.Symbol, sympy.Expr]] = []
    parameter_reductions, exprs = _name_parameter_sums(exprs, taken, atoms, extra_scalars)
    scalar_steps = list(zip((n for n, _ in scalar_steps), exprs[:len(scalar_steps)]))
    outputs = list(zip((n for n, _ in outputs), exprs[len(scalar_steps):]))

    scalars = list(scalar_steps) + extra_scalars  # (name, per-group expression), to go through CSE together
    forms = {}
    coefficient_names: set[sympy.Symbol] = set()
    for name, expr in outputs:
        if is_field_expr(expr):
            form = coefficient_form(expr, atoms, taken)
            form, scale, definitions = _coefficients(name, form, set(atoms.values()), taken)
            coefficient_names |= {n for n, _ in definitions}
            forms[name] = (form, scale)
            scalars += definitions
        else:
            scalars.append((name, expr))
    atom_definitions = [(symbol, expr) for expr, symbol in atoms.items()]

    temporaries = (f"tmp{i}" for i in range(10_000))
    cse_symbols = (sympy.Symbol(name, real=True) for name in temporaries if name not in taken)
    cse_inputs = [e for _, e in atom_definitions] + [e for _, e in scalars]
    replacements, reduced = sympy.cse(cse_inputs, symbols=cse_symbols, order="canonical")
    field_temporaries = _field_temporaries(replacements)
    atom_definitions = list(zip((s for s, _ in atom_definitions), reduced[:len(atom_definitions)]))
    scalars = list(zip((s for s, _ in scalars), reduced[len(atom_definitions):]))
    # A coefficient that CSE reduced to a single name needs no statement of its own.
    aliases = {n: e for n, e in scalars if n in coefficient_names and e.is_Symbol}
    scalars = [(n, e) for n, e in scalars if n not in aliases]
    forms = {name: (CoefficientForm(tuple((m, c.xreplace(aliases)) for m, c in form.terms),
                                    form.constant.xreplace(aliases)), scale.xreplace(aliases))
             for name, (form, scale) in forms.items()}

    pending = [_Pending(n, frozenset(e.free_symbols), "assign", e) for n, e in replacements + atom_definitions]
    pending += [_Pending(r.name, r.uses, "reduce", r) for r in reductions + parameter_reductions]
    pending += [_Pending(n, frozenset(e.free_symbols), "assign", e) for n, e in scalars]
    for name, (form, scale) in forms.items():
        uses = set().union(*(m.free_symbols | c.free_symbols for m, c in form.terms))
        uses |= form.constant.free_symbols | scale.free_symbols
        pending.append(_Pending(name, frozenset(uses), "accumulate", (form, scale)))
    batches = _schedule(pending)

    owned = set(atoms.values())
    statements: list = []
    flat = [p for batch in batches for p in batch]
    position = 0
    for batch in batches:
        position += len(batch)
        if batch[0].kind == "reduce":
            statements.append(Reduce(tuple(p.name for p in batch), tuple(p.payload.factors for p in batch),
                                     batch[0].payload.over))
        elif batch[0].kind == "accumulate":
            (p,) = batch
            form, scale = p.payload
            read_later = set().union(*(q.uses for q in flat[position:]))
            reusable = [t for t in form.terms if _buffer_atom(t[0], owned) not in read_later | {None}]
            # Start with a term whose coefficient is not 1 (it needs a multiplication anyway): the others are added.
            reusable.sort(key=lambda t: abs(t[1]) == 1)
            if reusable:
                start, reuse = reusable[0], _buffer_atom(reusable[0][0], owned)
            else:
                full = [t for t in form.terms if is_full_field(t[0])]
                if not full:
                    raise ValueError(f"the field output {p.name} has no term of the full shape")
                start, reuse = full[0], None
            statements.append(Accumulate(p.name, form, scale, start, reuse))
        else:
            statements += [Assign(p.name, p.payload) for p in batch if p.name != p.payload]

    every = [e for _, e in kernel.steps] + [e for _, e in kernel.outputs]
    reduces = any(e.has(BatchSum) or e.has(ParameterSum) for e in every)
    uses_count = any(e.has(M) for e in every)
    # M reaches a kernel that reduces through its reducer (a sharded run's is the global count); a kernel that
    # only uses M (a running-statistics update) takes it as the parameter `count`.
    extra = (REDUCER,) if reduces else ((COUNT,) if uses_count else ())
    parameters = tuple(s.name for s in kernel.inputs) + extra
    doc = (kernel.summary, kernel.derived_from) + tuple(kernel.notes)
    fields = frozenset(s.name for s in kernel.inputs if isinstance(s, Field)) | {s.name for s in owned}
    fields |= {name.name for name in forms} | {s.name for s in field_temporaries}
    return KernelPlan(kernel.name, parameters, tuple(statements), tuple(s for s, _ in kernel.outputs), doc,
                      uses_count, fields)
