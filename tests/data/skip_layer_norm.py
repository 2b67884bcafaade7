"""A layer with a field input and a field output that bnsym does not ship, declared in a file of its own: a centred
layer norm of u = x - skip over the trailing axes, returning y and u (a made-up cousin of fused add + RMS norm, so
that the field inputs and outputs are tested on a declaration the package has never seen). Its kernels are generated
into the package ``skip_layer_norm_kernels`` wherever a test puts it.
"""

from bnsym.spec import LayerSpec, TrailingAxes
from bnsym.spec.layer_spec import CENTRED_REGIMES


def forward(s):
    """(x, skip, gamma, beta, eps) -> (y, u, mean, invstd) with u = x - skip."""
    import sympy

    from bnsym.symbolic.program import Definition, Program
    from bnsym.symbolic.reduction import BatchSum, M

    return Program(
        inputs=[s.x, s.skip, s.gamma, s.beta, s.eps],
        definitions=[
            Definition(s.u, s.x - s.skip),
            Definition(s.mean, BatchSum(s.u) / M),
            Definition(s.var, BatchSum((s.u - s.mean) ** 2) / M),
            Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)),
            Definition(s.x_hat, (s.u - s.mean) * s.invstd),
            Definition(s.y, s.gamma * s.x_hat + s.beta),
        ],
        outputs=[s.y, s.u, s.mean, s.invstd],
    )


SKIP_LAYER_NORM = LayerSpec(
    "skip_layer_norm", "Skip layer normalisation", "skip layer norm", "centred", TrailingAxes(), eps=1e-5,
    regimes=CENTRED_REGIMES, forward=forward, field_inputs=("skip",), field_outputs=("u",), normalises="u",
    group="one row of u = x - skip over the trailing normalised axes", statistics_over="the trailing axes of u",
    parameters_are="the normalised shape", kernels_package="skip_layer_norm_kernels")
