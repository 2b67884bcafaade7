"""Running statistics: how each framework folds a batch's mean and variance into its running estimates.

These are conventions, not derivatives: ``docs/conventions.md`` has the facts, read from each framework's source.
Every convention is one exponential moving average,

    new = (1 - f) * running + f * batch,

with f, the weight of the new batch, and the variance estimator chosen by the convention:

* ``torch``: f = momentum (default 0.1), running_var from the *unbiased* batch variance
  (``torch.nn.BatchNorm*d``, ``torch.nn.functional.batch_norm``);
* ``keras``: f = 1 - momentum (default 0.99: momentum weighs the old value), biased variance
  (``keras.layers.BatchNormalization``);
* ``flax``: as keras (``flax.linen.BatchNorm``, momentum 0.99, biased);
* ``cumulative``: f = 1 / n after n batches, the cumulative average, unbiased (PyTorch with ``momentum=None``,
  where n is ``num_batches_tracked`` after it has counted the current batch).

The unbiased variance, sum_i (x_i - mean)^2 / (M - 1), is rewritten in terms of the biased variance that the
forward pass computes; :func:`bessel_corrected_variance` proves that rewrite from the forward definition.
"""

from __future__ import annotations

from functools import cache

import sympy

from bnsym.conventions import CONVENTIONS, Convention
from bnsym.symbolic import batch_norm as bn
from bnsym.symbolic.reduction import BatchSum, M
from bnsym.symbolic.rewrite import prove_fact

__all__ = ["CONVENTIONS", "Convention", "RUNNING", "bessel_corrected_variance", "update"]


class _Running:
    def __init__(self):
        self.running_mean = bn.SYMBOLS.running_mean
        self.running_var = bn.SYMBOLS.running_var
        self.momentum = sympy.Symbol("momentum", real=True)
        self.num_batches_tracked = sympy.Symbol("num_batches_tracked", positive=True, integer=True)
        self.new_mean = sympy.Symbol("new_mean", real=True)
        self.new_var = sympy.Symbol("new_var", nonnegative=True)


RUNNING = _Running()


@cache
def bessel_corrected_variance() -> sympy.Expr:
    """The unbiased batch variance in terms of the biased ``var``: M var / (M - 1), proved from the forward pass."""
    s = bn.SYMBOLS
    definition = BatchSum((s.x - s.mean) ** 2) / (M - 1)
    rewritten = M * s.var / (M - 1)
    if not prove_fact(bn.training_forward(), definition, rewritten):
        raise AssertionError("the unbiased variance is not M var / (M - 1)")
    return rewritten


def update(convention: Convention) -> tuple[sympy.Expr, sympy.Expr]:
    """``(new_mean, new_var)`` for ``convention``, in the batch's ``mean`` and biased ``var``."""
    s, r = bn.SYMBOLS, RUNNING
    weight = {"new": r.momentum, "old": 1 - r.momentum, None: 1 / r.num_batches_tracked}[convention.momentum_weighs]
    batch_var = bessel_corrected_variance() if convention.unbiased else s.var
    return ((1 - weight) * r.running_mean + weight * s.mean, (1 - weight) * r.running_var + weight * batch_var)
