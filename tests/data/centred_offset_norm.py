"""A layer that bnsym does not ship, with a forward pass of its own whose y is shift invariant: each row over its
trailing axes centred and scaled, then scaled by ``1 + gamma`` (gamma = 0 is no scale) and shifted by beta::

    y = (1 + gamma) * (x - mean) / sqrt(var + eps) + beta

Its twin tests/data/uncentred_offset_norm.py differs only in taking no mean. tests/testing/test_proved_properties.py
derives both and checks that the checker runs the properties that rest on an invariance exactly when bnsym derive
proved it (here y(x + c) = y(x), so ``shift_invariance`` runs), with no list of layers anywhere.
"""

from bnsym.spec import LayerSpec, TrailingAxes
from bnsym.spec.layer_spec import CENTRED_REGIMES


def forward(s):
    """(x, gamma, beta, eps) -> (y, mean, invstd) for one row."""
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


CENTRED_OFFSET_NORM = LayerSpec(
    "centred_offset_norm", "Centred offset-scale normalisation", "centred offset-scale norm", "centred",
    TrailingAxes(), eps=1e-5, regimes=CENTRED_REGIMES, forward=forward, neutral={"gamma": 0},
    group="one row of x over the trailing normalised axes", statistics_over="the trailing normalised axes",
    parameters_are="the shape of the normalised axes (a scale of 1 + gamma, and beta)",
    kernels_package="centred_offset_kernels")
