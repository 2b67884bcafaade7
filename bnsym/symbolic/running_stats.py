"""Running statistics: the update of each convention (:mod:`bnsym.conventions`) as a SymPy expression.

These are conventions, not derivatives: the choices and where they come from are data in :mod:`bnsym.conventions`
(SymPy-free, so that the runtime can read them); this module turns each convention into

    new = (1 - f) * running + f * batch,

with f, the weight of the new batch, from the convention's choices (m the momentum, n the batches seen including
this one): m or 1 - m by ``momentum_weighs``, (1 - d) / (1 - d^n) with d = 1 - (that weight) when ``debiased``,
1 / n when ``cumulative``. The unbiased variance, sum_i (x_i - mean)^2 / (M - 1), is rewritten in terms of the
biased variance that the forward pass computes; :func:`bessel_corrected_variance` proves that rewrite from the
forward definition.
"""

from __future__ import annotations

from functools import cache

import sympy

from bnsym.conventions import CONVENTIONS, Convention
from bnsym.symbolic.layers import Derivation
from bnsym.symbolic.reduction import BatchSum, M
from bnsym.symbolic.rewrite import prove_fact

__all__ = ["CONVENTIONS", "Convention", "RUNNING", "bessel_corrected_variance", "new_name", "update", "weight"]


class _Running:
    def __init__(self):
        # The same symbols as every layer's (bnsym.symbolic.layers.LayerSymbols): equal by name and assumptions.
        self.running_mean = sympy.Symbol("running_mean", real=True)
        self.running_var = sympy.Symbol("running_var", nonnegative=True)
        self.momentum = sympy.Symbol("momentum", real=True)
        self.num_batches_tracked = sympy.Symbol("num_batches_tracked", positive=True, integer=True)
        self.new_mean = sympy.Symbol("new_mean", real=True)
        self.new_var = sympy.Symbol("new_var", nonnegative=True)


RUNNING = _Running()


@cache
def bessel_corrected_variance(layer: Derivation) -> sympy.Expr:
    """The unbiased batch variance in terms of the biased ``var``: M var / (M - 1), proved from ``layer``'s forward
    pass."""
    s = layer.symbols
    definition = BatchSum((s.x - s.mean) ** 2) / (M - 1)
    rewritten = M * s.var / (M - 1)
    if not prove_fact(layer.training_forward, definition, rewritten):
        raise AssertionError("the unbiased variance is not M var / (M - 1)")
    return rewritten


def weight(convention: Convention) -> sympy.Expr:
    """f, the weight of the new batch, in ``momentum`` and ``num_batches_tracked`` (module docstring)."""
    r = RUNNING
    if convention.cumulative:
        return 1 / r.num_batches_tracked
    f = r.momentum if convention.momentum_weighs == "new" else 1 - r.momentum
    if convention.debiased:
        decay = 1 - f
        return f / (1 - decay**r.num_batches_tracked)
    return f


def new_name(running: sympy.Symbol) -> sympy.Symbol:
    """The name of a running statistic's updated value: ``new_mean`` for ``running_mean``, ``new_std`` for
    ``running_std``."""
    return sympy.Symbol("new_" + running.name.removeprefix("running_"), **running.assumptions0)


def update(layer: Derivation, convention: Convention) -> tuple[sympy.Expr, ...]:
    """The updated value of each of ``layer``'s running statistics (``LayerSpec.running``) for ``convention``, in
    the batch's ``mean`` and biased ``var`` (and eps): ``(new_mean, new_var)`` for batch norm.

    A running statistic averages a step of the forward pass (mean, var; batch renormalisation's sigma =
    sqrt(var + eps)), written here in mean and var; a convention with the unbiased variance puts M var / (M - 1) in
    place of var wherever the step uses it."""
    s = layer.symbols
    f = weight(convention)
    forward = layer.training_forward
    keep = (s.mean, s.var)
    batch_var = bessel_corrected_variance(layer) if convention.unbiased else s.var
    updates = []
    for running, step in zip(layer.running, (step for _, step in layer.declaration.spec.running)):
        step = layer.step(step)
        batch = step if step in keep else forward.inline(step, keep=keep)
        updates.append((1 - f) * running + f * batch.xreplace({s.var: batch_var}))
    return tuple(updates)
