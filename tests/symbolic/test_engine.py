"""The engine on programs that are not a normalisation layer: reverse mode, forward mode and code generation know
no layer, so they are tested here on a softmax, a weighted mean and a squared error over a group."""

import numpy as np
import pytest
import sympy

from bnsym.codegen.kernel import Kernel, render_kernel
from bnsym.codegen.plan import Reduce, plan_kernel
from bnsym.runtime.reduce import Reducer
from bnsym.symbolic.brute_force import Elements, difference_is_zero, instantiate, jacobian_vector_product
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, Field, M

x, t, w, y, dy = (Field(name, real=True) for name in ("x", "t", "w", "y", "dy"))
total, loss, dloss = (sympy.Symbol(name, real=True) for name in ("total", "loss", "dloss"))


def _softmax() -> Program:
    return Program([x], [Definition(total, BatchSum(sympy.exp(x))), Definition(y, sympy.exp(x) / total)], [y])


def _weighted_mean() -> Program:
    mean = sympy.Symbol("mean", real=True)
    return Program([x, w], [Definition(mean, BatchSum(w * x) / BatchSum(w)), Definition(y, x - mean)], [y, mean])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_softmax_vjp_matches_the_full_jacobian(n):
    forward = _softmax()
    backward = forward.vjp({y: dy}, [x])
    dx = backward.inline(backward.outputs[0])
    elements = Elements(n)
    ys = [instantiate(y, elements, i, forward) for i in range(n)]
    brute = jacobian_vector_product(ys, elements[x], elements[dy])
    for j in range(n):
        assert difference_is_zero(instantiate(dx, elements, j), brute[j]), f"softmax dx_{j}, M={n}"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_squared_error_gradient_is_a_broadcast_of_a_scalar_adjoint(n):
    """A group scalar output (a loss) seeds reverse mode with a scalar: d/dx of sum((x - t)^2)/M."""
    forward = Program([x, t], [Definition(loss, BatchSum((x - t) ** 2) / M)], [loss])
    backward = forward.vjp({loss: dloss}, [x, t])
    dx, dt = (backward.inline(o) for o in backward.outputs)
    assert sympy.simplify(dx - 2 * dloss * (x - t) / M) == 0
    assert sympy.simplify(dt + dx) == 0
    elements = Elements(n)
    explicit = instantiate(loss, elements, 0, forward)
    for j in range(n):
        assert difference_is_zero(instantiate(dx, elements, j), dloss * sympy.diff(explicit, elements[x][j]))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_weighted_mean_jvp_matches_directional_derivative(n):
    forward = _weighted_mean()
    tx, tw = Field("tx", real=True), Field("tw", real=True)
    program = forward.jvp({x: tx, w: tw})
    ty = program.inline(program.outputs[2])
    elements = Elements(n)
    for i in range(n):
        explicit = instantiate(y, elements, i, forward)
        brute = sum(sympy.diff(explicit, elements[x][k]) * elements[tx][k]
                    + sympy.diff(explicit, elements[w][k]) * elements[tw][k] for k in range(n))
        assert difference_is_zero(instantiate(ty, elements, i), brute), f"ty_{i}, M={n}"


def test_a_wrong_rule_is_caught():
    """The brute-force comparison can fail: a softmax gradient without its reduction term is not the Jacobian."""
    dx_wrong = dy * sympy.exp(x) / BatchSum(sympy.exp(x))
    elements = Elements(3)
    ys = [instantiate(y, elements, i, _softmax()) for i in range(3)]
    brute = jacobian_vector_product(ys, elements[x], elements[dy])
    assert not difference_is_zero(instantiate(dx_wrong, elements, 0), brute[0])


def test_program_refuses_a_name_used_before_its_definition():
    with pytest.raises(ValueError, match="before it is defined"):
        Program([x], [Definition(y, x - total), Definition(total, BatchSum(x))], [y])


def _weighted_mean_kernel() -> Kernel:
    forward = _weighted_mean()
    mean = forward.outputs[1]
    return Kernel(name="weighted_mean", inputs=(x, w), steps=((mean, forward[mean]),),
                  outputs=((y, forward[y]), (mean, mean)), summary="Centre x on its weighted mean.",
                  derived_from="A test program.")


def test_codegen_plans_independent_sums_as_one_stage():
    """sum(w x) and sum(w) do not depend on each other: one reduction stage (one pass, one round when sharded)."""
    plan = plan_kernel(_weighted_mean_kernel())
    stages = [s for s in plan.statements if isinstance(s, Reduce)]
    assert len(stages) == 1 and len(stages[0].terms) == 2, stages
    assert plan.parameters == ("x", "w", "reducer")


def test_generated_code_of_a_non_layer_program_runs_and_is_right():
    source = render_kernel(_weighted_mean_kernel())
    namespace = {"numpy": np}
    exec(compile(source, "<generated>", "exec"), namespace)
    rng = np.random.default_rng(5)
    xs, ws = rng.normal(size=(7, 3)), rng.uniform(0.5, 2.0, size=(7, 3))
    got_y, got_mean = namespace["weighted_mean"](xs, ws, Reducer(axes=(0,), count=7))
    expected_mean = (ws * xs).sum(axis=0, keepdims=True) / ws.sum(axis=0, keepdims=True)
    np.testing.assert_allclose(got_mean, expected_mean, rtol=1e-13)
    np.testing.assert_allclose(got_y, xs - expected_mean, rtol=1e-13, atol=1e-15)


def _fused_add_rms() -> tuple[Program, tuple]:
    """Fused residual add + RMS norm: h = x + r is an output and the input of the normalisation."""
    r, h, x_hat, dh = (Field(name, real=True) for name in ("r", "h", "x_hat", "dh"))
    g = Field("g", real=True)
    ms, invrms = sympy.Symbol("ms", nonnegative=True), sympy.Symbol("invrms", positive=True)
    eps = sympy.Symbol("eps", positive=True)
    program = Program([x, r, g, eps], [Definition(h, x + r), Definition(ms, BatchSum(h**2) / M),
                                       Definition(invrms, 1 / sympy.sqrt(ms + eps)),
                                       Definition(x_hat, h * invrms), Definition(y, g * x_hat)], [y, h, invrms])
    return program, (r, h, g, dh)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_vjp_with_a_seed_on_an_output_that_later_steps_use_matches_the_full_jacobian(n):
    """Two seeds, dy for y and dh for h, where h also feeds y: the adjoint of h is dh plus what y sends back, and
    x and r (h = x + r) both get it."""
    forward, (r, h, g, dh) = _fused_add_rms()
    backward = forward.vjp({y: dy, h: dh}, [x, r, g])
    elements = Elements(n)
    ys = [instantiate(y, elements, i, forward) for i in range(n)]
    hs = [instantiate(h, elements, i, forward) for i in range(n)]
    for u, adjoint in zip((x, r, g), backward.outputs):
        brute = [a + b for a, b in zip(jacobian_vector_product(ys, elements[u], elements[dy]),
                                       jacobian_vector_product(hs, elements[u], elements[dh]))]
        generic = backward.inline(adjoint)
        for j in range(n):
            assert difference_is_zero(instantiate(generic, elements, j), brute[j]), f"d{u}_{j}, M={n}"


def test_vjp_refuses_an_adjoint_named_as_the_seed_it_adds_to():
    forward, (r, h, g, dh) = _fused_add_rms()
    with pytest.raises(ValueError, match="the adjoint of h would be named dh, as its seed is"):
        forward.vjp({y: dy, h: dh}, [x, r, g], name=lambda v: f"d{v}")
