"""A layer that bnsym does not ship, with a forward pass of its own whose y is not shift invariant: each row over its
trailing axes divided by its root mean square, taken about zero and not about the row's mean, then scaled by
``1 + gamma``::

    y = (1 + gamma) * x / sqrt(mean(x^2) + eps)

Adding c to every value of a row changes y (no mean is taken out), so bnsym derive refutes shift invariance (with a
counterexample at a small group size) and the checker runs no ``shift_invariance`` on it, nor ``dx_sums_to_zero``.
Its twin is tests/data/centred_offset_norm.py (tests/testing/test_proved_properties.py).
"""

from bnsym.spec import LayerSpec, TrailingAxes
from bnsym.spec.layer_spec import RMS_REGIMES


def forward(s):
    """(x, gamma, eps) -> (y, invrms) for one row."""
    import sympy

    from bnsym.symbolic.program import Definition, Program
    from bnsym.symbolic.reduction import BatchSum, M

    return Program(
        inputs=[s.x, s.gamma, s.eps],
        definitions=[
            Definition(s.ms, BatchSum(s.x**2) / M),
            Definition(s.invrms, 1 / sympy.sqrt(s.ms + s.eps)),
            Definition(s.x_hat, s.x * s.invrms),
            Definition(s.y, (1 + s.gamma) * s.x_hat),
        ],
        outputs=[s.y, s.invrms],
    )


UNCENTRED_OFFSET_NORM = LayerSpec(
    "uncentred_offset_norm", "Uncentred offset-scale normalisation", "uncentred offset-scale norm", "rms",
    TrailingAxes(), eps=1e-5, regimes=RMS_REGIMES, forward=forward, neutral={"gamma": 0},
    group="one row of x over the trailing normalised axes",
    statistics_over="the trailing normalised axes (nothing is centred)",
    parameters_are="the shape of the normalised axes (gamma only, a scale of 1 + gamma)",
    kernels_package="uncentred_offset_kernels")
