"""Two layers whose parameters are scalars (``scalar_parameters=True``), declared as a user would, for
tests/test_scalar_parameters.py: a centred row norm (layer norm's groups, with one gamma and one beta for all of x)
and a group norm whose gamma and beta are one value each instead of one per channel. Their kernels are generated into
the packages ``scalar_row_kernels`` and ``scalar_group_kernels`` wherever the test puts them."""

from bnsym.spec import ChannelGroups, LayerSpec, TrailingAxes
from bnsym.spec.layer_spec import CENTRED_REGIMES

SCALAR_ROW_NORM = LayerSpec(
    "scalar_row_norm", "Row normalisation with a scalar affine", "scalar-affine row norm", "centred",
    TrailingAxes(scalar_parameters=True), eps=1e-5, regimes=CENTRED_REGIMES,
    group="one row of x over its trailing normalised axes", statistics_over="the trailing normalised axes",
    parameters_are="one value each, shape (), for all of x", kernels_package="scalar_row_kernels")

SCALAR_GROUP_NORM = LayerSpec(
    "scalar_group_norm", "Group normalisation with a scalar affine", "scalar-affine group norm", "centred",
    ChannelGroups(scalar_parameters=True), eps=1e-5, regimes=CENTRED_REGIMES,
    group="one sample's group of C/G channels with every spatial position",
    statistics_over="each sample's groups of channels and the spatial axes",
    parameters_are="one value each, shape (), for all of x", kernels_package="scalar_group_kernels")
