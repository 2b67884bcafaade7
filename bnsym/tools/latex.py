"""LaTeX for derived expressions, with the names of :mod:`bnsym.symbolic.naming` and an index on every field.

Fields carry the free index i; inside a reduction they carry the summation index j, so that
``dx_i = gamma s (dy_i - (1/M) sum_j dy_j ...)`` reads unambiguously.
"""

from __future__ import annotations

import sympy
from sympy.printing.latex import LatexPrinter

from bnsym.symbolic.naming import latex_name
from bnsym.symbolic.reduction import Field

__all__ = ["to_latex"]


class _Printer(LatexPrinter):
    def __init__(self):
        super().__init__()
        self._index = "i"

    def _print_Symbol(self, expr, style="plain"):
        name = latex_name(expr.name)
        if isinstance(expr, Field):
            return "{%s}_{%s}" % (name, self._index)
        if "^" in name:  # sigma^2 and friends need braces before an accent or exponent
            return "{%s}" % name
        return name

    def _print_BatchSum(self, expr):
        outer, self._index = self._index, "j" if self._index == "i" else "k"
        try:
            inner = self._print(expr.args[0])
        finally:
            bound, self._index = self._index, outer
        if isinstance(expr.args[0], sympy.Add):
            inner = r"\left(%s\right)" % inner
        # Parenthesised, so that a product of two sums never reads as a nested sum.
        return r"\left(\sum_{%s} %s\right)" % (bound, inner)


def to_latex(expr: sympy.Expr) -> str:
    """``expr`` in LaTeX: fields as ``x_i``, reductions as ``\\sum_j``, names from :mod:`bnsym.symbolic.naming`."""
    return _Printer().doprint(expr)
