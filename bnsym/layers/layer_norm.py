"""Layer normalisation: one sample's values over the trailing normalised axes form a group; gamma and beta have
the normalised shape. The standard centred forward pass::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)   (biased variance)
"""

from bnsym.spec.groupings import TrailingAxes
from bnsym.spec.layer_spec import CENTRED_REGIMES, LayerSpec

LAYER_NORM = LayerSpec(
    "layer_norm", "Layer normalisation", "layer norm", "centred", TrailingAxes(), eps=1e-5,
    regimes=CENTRED_REGIMES,
    group="one sample's values over the trailing normalised axes",
    statistics_over="the trailing normalised axes", parameters_are="the shape of the normalised axes",
    conventions=(
        "eps: PyTorch `torch.nn.LayerNorm` 1e-5, Flax `nn.LayerNorm` 1e-6, Keras 1e-3; always inside the "
        "square root, with the biased variance.",
        "PyTorch's `elementwise_affine=False` (and `bias=False`) drop gamma (and beta): pass `None`.",
        "Flax's `use_fast_variance=True` (its default) computes E[x^2] - E[x]^2, which cancels at a large "
        "offset; bnsym always uses the two-pass variance written above, which matches Flax with "
        "`use_fast_variance=False`."))
