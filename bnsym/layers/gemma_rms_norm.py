"""Gemma's RMS normalisation: RMS norm over the trailing axes whose scale is ``1 + gamma``, so that gamma = 0 (how
Gemma initialises its weight) is no scale at all::

    ms     = (1/M) sum_i x_i^2
    invrms = 1 / sqrt(ms + eps)
    x_hat  = x * invrms
    y      = (1 + gamma) * x_hat

This is Hugging Face's ``GemmaRMSNorm`` (eps 1e-6 by default): it normalises over the last axis, upcasts x to
float32, multiplies by ``1.0 + weight.float()`` in float32 and casts the product to x's dtype once at the end (Llama's
RMS norm casts the normalised x back before it multiplies by its weight). bnsym computes float16 input in float32 and
rounds y once, which is Gemma's order of operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnsym.spec.groupings import TrailingAxes
from bnsym.spec.layer_spec import RMS_REGIMES, LayerSpec

if TYPE_CHECKING:
    from bnsym.symbolic.layers import LayerSymbols
    from bnsym.symbolic.program import Program


def forward(s: LayerSymbols) -> Program:
    """The training forward pass for one group: (x, gamma, eps) -> (y, invrms)."""
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


GEMMA_RMS_NORM = LayerSpec(
    "gemma_rms_norm", "Gemma RMS normalisation", "Gemma RMS norm", "rms", TrailingAxes(), eps=1e-6,
    regimes=RMS_REGIMES, forward=forward, neutral={"gamma": 0},
    group="one sample's values over the trailing normalised axes",
    statistics_over="the trailing normalised axes (nothing is centred)",
    parameters_are="the shape of the normalised axes (gamma only, a scale of 1 + gamma; no beta)",
    conventions=(
        "Hugging Face `GemmaRMSNorm` stores its weight as gamma, initialised to zeros, and scales by "
        "`1.0 + weight`; its eps is 1e-6 (the model's `rms_norm_eps`), inside the square root with the mean "
        "square. `gamma=None` here means gamma = 0: no scale.",
        "Hugging Face computes in float32 whatever x's dtype: x is upcast, the scale `1 + weight` is taken in "
        "float32 and the product is cast back to x's dtype once. Llama's RMS norm casts the normalised x back to "
        "x's dtype before it multiplies by its weight, so the two round differently in float16 and bfloat16.",
        "The normalised axes are the last one in Hugging Face (and in Liger-Kernel's `LigerRMSNorm` with "
        "`offset=1.0`, `casting_mode=\"gemma\"`); `axis` takes the trailing axes as for RMS norm."))
