"""Printers: a :class:`~bnsym.codegen.plan.KernelPlan` rendered as the source of one Python function.

Two layers, as in SymPy's own printers:

* :class:`KernelPrinter` prints one expression (SymPy's ``NumPyPrinter`` with exact reciprocals, no floats and no
  unknown functions; the group size ``M`` prints as ``count``);
* :class:`NumPyPlanPrinter` prints a whole plan, one ``_render_<Statement>`` method per statement kind of
  :mod:`bnsym.codegen.plan`. Reductions go through the kernel's ``reducer`` parameter (:class:`bnsym.runtime.reduce.
  Reducer`), never through a module global, so that a sharded run can pass its own. A backend for another array
  library or a compiled one is another plan printer over the same plan.
"""

from __future__ import annotations

import textwrap

import sympy
from sympy.printing.numpy import NumPyPrinter

from bnsym.codegen.plan import Accumulate, Assign, KernelPlan, Reduce
from bnsym.symbolic.naming import COUNT, REDUCER
from bnsym.symbolic.reduction import M

__all__ = ["KernelPrinter", "NumPyPlanPrinter"]


class KernelPrinter(NumPyPrinter):
    """Prints one expression of a generated kernel as NumPy source."""

    printmethod = "_bnsym_numpy"

    def __init__(self):
        super().__init__({"fully_qualified_modules": True, "allow_unknown_functions": False})

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

    def _print_StopGradient(self, expr):
        # A value held constant by the derivatives is, in a kernel, just its value.
        return self._print(expr.args[0])

    def _print_Min(self, expr):
        return self._pairwise("minimum", expr.args)

    def _print_Max(self, expr):
        return self._pairwise("maximum", expr.args)

    def _pairwise(self, function: str, args) -> str:
        """``module.function(a, module.function(b, c))``: the elementwise minimum or maximum, two at a time (NumPy's,
        Numba's and the array API's ``minimum``/``maximum`` take two arguments), in SymPy's canonical order."""
        name = self._module_format(f"{self._module}.{function}")
        first, *rest = sorted(args, key=sympy.default_sort_key)
        text = self._print(first)
        for arg in rest:
            text = f"{name}({text}, {self._print(arg)})"
        return text

    def _print_BatchSum(self, expr):
        raise TypeError(f"an unnamed reduction {expr} reached the kernel printer; plan_kernel names every one")

    _print_ParameterSum = _print_BatchSum


class NumPyPlanPrinter:
    """Renders a :class:`KernelPlan` as a NumPy function: in-place evaluation, reductions through the reducer."""

    #: The module that array functions come from, as printed (``numpy.sqrt``).
    module = "numpy"

    def __init__(self, indent: str = "    "):
        self.indent = indent
        self.expressions = KernelPrinter()

    def doprint(self, expr: sympy.Expr) -> str:
        return self.expressions.doprint(expr)

    def render(self, plan: KernelPlan) -> str:
        """The source of ``plan`` as a Python function (without a trailing blank line)."""
        self._fields = {str(name) for name in plan.fields}
        lines = [f"def {plan.name}({', '.join(plan.parameters)}):"]
        width = 116 - len(self.indent)
        doc = textwrap.wrap(f'"""{plan.docstring[0]}', width)
        for paragraph in plan.docstring[1:]:
            doc += [""] + textwrap.wrap(paragraph, width)
        doc += ['"""']
        lines += [self.indent + line if line else "" for line in doc]
        body = self._prologue(plan)
        if plan.uses_count and REDUCER in plan.parameters:
            body.append(f"{COUNT} = {REDUCER}.count")
        for statement in plan.statements:
            body += getattr(self, f"_render_{type(statement).__name__}")(statement)
        body.append(f"return {', '.join(s.name for s in plan.returns)}")
        return "\n".join(lines + [self.indent + line for line in body])

    def _prologue(self, plan: KernelPlan) -> list[str]:
        """Lines that open the body, before the statements (another printer's namespace lookup, say)."""
        return []

    # ----- one method per statement kind -----

    def _render_Assign(self, statement: Assign) -> list[str]:
        return [f"{statement.name.name} = {self.doprint(statement.expr)}"]

    def _render_Reduce(self, statement: Reduce) -> list[str]:
        method = "sums" if statement.over == "group" else "parameter_sums"
        terms = ", ".join("(%s,)" % ", ".join(f.name for f in term) if len(term) == 1
                          else "(%s)" % ", ".join(f.name for f in term) for term in statement.terms)
        names = ", ".join(n.name for n in statement.names)
        if len(statement.names) == 1:
            names += ","
        return [f"{names} = {REDUCER}.{method}({terms})"]

    def _render_Accumulate(self, statement: Accumulate) -> list[str]:
        out = statement.name.name
        monomial, coefficient = statement.start
        lines = []
        if statement.reuse is not None:
            atom = statement.reuse.name
            lines.append(f"{out} = {atom}  # reuses the buffer: nothing reads {atom} after this")
            if coefficient == -1:
                lines.append(f"{self.module}.negative({out}, out={out})")
            elif coefficient != 1:
                lines.append(f"{out} *= {self.doprint(coefficient)}")
            for factor in sympy.Mul.make_args(monomial / statement.reuse):
                if factor != 1:
                    lines.append(f"{out} *= {self.doprint(factor)}")
        elif (split := self._split_start(statement)) is not None:  # `x*gamma*invrms` would make two full arrays
            first, rest = split
            lines.append(f"{out} = {self.doprint(first)}")
            lines += [f"{out} *= {self.doprint(factor)}" for factor in rest]
        else:
            text = self.doprint(coefficient * monomial)
            simple = coefficient == 1 and monomial.is_Symbol
            lines.append(f"{out} = {self.module}.array({text})" if simple else f"{out} = {text}")
        return lines + self._remaining_terms(statement)

    def _split_start(self, statement: Accumulate):
        """For a start term of three factors or more, one of them a field: (a product of two factors, the field
        first, that is the output's new array; the other factors, to multiply into it in place). Else None."""
        if statement.reuse is not None:
            return None
        monomial, coefficient = statement.start
        factors = list((coefficient * monomial).as_ordered_factors())
        fields = [f for f in factors if f.is_Symbol and f.name in self._fields]
        if len(factors) < 3 or not fields:
            return None
        factors.remove(fields[0])
        return fields[0] * factors[0], factors[1:]

    def _remaining_terms(self, statement: Accumulate) -> list[str]:
        """The augmented assignments that add every term but the start, the constant, then apply the scale."""
        out, form = statement.name.name, statement.form
        lines = []
        for term_monomial, term_coefficient in form.terms:
            if (term_monomial, term_coefficient) == statement.start:
                continue
            lines.append(self._add_term(out, term_monomial, term_coefficient))
        if form.constant != 0:
            lines.append(f"{out} += {self.doprint(form.constant)}")
        if statement.scale != 1:
            lines.append(f"{out} *= {self.doprint(statement.scale)}")
        return lines

    def _add_term(self, out: str, monomial: sympy.Expr, coefficient: sympy.Expr) -> str:
        """The line that adds ``coefficient * monomial`` to the output ``out``: a product through
        :func:`bnsym.runtime.chunks.add_product`, formed one chunk of ``out`` at a time (``out += dy*gamma`` would
        make a
        temporary as large as ``out``)."""
        term = coefficient * monomial
        if term.is_Mul:
            return f"{out} = add_product({out}, {', '.join(self.doprint(f) for f in term.as_ordered_factors())})"
        if abs(coefficient) == 1:
            return f"{out} {'+' if coefficient == 1 else '-'}= {self.doprint(monomial)}"
        return f"{out} += {self.doprint(coefficient * monomial)}"
