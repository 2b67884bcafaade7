"""A kernel: named inputs, named outputs and their derived expressions, printed as one NumPy function.

Printing a kernel (each step keeps the derived value; see :mod:`bnsym.codegen.fields` for why each is exact up
to rounding and never introduces cancellation):

1. field-valued steps (``x_hat``) are inlined, so their channel-scalar factors fold into per-channel coefficients;
2. every reduction becomes a named statement, innermost first, with its argument split into field *atoms*
   (``x_minus_mean = x - mean``, materialised once) and printed as ``batch_sum``/``batch_dot``
   (:mod:`bnsym._reduce`), which never materialise a product;
3. every field output is brought to the coefficient form ``c_1*m_1 + ... + c_0`` and evaluated in place, in its
   own buffer or in the buffer of an atom that nothing later reads: one full-size array per output, one pass per
   term. A factor common to all coefficients is applied last when that turns a term's coefficient into 1;
4. the channel-scalar expressions (statistics, coefficients, scalar outputs) go through ``sympy.cse`` (canonical
   order, so output is deterministic);
5. the statements are emitted in dependency order, stable with respect to the order above.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import sympy

from bnsym.codegen.fields import CoefficientForm, atomise_argument, coefficient_form, common_factor, inline_field_steps
from bnsym.codegen.printer import KernelPrinter
from bnsym.naming import reduction_name
from bnsym.symbolic.reduction import BatchSum, M, is_field_expr

__all__ = ["Kernel", "render_kernel"]


@dataclass(frozen=True)
class Kernel:
    """One generated function.

    * ``name``: the function's name in the generated module.
    * ``inputs``: its positional parameters, in order; ``axes`` (the reduced axes) is appended when the kernel
      reduces, and ``count`` (M) when it reduces or uses M.
    * ``steps``: named intermediate quantities, computed first, in order (for example ``x_hat``).
    * ``outputs``: the returned names and their expressions, in order.
    * ``summary``: the first line of the function's docstring.
    * ``derived_from``: one line that says how the outputs were derived.
    """

    name: str
    inputs: tuple[sympy.Symbol, ...]
    steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    outputs: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    summary: str
    derived_from: str
    notes: tuple[str, ...] = field(default=())


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


def _innermost_sums(expr: sympy.Expr) -> list[BatchSum]:
    return sorted((s for s in expr.atoms(BatchSum) if not s.args[0].has(BatchSum)), key=sympy.default_sort_key)


def _name_reductions(exprs: list[sympy.Expr], taken: set[str], atoms: dict):
    """Replace every reduction by a named symbol, innermost first; return (statements, rewritten exprs).

    Each reduction's argument is split into field atoms first, so that equal reductions written differently
    (``dy*x_hat`` with x_hat inlined, ``dy*(x - mean)``) are computed once.
    """
    statements: list[tuple[sympy.Symbol, sympy.Expr]] = []
    named: dict[sympy.Expr, sympy.Symbol] = {}
    while True:
        pending = sorted({s for e in exprs for s in _innermost_sums(e)}, key=sympy.default_sort_key)
        if not pending:
            return statements, exprs
        replacements = {}
        for total in pending:
            reduction = BatchSum(atomise_argument(total.args[0], atoms, taken))
            if reduction not in named:
                names = _factor_names(reduction.args[0]) if isinstance(reduction, BatchSum) else None
                label = reduction_name(names) if names else None
                named[reduction] = _fresh(label, taken, "sum")
                statements.append((named[reduction], reduction))
            replacements[total] = named[reduction]
        exprs = [e.xreplace(replacements) for e in exprs]


@dataclass(frozen=True)
class _Statement:
    """One or more lines that define ``name`` and read ``uses``."""

    name: sympy.Symbol
    uses: frozenset
    expr: sympy.Expr | None = None  # a plain assignment
    form: CoefficientForm | None = None  # a field output evaluated in place
    scale: sympy.Expr = sympy.S.One


def _stable_topological(statements: list[_Statement]) -> list[_Statement]:
    """Order statements so each comes after the statements it uses; ties keep the given order."""
    defined = {s.name for s in statements}
    done: set[sympy.Symbol] = set()
    ordered = []
    remaining = list(statements)
    while remaining:
        for index, statement in enumerate(remaining):
            if (statement.uses & defined) <= done:
                ordered.append(statement)
                done.add(statement.name)
                del remaining[index]
                break
        else:
            raise ValueError("the kernel's statements depend on each other in a cycle")
    return ordered


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


def _render_in_place(statement: _Statement, owned: set[sympy.Symbol], read_later: set[sympy.Symbol], printer):
    """Lines that evaluate a coefficient form into one buffer, reusing an atom's buffer when nothing reads it."""
    out, form = statement.name.name, statement.form
    terms = list(form.terms)
    reusable = [t for t in terms if t[0] in owned and t[0] not in read_later]
    # Start with a term whose coefficient is not 1 (it needs a multiplication anyway): the others are then added.
    reusable.sort(key=lambda t: abs(t[1]) == 1)
    lines = []
    if reusable:
        monomial, coefficient = reusable[0]
        lines.append(f"{out} = {monomial.name}  # reuses the buffer: nothing reads {monomial.name} after this")
        if coefficient == -1:
            lines.append(f"numpy.negative({out}, out={out})")
        elif coefficient != 1:
            lines.append(f"{out} *= {printer.doprint(coefficient)}")
    else:
        monomial, coefficient = terms[0]
        text = printer.doprint(coefficient * monomial)
        lines.append(f"{out} = numpy.array({text})" if coefficient == 1 and monomial.is_Symbol else f"{out} = {text}")
    terms.remove((monomial, coefficient))
    for monomial, coefficient in terms:
        if abs(coefficient) == 1:
            lines.append(f"{out} {'+' if coefficient == 1 else '-'}= {printer.doprint(monomial)}")
        else:
            lines.append(f"{out} += {printer.doprint(coefficient * monomial)}")
    if form.constant != 0:
        lines.append(f"{out} += {printer.doprint(form.constant)}")
    if statement.scale != 1:
        lines.append(f"{out} *= {printer.doprint(statement.scale)}")
    return lines


def render_kernel(kernel: Kernel, indent: str = "    ") -> str:
    """The source of ``kernel`` as a Python function (without a trailing blank line)."""
    printer = KernelPrinter()
    taken = {s.name for s in kernel.inputs} | {s.name for s, _ in kernel.steps} | {s.name for s, _ in kernel.outputs}
    taken |= {"axes", "count", "numpy", "batch_sum", "batch_dot"}
    scalar_steps, outputs = inline_field_steps(kernel.steps, kernel.outputs)
    atoms: dict[sympy.Expr, sympy.Symbol] = {}
    exprs = [e for _, e in scalar_steps] + [e for _, e in outputs]
    reductions, exprs = _name_reductions(exprs, taken, atoms)
    scalar_steps = list(zip((n for n, _ in scalar_steps), exprs[:len(scalar_steps)]))
    outputs = list(zip((n for n, _ in outputs), exprs[len(scalar_steps):]))

    scalars = list(scalar_steps)  # (name, channel-scalar expression), to go through CSE together
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
    atom_definitions = list(zip((s for s, _ in atom_definitions), reduced[:len(atom_definitions)]))
    scalars = list(zip((s for s, _ in scalars), reduced[len(atom_definitions):]))
    # A coefficient that CSE reduced to a single name needs no statement of its own.
    aliases = {n: e for n, e in scalars if n in coefficient_names and e.is_Symbol}
    scalars = [(n, e) for n, e in scalars if n not in aliases]
    forms = {name: (CoefficientForm(tuple((m, c.xreplace(aliases)) for m, c in form.terms),
                                    form.constant.xreplace(aliases)), scale.xreplace(aliases))
             for name, (form, scale) in forms.items()}

    statements = [_Statement(n, frozenset(e.free_symbols), e) for n, e in replacements + atom_definitions]
    statements += [_Statement(n, frozenset(e.args[0].free_symbols), e) for n, e in reductions]
    statements += [_Statement(n, frozenset(e.free_symbols), e) for n, e in scalars]
    for name, (form, scale) in forms.items():
        uses = set().union(*(m.free_symbols | c.free_symbols for m, c in form.terms))
        uses |= form.constant.free_symbols | scale.free_symbols
        statements.append(_Statement(name, frozenset(uses), form=form, scale=scale))
    statements = _stable_topological(statements)

    # Only kernels that reduce take the reduced axes, and only those that reduce or use M take the count.
    every = [e for _, e in kernel.steps] + [e for _, e in kernel.outputs]
    reduces = any(e.has(BatchSum) for e in every)
    extra = (["axes"] if reduces else []) + (["count"] if reduces or any(e.has(M) for e in every) else [])
    parameters = ", ".join([s.name for s in kernel.inputs] + extra)
    lines = [f"def {kernel.name}({parameters}):"]
    width = 116 - len(indent)
    doc = textwrap.wrap(f'"""{kernel.summary}', width) + [""] + textwrap.wrap(kernel.derived_from, width)
    for note in kernel.notes:
        doc += [""] + textwrap.wrap(note, width)
    doc += ['"""']
    lines += [indent + line if line else "" for line in doc]
    owned = {s for _, s in atoms.items()}
    for index, statement in enumerate(statements):
        if statement.form is not None:
            read_later = set().union(*(s.uses for s in statements[index + 1:]))
            lines += [indent + line for line in _render_in_place(statement, owned, read_later, printer)]
        elif statement.name != statement.expr:  # an output that is also a step needs no statement of its own
            lines.append(f"{indent}{statement.name.name} = {printer.doprint(statement.expr)}")
    lines.append(f"{indent}return {', '.join(s.name for s, _ in kernel.outputs)}")
    return "\n".join(lines)
