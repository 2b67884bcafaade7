"""Group normalisation: one sample's values over C/G contiguous channels and every spatial position form a group;
gamma and beta are one value per channel. The standard centred forward pass::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)   (biased variance)
"""

from bnsym.spec.groupings import ChannelGroups
from bnsym.spec.layer_spec import CENTRED_REGIMES, LayerSpec

GROUP_NORM = LayerSpec(
    "group_norm", "Group normalisation", "group norm", "centred", ChannelGroups(), eps=1e-5,
    regimes=CENTRED_REGIMES,
    group="one sample's values over C/G consecutive channels and every spatial position",
    statistics_over="per sample, the channels split into G contiguous groups, with the spatial axes",
    parameters_are="one value per channel",
    conventions=(
        "eps: PyTorch `torch.nn.GroupNorm` 1e-5, Flax `nn.GroupNorm` 1e-6; both inside the square root "
        "with the biased variance over the group.",
        "Channels are grouped contiguously: group g holds channels g*C/G to (g+1)*C/G - 1 in both "
        "frameworks. With G = 1 the layer is layer norm over (C, spatial) with per-channel parameters; "
        "with G = C it is instance norm.",
        "Flax's `use_fast_variance` applies here as for layer norm."))
