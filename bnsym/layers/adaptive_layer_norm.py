"""Adaptive layer normalisation (DiT's adaLN): layer norm over the trailing axes whose scale and shift come per
sample, from a conditioning vector, and scale by ``1 + scale``::

    mean   = (1/M) sum_i x_i                 per row, over the trailing normalised axes (the last one in DiT)
    var    = (1/M) sum_i (x_i - mean)^2      biased, two-pass
    invstd = 1 / sqrt(var + eps)
    x_hat  = (x - mean) * invstd
    y      = (1 + gamma) * x_hat + beta

x is (N, ..., D) (DiT: (N, T, D), T tokens per image); gamma and beta are (N, D): one row per sample, the same for
every token of that sample (DiT's ``modulate(x, shift, scale) = x * (1 + scale.unsqueeze(1)) +
shift.unsqueeze(1)``, after ``nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)``). So **gamma is DiT's scale and
beta its shift**; their gradients are per sample, summed over the middle axes (the tokens), never over the batch.
``gamma=None`` and ``beta=None`` mean a zero scale and shift (the neutral values): y is the normalised input, as in
DiT's adaLN-Zero at initialisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnsym.spec.groupings import SampleTrailingAxes
from bnsym.spec.layer_spec import CENTRED_REGIMES, LayerSpec

if TYPE_CHECKING:
    from bnsym.symbolic.layers import LayerSymbols
    from bnsym.symbolic.program import Program


def forward(s: LayerSymbols) -> Program:
    """The training forward pass for one row: (x, gamma, beta, eps) -> (y, mean, invstd), gamma and beta the row's
    sample's scale and shift."""
    import sympy

    from bnsym.symbolic.program import Definition, Program
    from bnsym.symbolic.reduction import BatchSum, M

    return Program(
        inputs=[s.x, s.gamma, s.beta, s.eps],
        definitions=[
            Definition(s.mean, BatchSum(s.x) / M),
            Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
            Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)),
            Definition(s.x_hat, (s.x - s.mean) * s.invstd),
            Definition(s.y, (1 + s.gamma) * s.x_hat + s.beta),
        ],
        outputs=[s.y, s.mean, s.invstd],
    )


ADAPTIVE_LAYER_NORM = LayerSpec(
    "adaptive_layer_norm", "Adaptive layer normalisation", "adaptive layer norm", "centred", SampleTrailingAxes(),
    eps=1e-6, regimes=CENTRED_REGIMES, forward=forward, neutral={"gamma": 0, "beta": 0},
    group="one row of x (one token of one sample) over the trailing normalised axes",
    statistics_over="the trailing normalised axes",
    parameters_are="one row per sample of the normalised shape, (N, D) for x of shape (N, ..., D): gamma the "
                   "scale (applied as 1 + gamma), beta the shift",
    conventions=(
        "DiT (Peebles and Xie, 2023) computes `shift, scale = adaLN_modulation(c).chunk(2, dim=1)` from the "
        "conditioning vector c and applies `norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)` with "
        "`norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)`: here gamma is `scale` and beta is `shift`, "
        "both of shape (N, D), and eps is 1e-6.",
        "The gradients of gamma and beta are per sample: summed over the tokens (the axes between the batch axis "
        "and the normalised ones), never over the batch. For x of shape (N, D) nothing is summed.",
        "`gamma=None` and `beta=None` mean zero (no modulation), not gamma = 1."))
