"""The vocabulary of a per-channel derivation: fields, channel scalars and the batch reduction.

Notation. A normalisation layer acts on one *group* of M values at a time (for batch norm: one channel, its values
over the batch and spatial axes). A derivation never names the M values one by one. Instead:

* a :class:`Field` stands for "the value at the current element i" (``x`` means x_i, ``dy`` means dy_i);
* any other SymPy symbol is a *channel scalar*, one value shared by the whole group (``gamma``, ``eps``, ``M``);
* :class:`BatchSum` ``(e)`` is the reduction sum_i e_i over the group, itself a channel scalar;
* :class:`StopGradient` ``(e)`` is the value of ``e`` held constant in every derivative (a stop-gradient: batch
  renormalisation's r and d).

Because M is the symbol :data:`M`, every result holds for every batch size at once. SymPy's own ``Sum`` with
``IndexedBase`` would express the same thing, but differentiating through it is fragile (sympy issues 21891 and
12751): here the reduction is an opaque function whose calculus is written out once, in :mod:`bnsym.symbolic.program`.

:class:`BatchSum` keeps itself in a canonical form as it is built: it is linear (it distributes over sums and pulls
channel scalars out of products) and the sum of a channel scalar c is ``M * c``. It never expands a power or a
product of fields, so ``BatchSum((x - mean)**2)`` stays the two-pass variance and is never rewritten into
E[x^2] - E[x]^2.
"""

from __future__ import annotations

import sympy

__all__ = ["BatchSum", "Field", "M", "ParameterField", "ParameterSum", "StopGradient", "is_field_expr",
           "is_full_field", "outermost_sums"]


class Field(sympy.Symbol):
    """A per-element quantity: one value for each of the M elements of a group."""


class ParameterField(Field):
    """A per-element quantity that every group shares: a parameter that varies within a group (layer norm's gamma
    has one value per normalised position, the same for every sample). For the calculus it is a field like any
    other; arrays of it have the parameter's broadcast shape, not the layer's full shape."""


def is_full_field(expr: sympy.Expr) -> bool:
    """True when ``expr`` has a field that is not a :class:`ParameterField` outside every reduction: an array of
    it has the layer's full shape."""
    if isinstance(expr, Field):
        return not isinstance(expr, ParameterField)
    if isinstance(expr, BatchSum | ParameterSum) or not expr.args:
        return False
    return any(is_full_field(arg) for arg in expr.args)


#: The number of elements in one group (for batch norm: N times the spatial size).
M = sympy.Symbol("M", positive=True, integer=True)


def is_field_expr(expr: sympy.Expr) -> bool:
    """True when ``expr`` varies from element to element, i.e. has a :class:`Field` outside every reduction."""
    if isinstance(expr, Field):
        return True
    if isinstance(expr, BatchSum | ParameterSum) or not expr.args:
        return False
    return any(is_field_expr(arg) for arg in expr.args)


def outermost_sums(expr: sympy.Expr) -> list[BatchSum]:
    """The reductions in ``expr`` that are not inside another reduction, in SymPy's canonical order."""
    found: set[BatchSum] = set()

    def visit(node: sympy.Basic) -> None:
        if isinstance(node, BatchSum):
            found.add(node)
            return
        for arg in node.args:
            visit(arg)

    visit(expr)
    return sorted(found, key=sympy.default_sort_key)


class BatchSum(sympy.Function):
    """``BatchSum(e)`` is sum_i e_i over the M elements of a group: a channel scalar.

    Canonicalisation on construction (the only rewriting it ever does):

    * ``BatchSum(a + b) = BatchSum(a) + BatchSum(b)``;
    * ``BatchSum(c * e) = c * BatchSum(e)`` for a channel scalar ``c``;
    * ``BatchSum(c) = M * c`` for a channel scalar ``c``.
    """

    nargs = 1
    is_commutative = True

    @classmethod
    def eval(cls, arg):
        if not is_field_expr(arg):
            return M * arg
        if isinstance(arg, sympy.Add):
            return sympy.Add(*(cls(term) for term in arg.args))
        if isinstance(arg, sympy.Mul):
            scalars = [f for f in arg.args if not is_field_expr(f)]
            if scalars:
                fields = [f for f in arg.args if is_field_expr(f)]
                return sympy.Mul(*scalars) * cls(sympy.Mul(*fields))
        return None

    def _sympystr(self, printer):
        return "BatchSum(%s)" % printer.doprint(self.args[0])


class ParameterSum(sympy.Function):
    """``ParameterSum(e)``: e summed over every group that shares one parameter value; a parameter-shaped value.

    A layer's statistics are per group, but a parameter (gamma, beta) may be shared by many groups: LayerNorm's
    gamma has the normalised shape and is shared by every sample, InstanceNorm's per-channel gamma by every sample's
    group of that channel. The gradient of such a parameter is the adjoint that the derivation finds for one group
    (a field, or a channel scalar), summed over the groups that share the parameter. Derivations never need this
    node: it only wraps a parameter's gradient when a kernel is built (:mod:`bnsym.codegen.layer_kernels`). It is
    linear and pulls out numbers; nothing else is constant across groups, so nothing else is pulled out.
    """

    nargs = 1
    is_commutative = True

    @classmethod
    def eval(cls, arg):
        if isinstance(arg, sympy.Add):
            return sympy.Add(*(cls(term) for term in arg.args))
        coefficient, rest = arg.as_coeff_Mul()
        if coefficient != 1:
            return coefficient * cls(rest)
        if arg == 0:
            return sympy.S.Zero
        return None

    def _sympystr(self, printer):
        return "ParameterSum(%s)" % printer.doprint(self.args[0])


class StopGradient(sympy.Function):
    """``StopGradient(e)``: the value of ``e``, held constant by every derivative (a stop-gradient, ``detach``).

    Its derivative with respect to its argument is zero (:meth:`fdiff`), so ``sympy.diff`` (the local partials of
    :mod:`bnsym.symbolic.program`, and the brute-force Jacobians of :mod:`bnsym.symbolic.brute_force`) sends nothing
    through it: a reduction inside it receives no adjoint and no tangent. A kernel evaluates it as its argument.
    It is a field when its argument is one.
    """

    nargs = 1
    is_commutative = True
    is_real = True

    def fdiff(self, argindex=1):
        return sympy.S.Zero

    def _sympystr(self, printer):
        return "StopGradient(%s)" % printer.doprint(self.args[0])
