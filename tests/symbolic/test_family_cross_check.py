"""Every layer of the family: the generic derivation (symbolic M) against brute force at small M
(:mod:`bnsym.symbolic.cross_check`, which ``bnsym derive FILE.py:NAME`` also runs on a layer of your own).

The brute-force side instantiates the layer's explicit forward pass with M scalar symbols per field (and per
parameter, where a parameter varies within a group) and differentiates it with ``sympy.diff``; it never uses the
reduction calculus. Batch norm has its own, longer version of these tests in ``test_cross_check.py``.
"""

import pytest
import sympy

from bnsym.symbolic import cross_check
from bnsym.symbolic.brute_force import difference_is_zero, instantiate
from bnsym.symbolic.layers import LAYERS, derivation
from bnsym.symbolic.reduction import BatchSum, Field

FAMILY = [name for name in LAYERS if name != "batch_norm"]
FIRST_ORDER_SIZES = (1, 2, 3, 4, 5)
SECOND_ORDER_SIZES = (1, 2, 3, 4)


@pytest.mark.parametrize("n", FIRST_ORDER_SIZES, ids=lambda n: f"M={n}")
@pytest.mark.parametrize("name", FAMILY)
def test_backward_matches_brute_force(name, n):
    cross_check.backward(derivation(name), n)


@pytest.mark.parametrize("n", SECOND_ORDER_SIZES, ids=lambda n: f"M={n}")
@pytest.mark.parametrize("name", FAMILY)
def test_double_backward_matches_brute_force(name, n):
    """gx, ggamma, gdy against the derivatives of sum(ggx dx) + sum(gggamma dgamma) (+ sum(ggbeta dbeta)), with
    the first-order gradients themselves from the full Jacobian."""
    cross_check.double_backward(derivation(name), n)


@pytest.mark.parametrize("n", FIRST_ORDER_SIZES, ids=lambda n: f"M={n}")
@pytest.mark.parametrize("name", FAMILY)
def test_jvp_matches_brute_force(name, n):
    cross_check.jvp(derivation(name), n)


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
    elements, _, brute = cross_check.first_order(layer, 3)
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
