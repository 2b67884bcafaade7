"""The array-API printer: a :class:`~bnsym.codegen.plan.KernelPlan` rendered for any array library.

The generated function computes with ``xp``, the array-API namespace of its first argument (through
``array-api-compat``, :func:`bnsym.runtime.array_api.namespace`), so the same source runs on NumPy, PyTorch (CPU, CUDA),
JAX (also inside ``jax.jit``) and CuPy arrays, and returns arrays of that library, on the same device. It differs
from the NumPy printer in what the standard and the libraries allow:

* functions come from ``xp`` (``xp.sqrt``), never from NumPy;
* there is no ``out=``, and whether an array may be written in place depends on the call: JAX arrays cannot be
  written at all, and while PyTorch's autograd records the call it may have saved any array the kernel made. So a
  kernel starts with ``in_place = in_place_allowed(...)`` (:func:`bnsym.runtime.array_api.in_place_allowed`, from its
  arguments) wherever it has a choice to make:

  - a field output whose first term has an atom that nothing reads afterwards takes over that atom's buffer when
    ``in_place`` (``y = x_minus_mean``, then ``y *= gamma``), and is a new array otherwise; the atom is deleted at
    once, so that its memory is free before the next term is added;
  - a field output is never started in the buffer of an input (``dx = xp.asarray(dy, copy=True)``, not ``dx = dy``);
    one that starts with a product of three factors or more starts with the product of a field and one factor,
    a new array, and multiplies the others into it when ``in_place`` (``y = x*gamma``, ``y *= invrms``): one
    array as large as the input instead of two;
  - a term that is a product (``dx += dy*gamma``) is added by :func:`bnsym.runtime.array_api.add_product`, which
  forms it
    one chunk of the output at a time when ``in_place``, so that no temporary as large as the input exists; other
    terms are added with augmented assignments (``y += beta``: in place on a PyTorch or NumPy array that the kernel
    itself created, a new array on JAX);
* reductions go through the ``reducer`` parameter, an :class:`bnsym.runtime.array_api.ArrayAPIReducer` (or any object
  with its members), as in the NumPy kernels; it forms the products it sums chunk by chunk too.
"""

from __future__ import annotations

import sympy

from bnsym.codegen.plan import Accumulate, KernelPlan
from bnsym.codegen.printer import KernelPrinter, NumPyPlanPrinter
from bnsym.symbolic.naming import REDUCER

__all__ = ["ArrayAPIPlanPrinter", "helpers_used"]

#: The name of the flag that says whether the kernel may update its own arrays in place.
IN_PLACE = "in_place"


class _ArrayAPIExpressionPrinter(KernelPrinter):
    """Prints one expression with functions from the namespace ``xp`` (``xp.sqrt``)."""

    _module = "xp"
    _kf = {name: "xp." + function.split(".", 1)[1] for name, function in KernelPrinter._kf.items()}


def helpers_used(source: str) -> tuple[str, ...]:
    """The names from :mod:`bnsym.runtime.array_api` that the printed ``source`` calls, sorted (for its import line)."""
    return tuple(name for name in ("add_product", "in_place_allowed", "namespace") if f"{name}(" in source)


class ArrayAPIPlanPrinter(NumPyPlanPrinter):
    """Renders a :class:`KernelPlan` against the array API standard (module docstring)."""

    module = "xp"

    def __init__(self, indent: str = "    "):
        super().__init__(indent)
        self.expressions = _ArrayAPIExpressionPrinter()

    def _prologue(self, plan: KernelPlan) -> list[str]:
        lines = [f"xp = namespace({plan.parameters[0]})"]
        if any(isinstance(s, Accumulate) and (s.reuse is not None or self._has_product_term(s)
                                              or self._split_start(s) is not None)
               for s in plan.statements):
            arguments = ", ".join(p for p in plan.parameters if p != REDUCER)
            lines.append(f"{IN_PLACE} = in_place_allowed({arguments})")
        return lines

    def _render_Accumulate(self, statement: Accumulate) -> list[str]:
        out = statement.name.name
        monomial, coefficient = statement.start
        if statement.reuse is not None:
            atom = statement.reuse.name
            in_place = [f"{out} = {atom}  # takes over its buffer: nothing reads {atom} after this"]
            if coefficient != 1:
                in_place.append(f"{out} *= {self.doprint(coefficient)}")
            in_place += [f"{out} *= {self.doprint(factor)}"
                         for factor in sympy.Mul.make_args(monomial / statement.reuse) if factor != 1]
            lines = [f"if {IN_PLACE}:", *(self.indent + line for line in in_place),
                     "else:", f"{self.indent}{out} = {self.doprint(coefficient * monomial)}",
                     f"del {atom}  # nothing reads it after this: free its memory now"]
        elif coefficient == 1 and monomial.is_Symbol:  # `out = dy` would alias an input: the additions would write it
            lines = [f"{out} = xp.asarray({self.doprint(monomial)}, copy=True)"]
        elif (split := self._split_start(statement)) is not None:  # `x*gamma*invrms` would make two full arrays
            first, rest = split
            lines = [f"if {IN_PLACE}:", f"{self.indent}{out} = {self.doprint(first)}",
                     *(f"{self.indent}{out} *= {self.doprint(factor)}" for factor in rest),
                     "else:", f"{self.indent}{out} = {self.doprint(coefficient * monomial)}"]
        else:
            lines = [f"{out} = {self.doprint(coefficient * monomial)}"]
        return lines + self._remaining_terms(statement)

    def _add_term(self, out: str, monomial: sympy.Expr, coefficient: sympy.Expr) -> str:
        term = coefficient * monomial
        if not term.is_Mul:
            return super()._add_term(out, monomial, coefficient)
        factors = ", ".join(self.doprint(factor) for factor in term.as_ordered_factors())
        return f"{out} = add_product({out}, {factors}, in_place={IN_PLACE})"

    @staticmethod
    def _has_product_term(statement: Accumulate) -> bool:
        return any((coefficient * monomial).is_Mul for monomial, coefficient in statement.form.terms
                   if (monomial, coefficient) != statement.start)
