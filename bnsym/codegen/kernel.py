"""A kernel: named inputs, named outputs and their derived expressions, printed as one NumPy function.

Printing a kernel:

1. every reduction becomes a named statement (``sum_dy = numpy.sum(dy, ...)``), innermost first;
2. common subexpressions of what remains are eliminated by ``sympy.cse`` (canonical order, so output is
   deterministic);
3. the statements are emitted in dependency order, stable with respect to the order above.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import sympy

from bnsym.codegen.printer import KernelPrinter
from bnsym.naming import reduction_name
from bnsym.symbolic.reduction import BatchSum, M

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


def _reduction_label(argument: sympy.Expr) -> str | None:
    """``dy*x_hat`` -> ``["dy", "x_hat"]`` style labels for products of plain symbols, else None."""
    factors = []
    for factor in sympy.Mul.make_args(argument):
        if isinstance(factor, sympy.Symbol):
            factors.append(factor.name)
        elif isinstance(factor, sympy.Pow) and isinstance(factor.base, sympy.Symbol) and factor.exp == 2:
            factors.extend([factor.base.name, factor.base.name])
        else:
            return None
    return reduction_name(sorted(factors))


def _innermost_sums(expr: sympy.Expr) -> list[BatchSum]:
    return sorted((s for s in expr.atoms(BatchSum) if not s.args[0].has(BatchSum)), key=sympy.default_sort_key)


def _name_reductions(exprs: list[sympy.Expr], taken: set[str]):
    """Replace every reduction by a named symbol, innermost first; return (statements, rewritten exprs)."""
    statements: list[tuple[sympy.Symbol, sympy.Expr]] = []
    anonymous = 0
    while True:
        pending = sorted({s for e in exprs for s in _innermost_sums(e)}, key=sympy.default_sort_key)
        if not pending:
            return statements, exprs
        replacements = {}
        for total in pending:
            label = _reduction_label(total.args[0])
            if label is None or label in taken:
                label = f"sum_{anonymous}"
                anonymous += 1
                while label in taken:
                    label = f"sum_{anonymous}"
                    anonymous += 1
            taken.add(label)
            symbol = sympy.Symbol(label, real=True)
            statements.append((symbol, total))
            replacements[total] = symbol
        exprs = [e.xreplace(replacements) for e in exprs]


def _stable_topological(statements: list[tuple[sympy.Symbol, sympy.Expr]]):
    """Order statements so each comes after the statements it uses; ties keep the given order."""
    defined = {name for name, _ in statements}
    done: set[sympy.Symbol] = set()
    ordered = []
    remaining = list(statements)
    while remaining:
        for index, (name, expr) in enumerate(remaining):
            if (expr.free_symbols & defined) <= done:
                ordered.append((name, expr))
                done.add(name)
                del remaining[index]
                break
        else:
            raise ValueError("the kernel's statements depend on each other in a cycle")
    return ordered


def render_kernel(kernel: Kernel, indent: str = "    ") -> str:
    """The source of ``kernel`` as a Python function (without a trailing blank line)."""
    printer = KernelPrinter()
    taken = {s.name for s in kernel.inputs} | {s.name for s, _ in kernel.steps} | {s.name for s, _ in kernel.outputs}
    names = [s for s, _ in kernel.steps] + [s for s, _ in kernel.outputs]
    exprs = [e for _, e in kernel.steps] + [e for _, e in kernel.outputs]
    # Steps are referred to by name in later expressions; inline nothing and keep them as statements.
    reductions, exprs = _name_reductions(exprs, taken)
    reduction_args = [e.args[0] for _, e in reductions]
    temporaries = (f"tmp{i}" for i in range(10_000))
    cse_symbols = (sympy.Symbol(name, real=True) for name in temporaries if name not in taken)
    replacements, reduced = sympy.cse(reduction_args + exprs, symbols=cse_symbols, order="canonical")
    reduced_args, reduced_exprs = reduced[:len(reduction_args)], reduced[len(reduction_args):]
    # After CSE a field may hide behind a plain temporary, so reductions are not rebuilt as BatchSum (whose
    # canonicalisation would take the temporary for a channel scalar): they are printed from their argument.
    summed = {name for name, _ in reductions}
    statements = list(replacements) + [(name, arg) for (name, _), arg in zip(reductions, reduced_args)]
    statements = _stable_topological(statements + list(zip(names, reduced_exprs)))

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
    for name, expr in statements:
        if name == expr:  # an output that is also a step needs no statement of its own
            continue
        text = printer.doprint(expr)
        if name in summed:
            text = f"numpy.sum({text}, axis=axes, keepdims=True)"
        lines.append(f"{indent}{name.name} = {text}")
    lines.append(f"{indent}return {', '.join(s.name for s, _ in kernel.outputs)}")
    return "\n".join(lines)

