"""Fused residual add + RMS normalisation: the residual stream's add and the RMS norm after it in one pass, over the
trailing axes::

    h      = x + residual                  the new residual stream, returned
    ms     = (1/M) sum_i h_i^2
    invrms = 1 / sqrt(ms + eps)
    x_hat  = h * invrms
    y      = gamma * x_hat

It returns (y, h, invrms): y goes on to the next block, h is the residual stream after the add (what vLLM's and
FlashInfer's ``fused_add_rms_norm`` write over ``residual`` in place, and Liger-Kernel's ``LigerFusedAddRMSNorm``
returns as its second output). The backward takes an upstream gradient for each of y and h (dy and dh: the residual
stream carries its own gradient past the norm) and returns dx and dresidual, which are equal (h = x + residual):
dh plus what y sends back through the normalisation. It reads h, not x and residual, with the saved invrms, as
Liger's backward does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnsym.spec.groupings import TrailingAxes
from bnsym.spec.layer_spec import RMS_REGIMES, LayerSpec

if TYPE_CHECKING:
    from bnsym.symbolic.layers import LayerSymbols
    from bnsym.symbolic.program import Program


def forward(s: LayerSymbols) -> Program:
    """The training forward pass for one group: (x, residual, gamma, eps) -> (y, h, invrms)."""
    import sympy

    from bnsym.symbolic.program import Definition, Program
    from bnsym.symbolic.reduction import BatchSum, M

    return Program(
        inputs=[s.x, s.residual, s.gamma, s.eps],
        definitions=[
            Definition(s.h, s.x + s.residual),
            Definition(s.ms, BatchSum(s.h**2) / M),
            Definition(s.invrms, 1 / sympy.sqrt(s.ms + s.eps)),
            Definition(s.x_hat, s.h * s.invrms),
            Definition(s.y, s.gamma * s.x_hat),
        ],
        outputs=[s.y, s.h, s.invrms],
    )


FUSED_ADD_RMS_NORM = LayerSpec(
    "fused_add_rms_norm", "Fused residual add + RMS normalisation", "fused add + RMS norm", "rms", TrailingAxes(),
    eps=1e-6, regimes=RMS_REGIMES, forward=forward,
    field_inputs=("residual",), field_outputs=("h",), normalises="h",
    group="one sample's values of h = x + residual over the trailing normalised axes",
    statistics_over="the trailing normalised axes of h = x + residual (nothing is centred)",
    parameters_are="the shape of the normalised axes (a scale gamma only, no beta)",
    conventions=(
        "vLLM's and FlashInfer's `fused_add_rms_norm(input, residual, weight, eps)` work in place: `residual` "
        "becomes h = input + residual and `input` becomes y. Liger-Kernel's `LigerFusedAddRMSNorm()(hidden_states, "
        "residual)` returns (y, h). Here nothing is written in place: forward returns (y, h, invrms).",
        "vLLM adds x and residual in their own dtype (float16, bfloat16), so h is rounded before its mean square is "
        "taken in float32. bnsym computes float16 input in float32 and rounds h and y once at the end, so its "
        "statistics are those of the unrounded sum; the two differ by at most one rounding of h per element.",
        "The gradients of x and residual are equal: dx = dresidual = dh + the gradient that reaches h through y. "
        "A backward that drops dh (the residual stream's own gradient) is wrong whenever h is used downstream, as "
        "it always is in a transformer."))
