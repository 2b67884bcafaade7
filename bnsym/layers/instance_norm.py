"""Instance normalisation: one sample's values of one channel over the spatial positions form a group; gamma and
beta are one value per channel, shared by the samples. The standard centred forward pass::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)   (biased variance)
"""

from bnsym.spec.groupings import SampleChannels
from bnsym.spec.layer_spec import CENTRED_REGIMES, LayerSpec

INSTANCE_NORM = LayerSpec(
    "instance_norm", "Instance normalisation", "instance norm", "centred", SampleChannels(), eps=1e-5,
    regimes=CENTRED_REGIMES,
    single_value_error="Expected more than 1 spatial element when training ({where}: one value per sample and "
                       "channel)",
    group="one sample's values of one channel over the spatial positions",
    statistics_over="per sample and channel, the spatial axes", parameters_are="one value per channel",
    conventions=(
        "PyTorch's `torch.nn.InstanceNorm*d` has `affine=False` by default (pass `None` for gamma and "
        "beta) and eps 1e-5; it refuses a spatial size of 1 in training.",
        "PyTorch's `track_running_stats=True` variant of instance norm keeps running statistics; bnsym's "
        "instance norm is the training-statistics layer, as `torch.nn.functional.instance_norm` with "
        "`use_input_stats=True`."))
