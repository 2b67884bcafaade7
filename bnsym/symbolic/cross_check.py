"""A layer's derived training results against brute force at small group sizes.

The derivation (:class:`bnsym.symbolic.layers.Derivation`) works for a symbolic group size M with the reduction
calculus. This module checks its closed forms independently, for a fixed small M = n: the layer's forward pass is
instantiated with n scalar symbols per field (and per parameter, where a parameter varies within a group;
:mod:`bnsym.symbolic.brute_force`), differentiated with plain ``sympy.diff`` (the full Jacobian), and each closed
form, instantiated the same way, must equal it exactly, element by element:

* the backward pass: dx and each parameter's gradient against the full Jacobian's vector product with dy;
* the double backward: gx, ggamma and gdy against the derivatives of ``<ggx, dx> + <gggamma, dgamma> (+ <ggbeta,
  dbeta>)``, with the first-order gradients themselves from the full Jacobian;
* forward mode: ty against ``sum_u dy/du * t_u`` over x and the parameters.

These are the training-mode results of one group; a parameter's gradient is then summed over the groups that share
it by one rule of the kernels, not by the derivation. ``bnsym derive FILE.py:NAME`` runs :func:`cross_check` on a
layer of your own before it writes anything, and the test suite runs it on every built-in layer.
"""

from __future__ import annotations

import sympy

from bnsym.symbolic.brute_force import Elements, difference_is_zero, instantiate, jacobian_vector_product
from bnsym.symbolic.reduction import Field

__all__ = ["CHECKS", "SIZES", "CrossCheckError", "backward", "cross_check", "double_backward", "first_order", "jvp"]

#: The group sizes ``bnsym derive`` checks a layer of your own at: M = 1 (a group of one value, where every
#: centred result degenerates), 2 and 3 (a reduction that mixes values); larger M costs seconds per layer.
SIZES = (1, 2, 3)


class CrossCheckError(AssertionError):
    """A derived closed form that differs from brute force: which result, at which element, for which M."""


def _values(symbol, elements: Elements) -> list:
    """The scalar symbols of ``symbol`` in a group: one per element for a field, itself for a group scalar."""
    return list(elements[symbol]) if isinstance(symbol, Field) else [symbol]


def _agrees(generic, brute, elements: Elements, forward, what: str) -> None:
    """``generic`` (a field or group scalar) at each element equals ``brute`` (one value per element, or one)."""
    for j, expected in enumerate(brute):
        actual = instantiate(generic, elements, j, forward)
        if not difference_is_zero(actual, expected):
            raise CrossCheckError(f"{what} at element {j} differs from brute force at M = {elements.n}")


def first_order(layer, n: int):
    """(elements, y per element, the gradient of the sum over the field outputs o (y, and h for fused add + RMS
    norm) of <upstream_o, o> with respect to each field input (x, residual) and each parameter by the full Jacobian)
    for a group of ``n`` values of the derivation ``layer``."""
    forward = layer.training_forward
    elements = Elements(n)
    outputs = [instantiate(o, elements, i, forward) for o in layer.field_outputs for i in range(n)]
    upstream = [v for d in layer.upstream for v in elements[d]]
    gradients = {u: jacobian_vector_product(outputs, _values(u, elements), upstream)
                 for u in (*layer.field_inputs, *layer.parameters)}
    return elements, outputs[:n], gradients


def backward(layer, n: int) -> None:
    """The backward pass's closed forms against the full Jacobian at M = ``n`` (CrossCheckError otherwise)."""
    name = layer.declaration.name
    program, closed = layer.backward
    elements, _, brute = first_order(layer, n)
    wrt = (*layer.field_inputs, *layer.parameters)
    if len(program.outputs) != len(wrt):
        raise CrossCheckError(f"{name}: the backward returns {program.outputs} for {wrt}")
    for adjoint, u in zip(program.outputs, wrt):
        _agrees(closed[adjoint], brute[u], elements, layer.training_forward, f"{name} backward {adjoint}")


def double_backward(layer, n: int) -> None:
    """The gradients of each field input, gamma and each upstream gradient (gx, ggamma, gdy) against the
    derivatives of the cotangents' pairing with the brute-force gradients."""
    name = layer.declaration.name
    s = layer.symbols
    program, closed = layer.double_backward
    elements, _, brute = first_order(layer, n)
    loss = sum(sum(c * g for c, g in zip(_values(layer.cotangent(u), elements), brute[u]))
               for u in (*layer.field_inputs, *layer.parameters))
    wrt = (*layer.field_inputs, s.gamma, *layer.upstream)
    if len(program.outputs) != len(wrt):
        raise CrossCheckError(f"{name}: the double backward returns {program.outputs} for {wrt}")
    for out, u in zip(program.outputs, wrt):
        expected = [sympy.diff(loss, v) for v in _values(u, elements)]
        _agrees(closed[out], expected, elements, layer.training_forward, f"{name} double backward {out}")


def jvp(layer, n: int) -> None:
    """Each field output's tangent (ty; th) against its directional derivative along the tangents of the field
    inputs and the parameters."""
    name = layer.declaration.name
    program, closed = layer.jvp
    elements = Elements(n)
    forward = layer.training_forward
    tangents = program.outputs[len(layer.field_outputs):]
    if not len(tangents) == len(layer.field_outputs) == len(closed):
        raise CrossCheckError(f"{name}: forward mode returns the tangents {tangents} for {layer.field_outputs}")
    for output, tangent in zip(layer.field_outputs, tangents):
        values = [instantiate(output, elements, i, forward) for i in range(n)]
        brute = [sum(sympy.diff(value, v) * t for u in (*layer.field_inputs, *layer.parameters)
                     for v, t in zip(_values(u, elements), _values(layer.tangent_of(u), elements)))
                 for value in values]
        _agrees(closed[tangent], brute, elements, forward, f"{name} jvp {tangent}")


#: What :func:`cross_check` checks, in order, as it reports it.
CHECKS = (("backward", backward), ("double backward", double_backward), ("forward mode", jvp))


def cross_check(layer, sizes=SIZES) -> tuple[str, ...]:
    """Every training-mode result of the derivation ``layer`` against brute force at each group size of ``sizes``;
    returns the names of the results checked, and raises :class:`CrossCheckError` at the first that differs."""
    for _, check in CHECKS:
        for n in sizes:
            check(layer, n)
    return tuple(name for name, _ in CHECKS)
