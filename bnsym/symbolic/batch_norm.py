"""Batch normalisation, written once, and everything derived from it.

The training forward pass for one channel of M values is :func:`training_forward`, the only place batch norm is
written down:

    mean   = (1/M) sum_i x_i
    var    = (1/M) sum_i (x_i - mean)^2          biased, two-pass: never E[x^2] - E[x]^2
    invstd = 1 / sqrt(var + eps)
    x_hat  = (x - mean) * invstd
    y      = gamma * x_hat + beta

Every other quantity is derived from it by :mod:`bnsym.symbolic.program` (reverse and forward mode) and brought to
a compact closed form by :mod:`bnsym.symbolic.rewrite`. Derivations are cached: each runs once per process.
"""

from __future__ import annotations

from functools import cache

import sympy

from bnsym import naming
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, Field, M
from bnsym.symbolic.rewrite import Fact, Vocabulary, closed_form, prove_fact

__all__ = ["SYMBOLS", "backward", "closed_form_of", "double_backward", "facts", "identity_recovery_holds",
           "inference_backward", "inference_double_backward", "inference_forward", "inference_vocabulary", "jvp",
           "training_forward", "vocabulary"]


class _Symbols:
    """Every symbol of the batch-norm derivations, created once so that all derivations share them."""

    def __init__(self):
        field = lambda name: Field(name, real=True)  # noqa: E731
        scalar = lambda name, **kw: sympy.Symbol(name, **(kw or {"real": True}))  # noqa: E731
        self.x, self.y, self.x_hat, self.dy = field("x"), field("y"), field("x_hat"), field(naming.adjoint("y"))
        self.gamma, self.beta = scalar("gamma"), scalar("beta")
        self.eps = scalar("eps", positive=True)
        self.mean = scalar("mean")
        self.var = scalar("var", nonnegative=True)
        self.invstd = scalar("invstd", positive=True)
        self.running_mean = scalar("running_mean")
        self.running_var = scalar("running_var", nonnegative=True)
        # Cotangents a double backward receives for dx, dgamma, dbeta; tangents a JVP receives for x, gamma, beta.
        self.ggx = field("gg" + "x")
        self.gggamma, self.ggbeta = scalar("gg" + "gamma"), scalar("gg" + "beta")
        self.tx = field(naming.tangent("x"))
        self.tgamma, self.tbeta = scalar(naming.tangent("gamma")), scalar(naming.tangent("beta"))
        self.M = M


SYMBOLS = _Symbols()


def training_forward() -> Program:
    """The training-mode forward pass: (x, gamma, beta, eps) -> (y, mean, invstd)."""
    s = SYMBOLS
    return Program(
        inputs=[s.x, s.gamma, s.beta, s.eps],
        definitions=[
            Definition(s.mean, BatchSum(s.x) / M),
            Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
            Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)),
            Definition(s.x_hat, (s.x - s.mean) * s.invstd),
            Definition(s.y, s.gamma * s.x_hat + s.beta),
        ],
        outputs=[s.y, s.mean, s.invstd],
    )


@cache
def facts() -> tuple[Fact, ...]:
    """Identities about the forward pass, each proved from :func:`training_forward` before it is used."""
    s = SYMBOLS
    claims = (
        Fact(BatchSum(s.x_hat), sympy.S.Zero, "the normalised values have mean zero"),
        Fact(BatchSum(s.x_hat**2), M * (1 - s.eps * s.invstd**2),
             "the normalised values have mean square var/(var + eps), not 1"),
    )
    forward = training_forward()
    for fact in claims:
        if not prove_fact(forward, fact.lhs, fact.rhs):
            raise AssertionError(f"could not prove {fact.lhs} = {fact.rhs} from the forward definition")
    return claims


@cache
def vocabulary() -> Vocabulary:
    """Closed forms of batch norm speak of x_hat, the saved mean and invstd, and the inputs."""
    s = SYMBOLS
    eliminate = ((s.x, s.mean + s.x_hat / s.invstd), (s.var, s.invstd**-2 - s.eps))
    forward = training_forward()
    for name, replacement in eliminate:
        if not prove_fact(forward, name, replacement):
            raise AssertionError(f"{name} = {replacement} is not an identity of the forward pass")
    return Vocabulary(forward=forward, keep=(s.x_hat, s.mean, s.invstd), eliminate=eliminate, facts=facts())


def identity_recovery_holds() -> bool:
    """Proves that gamma = sqrt(var + eps) and beta = mean give y = x."""
    s = SYMBOLS
    forward = training_forward()
    substituted = forward.inline(s.y).xreplace(
        {s.gamma: sympy.sqrt(forward.inline(s.var) + s.eps), s.beta: forward.inline(s.mean)})
    return prove_fact(forward, substituted, s.x)


def closed_form_of(program: Program, name: sympy.Symbol) -> sympy.Expr:
    """Any name of a derived batch-norm program, in closed form in the batch-norm vocabulary."""
    s = SYMBOLS
    return closed_form(program, name, vocabulary(), collect_over=(s.dy, s.x_hat))


@cache
def backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """The training backward pass: the derived program, and the closed form of dx, dgamma and dbeta."""
    s = SYMBOLS
    program = training_forward().vjp({s.y: s.dy}, [s.x, s.gamma, s.beta],
                                     name=lambda v: naming.adjoint(v.name))
    closed = {out: closed_form_of(program, out) for out in program.outputs}
    return program, closed


# -- inference mode ------------------------------------------------------------------------------------------------


@cache
def inference_forward() -> Program:
    """Eval mode: the training forward pass with the batch statistics frozen to given running statistics.

    Nothing is re-typed: :meth:`Program.freeze` replaces the definitions of ``mean`` and ``var`` by the inputs
    ``running_mean`` and ``running_var``, and keeps everything downstream.
    """
    s = SYMBOLS
    frozen = training_forward().freeze({s.mean: s.running_mean, s.var: s.running_var})
    return Program(frozen.inputs, frozen.definitions, [s.y]).prune()


@cache
def inference_vocabulary() -> Vocabulary:
    """Closed forms in eval mode speak of x_hat = (x - running_mean) * invstd and invstd = 1/sqrt(running_var+eps).

    No reduction facts apply: x_hat does not have mean zero over a batch in eval mode.
    """
    s = SYMBOLS
    forward = inference_forward()
    eliminate = ((s.x, s.running_mean + s.x_hat / s.invstd),)
    for name, replacement in eliminate:
        if not prove_fact(forward, name, replacement):
            raise AssertionError(f"{name} = {replacement} is not an identity of the eval forward pass")
    return Vocabulary(forward=forward, keep=(s.x_hat, s.invstd), eliminate=eliminate, facts=())


def _closed(program: Program, vocab: Vocabulary, collect_over) -> dict[sympy.Symbol, sympy.Expr]:
    return {out: closed_form(program, out, vocab, collect_over=collect_over) for out in program.outputs}


@cache
def inference_backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Eval-mode backward: reverse mode through :func:`inference_forward`; closed forms of dx, dgamma, dbeta."""
    s = SYMBOLS
    program = inference_forward().vjp({s.y: s.dy}, [s.x, s.gamma, s.beta], name=lambda v: naming.adjoint(v.name))
    return program, _closed(program, inference_vocabulary(), (s.dy, s.x_hat))


# -- second order ------------------------------------------------------------------------------------------------


def _backward_as_program(forward: Program, closed: dict[sympy.Symbol, sympy.Expr], statistics) -> Program:
    """The first-order backward as a program of x, gamma and dy: the forward definitions it needs (so that the
    statistics depend on x again) followed by the closed forms of dx, dgamma, dbeta."""
    s = SYMBOLS
    needed = [d for d in forward.definitions if d.name in statistics]
    outputs = list(closed)
    definitions = needed + [Definition(name, closed[name]) for name in outputs]
    inputs = [i for i in forward.inputs if i != s.beta] + [s.dy]
    return Program(inputs, definitions, outputs)


def _second_order(first: Program, closed, forward: Program, statistics, vocab: Vocabulary):
    s = SYMBOLS
    program = _backward_as_program(forward, closed, statistics)
    dx, dgamma, dbeta = first.outputs
    seeds = {dx: s.ggx, dgamma: s.gggamma, dbeta: s.ggbeta}
    derived = program.vjp(seeds, [s.x, s.gamma, s.dy], name=lambda v: naming.second_order(v.name))
    return derived, _closed(derived, vocab, (s.ggx, s.dy, s.x_hat))


@cache
def double_backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Training double backward: the gradients of <ggx, dx> + gggamma dgamma + ggbeta dbeta with respect to x,
    gamma and dy, by reverse mode through the derived backward (whose mean and invstd depend on x)."""
    s = SYMBOLS
    first, closed = backward()
    return _second_order(first, closed, training_forward(), {s.mean, s.var, s.invstd, s.x_hat}, vocabulary())


@cache
def inference_double_backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Eval-mode double backward: as :func:`double_backward`, with the running statistics constant."""
    s = SYMBOLS
    first, closed = inference_backward()
    return _second_order(first, closed, inference_forward(), {s.invstd, s.x_hat}, inference_vocabulary())


# -- forward mode ------------------------------------------------------------------------------------------------


@cache
def jvp() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Training forward mode: the tangent ty of y when x, gamma, beta move along tx, tgamma, tbeta."""
    s = SYMBOLS
    forward = Program(training_forward().inputs, training_forward().definitions, [s.y])
    program = forward.jvp({s.x: s.tx, s.gamma: s.tgamma, s.beta: s.tbeta}, name=lambda v: naming.tangent(v.name))
    y, ty = program.outputs
    return program, {ty: closed_form(program, ty, vocabulary(), collect_over=(s.tx, s.x_hat))}
