"""RMS normalisation: one sample's values over the trailing normalised axes form a group, nothing is centred, and
gamma (no beta) has the normalised shape. The standard RMS forward pass::

    y = gamma * x * invrms,    invrms = 1 / sqrt(mean(x**2) + eps)
"""

from bnsym.spec.groupings import TrailingAxes
from bnsym.spec.layer_spec import RMS_REGIMES, LayerSpec

RMS_NORM = LayerSpec(
    "rms_norm", "RMS normalisation", "RMS norm", "rms", TrailingAxes(), eps=1e-6,
    regimes=RMS_REGIMES,
    group="one sample's values over the trailing normalised axes",
    statistics_over="the trailing normalised axes (nothing is centred)",
    parameters_are="the shape of the normalised axes (a scale gamma only, no beta)",
    conventions=(
        "eps: PyTorch's `torch.nn.functional.rms_norm` with `eps=None` uses `torch.finfo(dtype).eps` "
        "(2.2e-16 in float64, 1.2e-7 in float32); Flax `nn.RMSNorm` uses 1e-6, which is bnsym's default. "
        "Both add eps to the mean square inside the square root.",))
