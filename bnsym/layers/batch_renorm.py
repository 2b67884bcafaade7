"""Batch renormalisation (Ioffe, 2017): batch norm whose batch statistics are corrected towards the running ones by
r and d, which the backward pass holds constant. Per channel, over the batch and every spatial position::

    mean   = (1/M) sum_i x_i,    var = (1/M) sum_i (x_i - mean)^2        biased, two-pass
    sigma  = sqrt(var + eps),    invstd = 1 / sigma
    x_hat  = (x - mean) * invstd
    r      = stop_gradient(clip(sigma / running_std, 1/r_max, r_max))
    d      = stop_gradient(clip((mean - running_mean) / running_std, -d_max, d_max))
    y      = gamma * (r * x_hat + d) + beta

running_mean and running_std are the running statistics *before* this batch's update; the update averages mean and
sigma into them (``running``: a running standard deviation, not a running variance). Eval mode is batch norm with
the running statistics: y = gamma * (x - running_mean) / running_std + beta (r = 1, d = 0). r_max >= 1 and
d_max >= 0 are scalar options (the paper's final values 3 and 5 by default; it starts at 1 and 0, plain batch norm).
A channel of one value is computed, as Keras does (var = 0, x_hat = 0, y = gamma * d + beta), not refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnsym.spec.groupings import Channels
from bnsym.spec.layer_spec import CHANNEL_REGIMES, LayerSpec

if TYPE_CHECKING:
    from bnsym.symbolic.layers import LayerSymbols
    from bnsym.symbolic.program import Program


def _steps():
    """The layer's own steps besides the centred ones: sigma, r and d (equal by name wherever they are made)."""
    import sympy

    return (sympy.Symbol("sigma", positive=True), sympy.Symbol("r", positive=True), sympy.Symbol("d", real=True))


def forward(s: LayerSymbols) -> Program:
    """The training forward pass for one channel: (x, gamma, beta, eps, running_mean, running_std, r_max, d_max)
    -> (y, mean, invstd), the running statistics read before they are updated and never differentiated."""
    import sympy

    from bnsym.symbolic.program import Definition, Program
    from bnsym.symbolic.reduction import BatchSum, M, StopGradient

    sigma, r, d = _steps()
    clip = lambda value, low, high: sympy.Min(sympy.Max(value, low), high)  # noqa: E731
    return Program(
        inputs=[s.x, s.gamma, s.beta, s.eps, s.running_mean, s.running_std, s.r_max, s.d_max],
        definitions=[
            Definition(s.mean, BatchSum(s.x) / M),
            Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
            Definition(sigma, sympy.sqrt(s.var + s.eps)),
            Definition(s.invstd, 1 / sigma),
            Definition(s.x_hat, (s.x - s.mean) * s.invstd),
            Definition(r, StopGradient(clip(sigma / s.running_std, 1 / s.r_max, s.r_max))),
            Definition(d, StopGradient(clip((s.mean - s.running_mean) / s.running_std, -s.d_max, s.d_max))),
            # gamma (r x_hat + d) + beta, expanded: a scale of x_hat and a shift per channel.
            Definition(s.y, s.gamma * r * s.x_hat + s.gamma * d + s.beta),
        ],
        outputs=[s.y, s.mean, s.invstd],
    )


def inference(s: LayerSymbols) -> dict:
    """Eval mode: the batch's mean and sigma are the running ones, and there is nothing left to correct."""
    sigma, r, d = _steps()
    return {s.mean: s.running_mean, sigma: s.running_std, r: 1, d: 0}


BATCH_RENORM = LayerSpec(
    "batch_renorm", "Batch renormalisation", "batch renorm", "centred", Channels(), eps=1e-3,
    regimes=CHANNEL_REGIMES, running_statistics=True, forward=forward, inference=inference,
    running={"running_mean": "mean", "running_std": "sigma"}, reads_running=True,
    scalars={"r_max": 3.0, "d_max": 5.0},
    group="one channel: its values over the batch and every spatial position",
    statistics_over="every axis but the channel axis", parameters_are="one value per channel",
    conventions=(
        "Ioffe (2017), Algorithm 1: r = clip(sigma_B / sigma, 1/r_max, r_max) and d = clip((mu_B - mu) / sigma, "
        "-d_max, d_max) from the running mean and standard deviation before this batch's update, both held "
        "constant in the backward pass (stop-gradient); sigma_B = sqrt(var_B + eps) with the biased variance.",
        "The running statistics are a mean and a standard deviation: running_std averages sigma_B, eps included. "
        "Eval mode is y = gamma * (x - running_mean) / running_std + beta.",
        "Keras's `BatchNormalization(renorm=True)` is this layer only with `momentum == renorm_momentum` and "
        "`renorm_clipping={'rmin': 1/rmax, 'rmax': rmax, 'dmax': dmax}` (docs/batch-renorm.md)."))
