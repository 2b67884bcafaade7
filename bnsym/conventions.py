"""Running-statistics conventions: how a framework folds a batch's mean and variance into its running estimates.

This module is data only (no SymPy): the runtime (:mod:`bnsym.running_stats`), the derivation
(:mod:`bnsym.symbolic.running_stats`, which turns a convention into the update that ``bnsym derive`` generates) and
the checker (``bnsym check --convention``) all read it.

Every convention is one exponential moving average with f, the weight of the new batch,

    new = (1 - f) * running + f * batch,

described by four independent choices:

* ``momentum_weighs``: ``"new"`` when the momentum m is the weight of the batch (f = m, PyTorch), ``"old"`` when it
  is the weight of the running value (f = 1 - m, Keras, Flax, Chainer's ``decay``, Haiku's ``decay_rate``);
* ``unbiased``: whether running_var receives the Bessel-corrected batch variance var * M / (M - 1) rather than the
  biased var the forward pass normalises with;
* ``debiased``: zero-debiasing (Adam's, Haiku's ``ExponentialMovingAverage``): the average is kept as a hidden
  value started at zero and divided by 1 - d^n after n batches, d = 1 - f the decay; in terms of the debiased
  averages this is the update above with f = (1 - d) / (1 - d^n), which puts all the weight on the first batch;
* ``cumulative``: the plain average of the n batches seen, f = 1 / n, with no momentum (PyTorch's
  ``momentum=None``).

n counts the batches seen *including* the current one (PyTorch and Haiku increment their counters before the
update); only ``debiased`` and ``cumulative`` conventions read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONVENTIONS", "Convention", "matching"]


@dataclass(frozen=True)
class Convention:
    """One running-statistics convention (module docstring), and the framework default of its momentum."""

    name: str
    momentum_weighs: str | None  # "new", "old", or None for the cumulative average
    unbiased: bool
    debiased: bool = False
    default_momentum: float | None = None  # None: the framework has no default (Haiku), or no momentum (cumulative)
    source: str = ""

    def __post_init__(self):
        if self.momentum_weighs not in ("new", "old", None):
            raise ValueError(f"momentum_weighs must be 'new', 'old' or None, got {self.momentum_weighs!r}")
        if self.cumulative and self.debiased:
            raise ValueError("a cumulative average takes no momentum, so there is nothing to debias")

    @property
    def cumulative(self) -> bool:
        return self.momentum_weighs is None

    @property
    def uses_batch_count(self) -> bool:
        """Whether the update reads n, the number of batches seen including this one."""
        return self.cumulative or self.debiased

    def choices(self) -> tuple:
        """The independent choices, without the name, default and source: equal choices, equal updates."""
        return (self.momentum_weighs, self.unbiased, self.debiased)

    def describe(self) -> str:
        """The choices in words, for reports."""
        if self.cumulative:
            weight = "the cumulative average of the batches seen"
        else:
            weight = f"momentum weighs the {self.momentum_weighs} value"
            if self.debiased:
                weight += ", zero-debiased"
        variance = "unbiased" if self.unbiased else "biased"
        return f"{weight}; {variance} running variance"


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("torch", "new", True, default_momentum=0.1,
                   source="torch.nn.BatchNorm1d/2d/3d: r = (1 - momentum) r + momentum b, running_var from the "
                          "unbiased batch variance"),
        Convention("keras", "old", False, default_momentum=0.99,
                   source="keras.layers.BatchNormalization: r = momentum r + (1 - momentum) b, biased variance"),
        Convention("flax", "old", False, default_momentum=0.99,
                   source="flax.linen.BatchNorm: r = momentum r + (1 - momentum) b, biased variance"),
        Convention("cumulative", None, True,
                   source="torch.nn.BatchNorm*d with momentum=None: r = (1 - 1/n) r + (1/n) b after n batches, "
                          "unbiased variance"),
        Convention("chainer", "old", True, default_momentum=0.9,
                   source="chainer.links.BatchNormalization: r = decay r + (1 - decay) b, running_var from the "
                          "unbiased batch variance"),
        Convention("haiku", "old", False, debiased=True, default_momentum=0.9,
                   source="haiku.BatchNorm (hk.ExponentialMovingAverage, zero_debias=True): hidden h = decay h + "
                          "(1 - decay) b from h = 0, average h / (1 - decay^n) after n batches, biased variance "
                          "(Haiku has no default decay_rate; 0.9 is bnsym's)"),
    )
}


def matching(convention: Convention) -> list[str]:
    """The names of the presets with the same choices as ``convention`` (keras and flax are one update)."""
    return [name for name, c in CONVENTIONS.items() if c.choices() == convention.choices()]
