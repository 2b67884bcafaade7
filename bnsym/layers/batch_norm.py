"""Batch normalisation: one channel's values over the batch and every spatial position form a group, with one
gamma and beta per channel and running statistics (eval mode). The standard centred forward pass::

    y = gamma * (x - mean) * invstd + beta,    invstd = 1 / sqrt(var + eps)   (biased variance)
"""

from bnsym.spec.groupings import Channels
from bnsym.spec.layer_spec import CHANNEL_REGIMES, LayerSpec

BATCH_NORM = LayerSpec(
    "batch_norm", "Batch normalisation", "batch norm", "centred", Channels(), eps=1e-5,
    regimes=CHANNEL_REGIMES, running_statistics=True,
    single_value_error="Expected more than 1 value per channel when training ({where}: one value per channel)",
    group="one channel: its values over the batch and every spatial position",
    statistics_over="every axis but the channel axis", parameters_are="one value per channel")
