"""The vocabulary for values the backward pass holds constant: StopGradient, inputs of the training forward that are
never differentiated (running statistics it reads), scalar options, and a declared eval mode.

A small made-up layer shows each: batch norm whose output is scaled by c = stop_gradient(min(sigma / running_std,
s_max)), a factor read from the running statistics that no derivative flows through. The derivation must treat c as
a constant, the brute-force Jacobians at small M must too (and tell the two apart), and the declaration's checks must
know the new inputs.
"""

import pytest
import sympy

from bnsym.spec import Channels, LayerSpec, register, unregister
from bnsym.spec.layer_spec import CHANNEL_REGIMES
from bnsym.symbolic.brute_force import Elements, difference_is_zero, instantiate, jacobian_vector_product
from bnsym.symbolic.checks import DeclarationError
from bnsym.symbolic.layers import derivation
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, M, StopGradient


def _steps(s, stop=True):
    sigma, c = sympy.Symbol("sigma", positive=True), sympy.Symbol("c", positive=True)
    factor = sympy.Min(sigma / s.running_std, s.s_max)
    return sigma, c, [
        Definition(s.mean, BatchSum(s.x) / M),
        Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
        Definition(sigma, sympy.sqrt(s.var + s.eps)),
        Definition(s.invstd, 1 / sigma),
        Definition(s.x_hat, (s.x - s.mean) * s.invstd),
        Definition(c, StopGradient(factor) if stop else factor),
        Definition(s.y, s.gamma * c * s.x_hat + s.beta),
    ]


def _forward(s):
    _, _, steps = _steps(s)
    return Program([s.x, s.gamma, s.beta, s.eps, s.running_mean, s.running_std, s.s_max], steps,
                   [s.y, s.mean, s.invstd])


def _forward_without_the_running_mean(s):
    _, _, steps = _steps(s)
    return Program([s.x, s.gamma, s.beta, s.eps, s.running_std, s.s_max], steps, [s.y, s.mean, s.invstd])


def _inference(s):
    sigma, c, _ = _steps(s)
    return {s.mean: s.running_mean, sigma: s.running_std, c: 1}


def _spec(name, forward, **fields):
    fields = {"running": {"running_mean": "mean", "running_std": "sigma"}, "scalars": {"s_max": 2.0}, **fields}
    return LayerSpec(name, "Scaled batch normalisation", "scaled batch norm", "centred", Channels(), eps=1e-5,
                     regimes=CHANNEL_REGIMES, running_statistics=True, forward=forward, reads_running=True,
                     inference=_inference, group="one channel", statistics_over="every axis but the channel axis",
                     parameters_are="one value per channel", **fields)


@pytest.fixture(scope="module")
def scaled():
    register(_spec("test_scaled", _forward))
    yield derivation("test_scaled")
    unregister("test_scaled")


def test_a_stop_gradient_has_no_derivative_and_no_reduction_inside_it_gets_an_adjoint():
    x, u = sympy.Symbol("x_0", real=True), sympy.Symbol("u", real=True)
    assert sympy.diff(StopGradient(u**2) * u, u) == StopGradient(u**2)
    assert sympy.diff(StopGradient(sympy.Min(u, 1)) * x, u) == 0


def test_the_derivation_holds_the_stop_gradient_constant_and_brute_force_agrees(scaled):
    """dx of y = gamma c x_hat + beta with c constant is c times batch norm's dx; brute force at M = 3 (sympy.diff
    through the explicit forward) agrees, and it disagrees with the same layer without the stop-gradient."""
    s = scaled.symbols
    program, closed = scaled.backward
    dx = program.outputs[0]
    assert closed[dx].has(StopGradient)
    elements = Elements(3)
    ys = [instantiate(s.y, elements, i, scaled.training_forward) for i in range(3)]
    brute = jacobian_vector_product(ys, elements[s.x], elements[s.dy])
    for i in range(3):
        assert difference_is_zero(instantiate(closed[dx], elements, i, scaled.training_forward), brute[i])
    # The same forward with c differentiated: its brute-force dx is another function (c depends on sigma).
    _, _, unstopped = _steps(s, stop=False)
    forward = Program(scaled.training_forward.inputs, unstopped, scaled.training_forward.outputs)
    ys = [instantiate(s.y, elements, i, forward) for i in range(3)]
    unstopped_dx = jacobian_vector_product(ys, elements[s.x], elements[s.dy])
    stopped = instantiate(closed[dx], elements, 0, scaled.training_forward)
    values = {**{v: k + 0.5 * k * k for k, v in enumerate(elements[s.x])},
              **{v: 1 - k for k, v in enumerate(elements[s.dy])}, s.gamma: 1.5, s.eps: 0.01, s.running_std: 3,
              s.s_max: 2}
    value = lambda e: float(e.replace(StopGradient, lambda a: a).subs(values))  # noqa: E731
    assert abs(value(stopped) - value(unstopped_dx[0])) > 1e-3, \
        "the comparison cannot tell a stop-gradient from none"


def test_constants_and_scalar_options_are_kernel_inputs_and_eval_mode_is_declared(scaled):
    s = scaled.symbols
    assert scaled.constants == (s.running_mean, s.running_std, s.s_max)
    assert scaled.running == (s.running_mean, s.running_std)
    assert scaled.inference_forward.inputs == (s.x, s.gamma, s.beta, s.running_mean, s.running_std)
    program, closed = scaled.inference_backward
    assert closed[program.outputs[0]] == s.dy * s.gamma * s.invstd
    assert scaled.inference_forward[s.invstd] == 1 / s.running_std


def test_a_forward_missing_a_running_statistic_it_reads_is_refused(scaled):
    register(_spec("test_scaled_missing", _forward_without_the_running_mean))
    try:
        with pytest.raises(DeclarationError, match="running_mean"):
            derivation("test_scaled_missing")
    finally:
        unregister("test_scaled_missing")


@pytest.mark.parametrize("fields, message", [
    ({"scalars": {"eps": 1.0}}, "scalar option's name"),
    ({"scalars": {"s_max": "2"}}, "must be a real number"),
    ({"running": {"mean": "mean"}}, "running maps"),
])
def test_bad_scalar_options_and_running_statistics_are_refused(fields, message):
    with pytest.raises((TypeError, ValueError), match=message):
        _spec("test_bad", _forward, **{k: v for k, v in fields.items()})


def test_running_statistics_fields_need_a_layer_that_keeps_them():
    with pytest.raises(ValueError, match="running_statistics=False"):
        LayerSpec("test_bad", "T", "t", "centred", Channels(), eps=1e-5, regimes=CHANNEL_REGIMES,
                  reads_running=True, group="g", statistics_over="s", parameters_are="p")
