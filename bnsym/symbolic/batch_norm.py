"""Batch normalisation: the first declared layer of :mod:`bnsym.symbolic.layers`, under its historical names.

Batch norm is the centred forward pass (:func:`bnsym.symbolic.layers.centred_forward`) for one channel of M values,
with one gamma and beta per channel and running statistics:

    mean   = (1/M) sum_i x_i
    var    = (1/M) sum_i (x_i - mean)^2          biased, two-pass: never E[x^2] - E[x]^2
    invstd = 1 / sqrt(var + eps)
    x_hat  = (x - mean) * invstd
    y      = gamma * x_hat + beta

Everything here is the layer's :class:`~bnsym.symbolic.layers.Derivation`; these functions name its parts.
"""

from __future__ import annotations

import sympy

from bnsym.symbolic.layers import derivation
from bnsym.symbolic.program import Program
from bnsym.symbolic.rewrite import Fact, Vocabulary

__all__ = ["SYMBOLS", "backward", "closed_form_of", "double_backward", "facts", "identity_recovery_holds",
           "inference_backward", "inference_double_backward", "inference_forward", "inference_vocabulary", "jvp",
           "training_forward", "vocabulary"]

_LAYER = derivation("batch_norm")

#: Every symbol of the batch-norm derivations (gamma and beta are channel scalars).
SYMBOLS = _LAYER.symbols


def training_forward() -> Program:
    """The training-mode forward pass: (x, gamma, beta, eps) -> (y, mean, invstd)."""
    return _LAYER.training_forward


def facts() -> tuple[Fact, ...]:
    """Identities about the forward pass, each proved from :func:`training_forward` before it is used."""
    return _LAYER.facts


def vocabulary() -> Vocabulary:
    """Closed forms of batch norm speak of x_hat, the saved mean and invstd, and the inputs."""
    return _LAYER.vocabulary


def identity_recovery_holds() -> bool:
    """Proves that gamma = sqrt(var + eps) and beta = mean give y = x."""
    return _LAYER.identity_recovery_holds()


def closed_form_of(program: Program, name: sympy.Symbol) -> sympy.Expr:
    """Any name of a derived batch-norm program, in closed form in the batch-norm vocabulary."""
    return _LAYER.closed_form_of(program, name)


def backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """The training backward pass: the derived program, and the closed form of dx, dgamma and dbeta."""
    return _LAYER.backward


def inference_forward() -> Program:
    """Eval mode: the training forward pass with mean and var frozen to running_mean and running_var."""
    return _LAYER.inference_forward


def inference_vocabulary() -> Vocabulary:
    """Closed forms in eval mode speak of x_hat = (x - running_mean) * invstd and invstd."""
    return _LAYER.inference_vocabulary


def inference_backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Eval-mode backward: reverse mode through :func:`inference_forward`; closed forms of dx, dgamma, dbeta."""
    return _LAYER.inference_backward


def double_backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Training double backward: gradients of <ggx, dx> + gggamma dgamma + ggbeta dbeta w.r.t. x, gamma, dy."""
    return _LAYER.double_backward


def inference_double_backward() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Eval-mode double backward: as :func:`double_backward`, with the running statistics constant."""
    return _LAYER.inference_double_backward


def jvp() -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
    """Training forward mode: the tangent ty of y when x, gamma, beta move along tx, tgamma, tbeta."""
    return _LAYER.jvp
