"""Batch norm (one group per channel) written with a shift inside the scale by gamma, factored as batch
renormalisation's ``gamma * (r * x_hat + d) + beta`` was first written, and the shift taken off again::

    mean = (1/M) sum_i x_i,    var = (1/M) sum_i (x_i - mean)^2,    invstd = 1 / sqrt(var + eps)
    x_hat = (x - mean) * invstd
    y = gamma * (x_hat + shift) + beta - gamma * shift          (= gamma * x_hat + beta)

``shift`` is a scalar option (one value per call, never differentiated); taking it off again keeps y = x_hat at
gamma = 1, beta = 0, as a declaration must. Written this way the kernel plan has two field atoms that share
``x - mean``: ``x - mean`` itself (the variance sums its square) and ``shift + invstd*(x - mean)`` (a sum inside a
product is one atom), and common-subexpression elimination names ``x - mean`` once, as a temporary. The compiled
(Numba) kernels once took that temporary for a per-channel value, indexed it by channel and did not compile;
tests/codegen/test_field_temporaries.py derives this layer and runs its compiled forward against its NumPy kernel.
"""

from bnsym.spec import Channels, LayerSpec
from bnsym.spec.layer_spec import CHANNEL_REGIMES


def forward(s):
    """(x, gamma, beta, eps, shift) -> (y, mean, invstd) for one channel."""
    import sympy

    from bnsym.symbolic.program import Definition, Program
    from bnsym.symbolic.reduction import BatchSum, M

    return Program(
        inputs=[s.x, s.gamma, s.beta, s.eps, s.shift],
        definitions=[
            Definition(s.mean, BatchSum(s.x) / M),
            Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
            Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)),
            Definition(s.x_hat, (s.x - s.mean) * s.invstd),
            Definition(s.y, s.gamma * (s.x_hat + s.shift) + s.beta - s.gamma * s.shift),
        ],
        outputs=[s.y, s.mean, s.invstd],
    )


INNER_SHIFT_NORM = LayerSpec(
    "inner_shift_norm", "Batch normalisation with an inner shift", "inner-shift batch norm", "centred", Channels(),
    eps=1e-3, regimes=CHANNEL_REGIMES, forward=forward, scalars={"shift": 1.0},
    group="one channel: its values over the batch and every spatial position",
    statistics_over="every axis but the channel axis", parameters_are="one value per channel",
    kernels_package="inner_shift_kernels")
