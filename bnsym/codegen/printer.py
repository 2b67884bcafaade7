"""The NumPy printer for derived expressions: SymPy's ``NumPyPrinter`` plus the batch reduction.

A reduction ``BatchSum(e)`` becomes ``batch_sum(e, axes)``, or ``batch_dot(a, b, axes)`` when ``e`` is the product
of two fields ``a*b`` (so the product is never materialised), from :mod:`bnsym._reduce`; ``axes`` is a parameter of
every generated kernel, and the group size ``M`` becomes the parameter ``count``. Any function the printer does
not know is an error, never a silent fall-through: a kernel must be plain NumPy.
"""

from __future__ import annotations

import sympy
from sympy.printing.numpy import NumPyPrinter

from bnsym.naming import COUNT
from bnsym.symbolic.reduction import M

__all__ = ["KernelPrinter"]


class KernelPrinter(NumPyPrinter):
    """Prints one expression of a generated kernel as NumPy source."""

    printmethod = "_bnsym_numpy"

    def __init__(self):
        super().__init__({"fully_qualified_modules": True, "allow_unknown_functions": False})

    def _print_BatchSum(self, expr):
        argument = expr.args[0]
        factors = []
        for factor in sympy.Mul.make_args(argument):
            if isinstance(factor, sympy.Pow) and factor.exp == 2 and factor.base.is_Symbol:
                factors += [factor.base, factor.base]
            else:
                factors.append(factor)
        if len(factors) == 2 and all(f.is_Symbol for f in factors):
            return "batch_dot(%s, %s, axes)" % (self._print(factors[0]), self._print(factors[1]))
        return "batch_sum(%s, axes)" % self._print(argument)

    def _print_Symbol(self, expr):
        if expr == M:
            return COUNT
        return super()._print_Symbol(expr)

    def _print_Pow(self, expr, rational=False):
        # SymPy's NumPyPrinter turns a negative integer exponent into a Float (to dodge NumPy's error for integer
        # arrays); kernels only see floating-point arrays, so print an exact reciprocal instead.
        if expr.exp.is_Integer and expr.exp.is_negative:
            denominator = sympy.Pow(expr.base, -expr.exp)
            return "1/%s" % self.parenthesize(denominator, sympy.printing.precedence.PRECEDENCE["Pow"])
        return super()._print_Pow(expr, rational=rational)

    def _print_Float(self, expr):
        # Floats would print with platform- and version-dependent digits; derivations are exact, so a Float
        # reaching the printer is a bug in a derivation.
        raise TypeError(f"a floating-point constant {expr} reached the kernel printer; derivations must be exact")

    def _print_Function(self, expr):
        raise TypeError(f"the kernel printer does not support the function {expr.func.__name__}")
