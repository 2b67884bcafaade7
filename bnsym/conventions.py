"""Running-statistics conventions of the frameworks, as plain data (no SymPy): shared by the runtime
(:mod:`bnsym.running_stats`), the derivation (:mod:`bnsym.symbolic.running_stats`) and the checker.

Every convention is one exponential moving average ``new = (1 - f) * running + f * batch``; a convention says what
f is and which variance estimator the running variance receives (``docs/conventions.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONVENTIONS", "Convention"]


@dataclass(frozen=True)
class Convention:
    """One framework's running-statistics update.

    * ``name``: the name bnsym uses (``--convention`` of ``bnsym check``).
    * ``default_momentum``: the framework's default, None where the update takes a batch count instead.
    * ``momentum_weighs``: ``"new"`` when momentum is the weight of the batch, ``"old"`` when it is the weight of the
      running value, None for the cumulative average.
    * ``unbiased``: whether running_var receives the Bessel-corrected batch variance.
    * ``source``: where the convention comes from.
    """

    name: str
    default_momentum: float | None
    momentum_weighs: str | None
    unbiased: bool
    source: str


CONVENTIONS = {
    c.name: c
    for c in (
        Convention("torch", 0.1, "new", True, "torch.nn.BatchNorm1d/2d/3d: r = (1 - momentum) r + momentum b, "
                                               "running_var from the unbiased batch variance"),
        Convention("keras", 0.99, "old", False, "keras.layers.BatchNormalization: r = momentum r + (1 - momentum) b, "
                                                "biased variance"),
        Convention("flax", 0.99, "old", False, "flax.linen.BatchNorm: r = momentum r + (1 - momentum) b, biased "
                                               "variance"),
        Convention("cumulative", None, None, True, "torch.nn.BatchNorm*d with momentum=None: r = (1 - 1/n) r + "
                                                   "(1/n) b after n batches, unbiased variance"),
    )
}
