"""What every compiled-CPU (Numba) printer shares: the expression printer, the names a loop reads, the wrapper's
head and the generated module's prelude.

The printers (:mod:`bnsym.codegen.numba_stages`, :mod:`bnsym.codegen.numba_local`,
:mod:`bnsym.codegen.numba_interleaved`) import from here and from :mod:`bnsym.codegen.numba_plan`, never from each
other; :mod:`bnsym.codegen.numba_printer` chooses among them.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import sympy

from bnsym.codegen.plan import Assign, KernelPlan, Reduce
from bnsym.codegen.printer import KernelPrinter
from bnsym.runtime.reduce import BLOCK, RUN
from bnsym.symbolic.naming import COUNT
from bnsym.symbolic.reduction import M, ParameterField

__all__ = ["CompiledLoops", "Printer", "atoms_used", "docstring", "module_prelude", "names_read", "plan_symbols",
           "python_tuple", "reads_parameters", "wrapper_head"]


def module_prelude(numpy_module: str, functions: str, layouts: tuple[str, ...]) -> list[str]:
    """The imports and constants of a generated Numba module whose fallback kernels are in ``numpy_module``, for
    the source ``functions`` of its kernels (which layouts they use)."""
    layouts = [name for name in layouts if f"{name}.of(" in functions]
    return [
        "import numba",
        "import numpy",
        "",
        f"from {numpy_module.rsplit('.', 1)[0]} import {numpy_module.rsplit('.', 1)[1]} as numpy_kernels",
        # A module whose kernels all run their NumPy kernels (no loop strategy covers them) imports neither.
        *(["from bnsym.runtime.compiled import run_compiled"] if "run_compiled(" in functions else []),
        *([f"from bnsym.runtime.fused import {', '.join(layouts)}"] if layouts else []),
        "",
        "#: At most this many rows of one group go into one float32 partial sum (bnsym.runtime.reduce.BLOCK).",
        f"BLOCK = {BLOCK}",
        "#: At most this many contiguous values of one run go into one float32 partial sum (bnsym.runtime.reduce.RUN).",
        f"RUN = {RUN}",
        "#: Reductions may be reassociated (LLVM then vectorises a float32 sum); nothing else may.",
        'REASSOCIATE = {"reassoc"}',
        "",
        "# Numba starts its thread pool when a parallel function is called through its dispatcher; a driver loaded",
        "# from the disk cache calls the parallel loops directly, and without a pool that call jumps to address 0.",
        "numba.get_num_threads()",
    ]


@dataclass(frozen=True)
class CompiledLoops:
    """What a loop printer makes of a plan for a wrapper to call: the ``source`` of its Numba functions, the
    ``driver`` expression that names the parallel function to run (it may choose by ``layout``), the ``condition``
    its call needs besides a layout (`` and layout.Q == 1``, or ""), and the ``shape`` arguments that the driver
    takes after M."""

    source: str
    driver: str
    condition: str
    shape: list[str]
    #: The driver takes the parameter results (dgamma, ...) as (P, Q) arrays after the field outputs, allocated by
    #: the wrapper with NumPy (``layout.parameter_empty()``), and returns them filled.
    parameter_outputs: bool = False


class Printer(KernelPrinter):
    """Prints one expression with symbols renamed (``mean`` -> ``mean[g]``) and, inside field loops, numbers in
    the fields' dtype (Numba types ``3 * float32`` as float64, which would promote the whole loop)."""

    def __init__(self, names: dict[str, str], typed_numbers: bool):
        super().__init__()
        self._settings["order"] = "none"  # print sums and products in the order built (the NumPy kernel's)
        self.names = names
        self.typed_numbers = typed_numbers

    def _print_Symbol(self, expr):
        if expr == M:
            return self.names.get(COUNT, COUNT)
        return self.names.get(expr.name, expr.name)

    def _print_Integer(self, expr):
        return f"dtype({int(expr)})" if self.typed_numbers else str(int(expr))

    def _print_Rational(self, expr):
        if self.typed_numbers:
            return f"(dtype({expr.p})/dtype({expr.q}))"
        return f"({expr.p}/{expr.q})"

    def _print_Pow(self, expr, rational=False):
        if self.typed_numbers and expr.exp.is_Integer:
            base = self.parenthesize(expr.base, sympy.printing.precedence.PRECEDENCE["Pow"])
            if expr.exp.is_negative:
                return f"dtype(1)/{base}**{-int(expr.exp)}"
            return f"{base}**{int(expr.exp)}"
        return super()._print_Pow(expr, rational=rational)


def plan_symbols(plan: KernelPlan) -> set:
    """Every symbol that a plan's statements read or define."""
    found: set = set()
    for statement in plan.statements:
        if isinstance(statement, Assign):
            found |= statement.expr.free_symbols | {statement.name}
        elif isinstance(statement, Reduce):
            found |= {f for term in statement.terms for f in term}
        else:
            found |= {statement.name} | statement.scale.free_symbols | statement.form.constant.free_symbols
            for monomial, coefficient in statement.form.terms:
                found |= monomial.free_symbols | coefficient.free_symbols
    return found


def names_read(atoms: dict, exprs) -> list[str]:
    """The names that a loop evaluating ``exprs`` (expressions, or names) reads, in first-seen order, each atom
    (``atoms``: name -> its expression, computed in the loop body) replaced by what it reads; M reads ``count``."""
    seen: list[str] = []

    def visit(name: str) -> None:
        if name in atoms:
            for symbol in sorted(atoms[name].free_symbols, key=sympy.default_sort_key):
                visit(symbol.name if symbol != M else COUNT)
        elif name not in seen:
            seen.append(name)

    for item in exprs:
        if isinstance(item, str):
            visit(item)
        else:
            for symbol in sorted(item.free_symbols, key=sympy.default_sort_key):
                visit(symbol.name if symbol != M else COUNT)
    return seen


def atoms_used(atoms: dict, exprs) -> list[str]:
    """The atoms that ``exprs`` (expressions, or names) read, directly or through other atoms, in the order of
    ``atoms`` (their definition order)."""
    used: set[str] = set()

    def visit(name: str) -> None:
        if name in atoms and name not in used:
            used.add(name)
            for symbol in atoms[name].free_symbols:
                visit(symbol.name)

    for item in exprs:
        for name in ([item] if isinstance(item, str) else [s.name for s in item.free_symbols]):
            visit(name)
    return [a for a in atoms if a in used]


def docstring(indent: str, text: str) -> list[str]:
    """A generated function's docstring, wrapped to the generated modules' width, at ``indent``."""
    return [indent + line for line in textwrap.wrap(f'"""{text}"""', 116 - len(indent))]


def python_tuple(items) -> str:
    """The source of a tuple of these names: ``(a,)`` for one."""
    items = list(items)
    return f"({', '.join(items)}{',' if len(items) == 1 else ''})"


def wrapper_head(plan: KernelPlan, indent: str, compiled: str) -> list[str]:
    """The ``def`` line and docstring of a compiled kernel's wrapper: the NumPy kernel's paragraphs, then
    ``compiled``, a paragraph on what the loops cover."""
    width = 116 - len(indent)
    doc = textwrap.wrap(f'"""{plan.docstring[0]}', width)
    for paragraph in plan.docstring[1:] + (compiled,):
        doc += [""] + textwrap.wrap(paragraph, width)
    doc += ['"""']
    return [f"def {plan.name}({', '.join(plan.parameters)}):"] + [indent + line if line else "" for line in doc]


def reads_parameters(plan: KernelPlan) -> bool:
    """Whether ``plan`` sums over the groups that share a parameter or reads a parameter that varies within a
    group: what the stage loops do not cover."""
    return (any(isinstance(s, Reduce) and s.over != "group" for s in plan.statements)
            or any(isinstance(symbol, ParameterField) for symbol in plan_symbols(plan)))
