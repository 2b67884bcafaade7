"""The generic derivation (symbolic M) against a brute-force one (M scalar symbols, full Jacobian by sympy.diff)."""

from pathlib import Path

import pytest
import sympy

import bnsym
from bnsym.symbolic.brute_force import Elements, difference_is_zero, instantiate, jacobian_vector_product
from bnsym.symbolic.layers import derivation
from bnsym.symbolic.reduction import BatchSum, M

bn = derivation("batch_norm")

SIZES = range(1, 7)


def _brute_force_backward(n):
    """dx_j, dgamma, dbeta for a channel of n values, by differentiating the explicit forward pass."""
    s = bn.symbols
    forward = bn.training_forward
    elements = Elements(n)
    ys = [instantiate(s.y, elements, i, forward) for i in range(n)]
    dys = elements[s.dy]
    dx = jacobian_vector_product(ys, elements[s.x], dys)
    dgamma, dbeta = jacobian_vector_product(ys, [s.gamma, s.beta], dys)
    return elements, dx, dgamma, dbeta


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"M={n}")
def test_backward_matches_brute_force(n):
    program, closed = bn.backward
    dx_name, dgamma_name, dbeta_name = program.outputs
    elements, dx, dgamma, dbeta = _brute_force_backward(n)
    forward = bn.training_forward
    for j in range(n):
        generic = instantiate(closed[dx_name], elements, j, forward)
        assert difference_is_zero(generic, dx[j]), f"dx_{j} differs from the brute-force Jacobian at M={n}"
    assert difference_is_zero(instantiate(closed[dgamma_name], elements, 0, forward), dgamma), f"dgamma, M={n}"
    assert difference_is_zero(instantiate(closed[dbeta_name], elements, 0, forward), dbeta), f"dbeta, M={n}"


@pytest.mark.parametrize("n", [2, 3])
def test_cross_check_detects_a_wrong_backward(n):
    """The comparison itself can fail: a dx missing its mean term is not equal to the brute force."""
    s = bn.symbols
    program, closed = bn.backward
    wrong = closed[program.outputs[0]] + s.gamma * s.invstd * BatchSum(s.dy) / M
    elements, dx, _, _ = _brute_force_backward(n)
    assert not difference_is_zero(instantiate(wrong, elements, 0, bn.training_forward), dx[0])


def test_backward_is_compact():
    """The closed form uses per-channel reductions of products of fields, never an M-by-M Jacobian or E[x^2]."""
    s = bn.symbols
    program, closed = bn.backward
    sums = set().union(*(e.atoms(BatchSum) for e in closed.values()))
    assert sums == {BatchSum(s.dy), BatchSum(s.dy * s.x_hat)}, f"unexpected reductions {sums}"


def test_variance_is_never_expanded():
    """No derivation or generated expression contains sum(x**2) (the cancelling E[x^2] - E[x]^2 form)."""
    s = bn.symbols
    program, closed = bn.backward
    everything = [d.expr for d in program.definitions] + list(closed.values())
    for expr in everything:
        for total in expr.atoms(BatchSum):
            assert total.args[0] != s.x**2, f"{expr} sums x**2"
    source = open(Path(bnsym.__file__).parent / "_generated" / "batch_norm.py").read()
    assert "x**2" not in source


def test_facts_are_proved_and_false_claims_are_not():
    from bnsym.symbolic.rewrite import prove_fact

    s = bn.symbols
    forward = bn.training_forward
    assert len(bn.facts) == 2
    assert bn.identity_recovery_holds()
    assert not prove_fact(forward, BatchSum(s.x_hat**2), M), "mean(x_hat^2) is var/(var+eps), not 1"


def test_symbolic_batch_size_is_a_symbol():
    program, closed = bn.backward
    assert M in closed[program.outputs[0]].free_symbols
    assert isinstance(M, sympy.Symbol) and M.is_integer and M.is_positive


# -- the rest of the layer: every derived function against a brute-force derivation, M = 1..5 ----------------------

SECOND_ORDER_SIZES = range(1, 6)


def _explicit(forward, output, elements):
    return [instantiate(output, elements, i, forward) for i in range(elements.n)]


def _assert_agrees(generic, brute, elements, forward, what):
    """At element 0, which proves it at every element: swapping the symbols of elements 0 and j maps both sides at
    element 0 to both sides at element j (bnsym.symbolic.cross_check's docstring), so ``brute`` need only hold the
    brute force at element 0 (or of the channel scalar)."""
    actual = instantiate(generic, elements, 0, forward)
    assert difference_is_zero(actual, brute[0]), f"{what} at element 0 differs from brute force, M={elements.n}"


@pytest.mark.parametrize("n", SECOND_ORDER_SIZES, ids=lambda n: f"M={n}")
def test_inference_backward_matches_brute_force(n):
    s = bn.symbols
    forward = bn.inference_forward
    program, closed = bn.inference_backward
    dx, dgamma, dbeta = program.outputs
    elements = Elements(n)
    ys = _explicit(forward, s.y, elements)
    brute_dx = jacobian_vector_product(ys, elements[s.x], elements[s.dy])
    brute_dgamma, brute_dbeta = jacobian_vector_product(ys, [s.gamma, s.beta], elements[s.dy])
    _assert_agrees(closed[dx], brute_dx, elements, forward, "eval dx")
    _assert_agrees(closed[dgamma], [brute_dgamma], elements, forward, "eval dgamma")
    _assert_agrees(closed[dbeta], [brute_dbeta], elements, forward, "eval dbeta")


def _brute_force_double_backward(forward, n):
    """gx, ggamma, gdy by differentiating <ggx, dx> + gggamma dgamma + ggbeta dbeta, with dx, dgamma, dbeta
    themselves from the full Jacobian of the explicit forward pass; gx and gdy at element 0 (x_0 and dy_0), which
    is all that _assert_agrees compares."""
    s = bn.symbols
    elements = Elements(n)
    ys = _explicit(forward, s.y, elements)
    dys = elements[s.dy]
    dx = jacobian_vector_product(ys, elements[s.x], dys)
    dgamma, dbeta = jacobian_vector_product(ys, [s.gamma, s.beta], dys)
    loss = sum(g * d for g, d in zip(elements[s.ggx], dx)) + s.gggamma * dgamma + s.ggbeta * dbeta
    gx = [sympy.diff(loss, elements[s.x][0])]
    gdy = [sympy.diff(loss, dys[0])]
    return elements, gx, [sympy.diff(loss, s.gamma)], gdy


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("n", SECOND_ORDER_SIZES, ids=lambda n: f"M={n}")
def test_double_backward_matches_brute_force(n, mode):
    forward = bn.training_forward if mode == "train" else bn.inference_forward
    program, closed = bn.double_backward if mode == "train" else bn.inference_double_backward
    gx, ggamma, gdy = program.outputs
    elements, brute_gx, brute_ggamma, brute_gdy = _brute_force_double_backward(forward, n)
    _assert_agrees(closed[gx], brute_gx, elements, forward, f"{mode} gx")
    _assert_agrees(closed[ggamma], brute_ggamma, elements, forward, f"{mode} ggamma")
    _assert_agrees(closed[gdy], brute_gdy, elements, forward, f"{mode} gdy")


@pytest.mark.parametrize("n", SECOND_ORDER_SIZES, ids=lambda n: f"M={n}")
def test_jvp_matches_brute_force(n):
    s = bn.symbols
    forward = bn.training_forward
    program, closed = bn.jvp
    (ty,) = closed
    elements = Elements(n)
    ys = _explicit(forward, s.y, elements)
    brute = [sum(sympy.diff(y, xj) * tj for xj, tj in zip(elements[s.x], elements[s.tx]))
             + sympy.diff(y, s.gamma) * s.tgamma + sympy.diff(y, s.beta) * s.tbeta for y in ys[:1]]  # element 0
    _assert_agrees(closed[ty], brute, elements, forward, "ty")


def test_double_backward_cross_check_detects_a_missing_term():
    """Dropping one term of gx makes the comparison fail, so the test above can fail."""
    s = bn.symbols
    program, closed = bn.double_backward
    gx = program.outputs[0]
    term = next(t for t in sympy.Add.make_args(sympy.expand(closed[gx])) if t.has(s.gggamma))
    elements, brute_gx, _, _ = _brute_force_double_backward(bn.training_forward, 3)
    wrong = instantiate(closed[gx] - term, elements, 0, bn.training_forward)
    assert not difference_is_zero(wrong, brute_gx[0])
