"""Every layer of the family: the generic derivation (symbolic M) against brute force at small M.

The brute-force side instantiates the layer's explicit forward pass with M scalar symbols per field (and per
parameter, where a parameter varies within a group) and differentiates it with ``sympy.diff``; it never uses the
reduction calculus. Batch norm has its own, longer version of these tests in ``test_cross_check.py``.
"""

import pytest
import sympy

from bnsym.symbolic.brute_force import Elements, difference_is_zero, instantiate, jacobian_vector_product
from bnsym.symbolic.layers import LAYERS, derivation
from bnsym.symbolic.reduction import BatchSum, Field

FAMILY = [name for name in LAYERS if name != "batch_norm"]
FIRST_ORDER_SIZES = (1, 2, 3, 4, 5)
SECOND_ORDER_SIZES = (1, 2, 3, 4)


def _values(symbol, elements):
    """The scalar symbols of ``symbol`` in a group: one per element for a field, itself for a group scalar."""
    return list(elements[symbol]) if isinstance(symbol, Field) else [symbol]


def _assert_agrees(generic, brute, elements, forward, what):
    """``generic`` (a field or group scalar) at each element equals ``brute`` (one value per element or one)."""
    for j, expected in enumerate(brute):
        actual = instantiate(generic, elements, j, forward)
        assert difference_is_zero(actual, expected), f"{what} at element {j} differs from brute force, M={elements.n}"


def _first_order(layer, n):
    """The brute-force gradients of sum over the field outputs o (y, and h for fused add + RMS norm) of
    <upstream_o, o>, with respect to every field input and parameter (the full Jacobian, by sympy.diff)."""
    forward = layer.training_forward
    elements = Elements(n)
    outputs = [instantiate(o, elements, i, forward) for o in layer.field_outputs for i in range(n)]
    upstream = [v for d in layer.upstream for v in elements[d]]
    ys = outputs[:n]
    gradients = {u: jacobian_vector_product(outputs, _values(u, elements), upstream)
                 for u in (*layer.field_inputs, *layer.parameters)}
    return elements, ys, gradients


@pytest.mark.parametrize("n", FIRST_ORDER_SIZES, ids=lambda n: f"M={n}")
@pytest.mark.parametrize("name", FAMILY)
def test_backward_matches_brute_force(name, n):
    layer = derivation(name)
    program, closed = layer.backward
    elements, _, brute = _first_order(layer, n)
    wrt = (*layer.field_inputs, *layer.parameters)
    assert len(program.outputs) == len(wrt), f"{name}: the backward returns {program.outputs} for {wrt}"
    for adjoint, u in zip(program.outputs, wrt):
        _assert_agrees(closed[adjoint], brute[u], elements, layer.training_forward, f"{name} {adjoint}")


@pytest.mark.parametrize("n", SECOND_ORDER_SIZES, ids=lambda n: f"M={n}")
@pytest.mark.parametrize("name", FAMILY)
def test_double_backward_matches_brute_force(name, n):
    """gx, ggamma, gdy against the derivatives of sum(ggx dx) + sum(gggamma dgamma) (+ sum(ggbeta dbeta)), with
    the first-order gradients themselves from the full Jacobian."""
    layer = derivation(name)
    s = layer.symbols
    program, closed = layer.double_backward
    elements, _, brute = _first_order(layer, n)
    loss = sum(sum(c * g for c, g in zip(_values(layer.cotangent(u), elements), brute[u]))
               for u in (*layer.field_inputs, *layer.parameters))
    wrt = (*layer.field_inputs, s.gamma, *layer.upstream)
    assert len(program.outputs) == len(wrt), f"{name}: the double backward returns {program.outputs} for {wrt}"
    for out, u in zip(program.outputs, wrt):
        expected = [sympy.diff(loss, v) for v in _values(u, elements)]
        _assert_agrees(closed[out], expected, elements, layer.training_forward, f"{name} {out}")


@pytest.mark.parametrize("n", FIRST_ORDER_SIZES, ids=lambda n: f"M={n}")
@pytest.mark.parametrize("name", FAMILY)
def test_jvp_matches_brute_force(name, n):
    layer = derivation(name)
    program, closed = layer.jvp
    elements = Elements(n)
    forward = layer.training_forward
    tangents = program.outputs[len(layer.field_outputs):]
    assert len(tangents) == len(layer.field_outputs) == len(closed), f"{name}: tangents {tangents}"
    for output, tangent in zip(layer.field_outputs, tangents):
        values = [instantiate(output, elements, i, forward) for i in range(n)]
        brute = [sum(sympy.diff(value, v) * t for u in (*layer.field_inputs, *layer.parameters)
                     for v, t in zip(_values(u, elements), _values(layer.tangent_of(u), elements)))
                 for value in values]
        _assert_agrees(closed[tangent], brute, elements, forward, f"{name} {tangent}")


@pytest.mark.parametrize("name", FAMILY)
def test_cross_check_detects_a_dx_without_the_statistics_term(name):
    """The comparison can fail: dropping the term that flows through the statistics (the one with the reduction
    of dy times x_hat) from dx is caught at M = 3."""
    layer = derivation(name)
    s = layer.symbols
    program, closed = layer.backward
    dx = program.outputs[0]
    terms = sympy.Add.make_args(sympy.expand(closed[dx]))
    wrong = sympy.Add(*(t for t in terms if not any(b.has(s.x_hat) for b in t.atoms(BatchSum))))
    assert wrong != closed[dx], f"{name}: no term of dx reduces dy * x_hat"
    elements, _, brute = _first_order(layer, 3)
    assert not difference_is_zero(instantiate(wrong, elements, 0, layer.training_forward), brute[s.x][0])



@pytest.mark.parametrize("name", LAYERS)
def test_facts_are_proved(name):
    layer = derivation(name)
    assert len(layer.facts) == (2 if layer.declaration.centred else 1)


def test_parameter_kinds_follow_the_declarations():
    """Layer, RMS and group norm have per-element parameters (fields); batch and instance norm per-group ones."""
    for name, declaration in LAYERS.items():
        gamma = derivation(name).symbols.gamma
        assert isinstance(gamma, Field) == declaration.per_element_parameters, name
