"""The array-API printer: a :class:`~bnsym.codegen.plan.KernelPlan` rendered for any array library.

The generated function computes with ``xp``, the array-API namespace of its first argument (through
``array-api-compat``, :func:`bnsym._array_api.namespace`), so the same source runs on NumPy, PyTorch (CPU, CUDA),
JAX (also inside ``jax.jit``) and CuPy arrays, and returns arrays of that library, on the same device. It differs
from the NumPy printer in what the standard and the libraries allow:

* functions come from ``xp`` (``xp.sqrt``), never from NumPy;
* a field output is started in a **new** array (``y = x_minus_mean*c``), never in the buffer of an atom: under
  PyTorch's autograd that atom may be saved for the backward pass, and JAX arrays cannot be written at all. The
  following terms are added with augmented assignments (``y += beta``): in place on a PyTorch or NumPy array that
  the kernel itself created, a new array on JAX. An atom that nothing reads afterwards is deleted at once, so that
  its memory is free before the next term is added;
* reductions go through the ``reducer`` parameter, an :class:`bnsym._array_api.ArrayAPIReducer` (or any object
  with its members), as in the NumPy kernels.
"""

from __future__ import annotations

from bnsym.codegen.plan import Accumulate, KernelPlan
from bnsym.codegen.printer import KernelPrinter, NumPyPlanPrinter

__all__ = ["ArrayAPIPlanPrinter"]


class _ArrayAPIExpressionPrinter(KernelPrinter):
    """Prints one expression with functions from the namespace ``xp`` (``xp.sqrt``)."""

    _module = "xp"
    _kf = {name: "xp." + function.split(".", 1)[1] for name, function in KernelPrinter._kf.items()}


class ArrayAPIPlanPrinter(NumPyPlanPrinter):
    """Renders a :class:`KernelPlan` against the array API standard (module docstring)."""

    module = "xp"

    def __init__(self, indent: str = "    "):
        super().__init__(indent)
        self.expressions = _ArrayAPIExpressionPrinter()

    def _prologue(self, plan: KernelPlan) -> list[str]:
        return [f"xp = namespace({plan.parameters[0]})"]

    def _render_Accumulate(self, statement: Accumulate) -> list[str]:
        out = statement.name.name
        monomial, coefficient = statement.start
        if coefficient == 1 and monomial.is_Symbol:  # `out = dy` would alias an input: the additions would write it
            lines = [f"{out} = xp.asarray({self.doprint(monomial)}, copy=True)"]
        else:
            lines = [f"{out} = {self.doprint(coefficient * monomial)}"]
        if statement.reuse is not None:
            lines.append(f"del {statement.reuse.name}  # nothing reads it after this: free its memory now")
        return lines + self._remaining_terms(statement)
