"""A kernel: the declaration of one generated function, its named inputs and its derived outputs.

A :class:`Kernel` says *what* a generated function computes. :func:`bnsym.codegen.plan.plan_kernel` turns it into a
plan (how: reduction stages, per-group assignments, in-place field outputs), and a printer renders the plan
(:class:`bnsym.codegen.printer.NumPyPlanPrinter` for NumPy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from bnsym.codegen.plan import plan_kernel
from bnsym.codegen.printer import NumPyPlanPrinter

__all__ = ["Kernel", "render_kernel"]


@dataclass(frozen=True)
class Kernel:
    """One generated function.

    * ``name``: the function's name in the generated module.
    * ``inputs``: its positional parameters, in order; ``reducer`` (:class:`bnsym.runtime.reduce.Reducer`, which also
      carries M) is appended when the kernel reduces, and ``count`` (M) when it only uses M.
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


def render_kernel(kernel: Kernel, indent: str = "    ") -> str:
    """The source of ``kernel`` as a NumPy function (without a trailing blank line)."""
    return NumPyPlanPrinter(indent).render(plan_kernel(kernel))
