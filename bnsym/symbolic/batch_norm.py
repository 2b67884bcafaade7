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

__all__ = ["SYMBOLS", "backward", "closed_form_of", "facts", "identity_recovery_holds", "training_forward",
           "vocabulary"]


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
    recovered = s.y.xreplace({})  # y itself; its definition is inlined by prove_fact
    substituted = forward.inline(recovered).xreplace(
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
