"""What each layer is, stated once: the table every part of bnsym reads.

A :class:`LayerSpec` says, with no SymPy, everything about a layer that is not its arithmetic:

* ``name`` (``bnsym.<name>``, ``bnsym/_generated/<name>.py``, ``derivations/<name>.md``, ``--layer <name>``),
  ``title`` (its name in a heading) and ``short`` (in a sentence);
* ``statistic``: ``"centred"`` (a mean and a biased variance: y = gamma * (x - mean) * invstd + beta) or ``"rms"``
  (a mean square, nothing centred, no beta: y = gamma * x * invrms). This chooses the forward pass written in
  :mod:`bnsym.symbolic.layers`, and with it the parameters (:attr:`LayerSpec.parameters`) and the statistics the
  forward pass saves for the backward (:attr:`LayerSpec.saved`);
* ``grouping`` (:mod:`bnsym.spec.groupings`): which values form a group, the options (``axis``, ``num_groups``),
  the parameters' placement and shape;
* ``eps``: the default eps of its public functions;
* ``running_statistics``: it keeps running statistics, so it has an eval mode and a running-statistics update;
* ``single_value_error``: the message for a group of one value, which the layer refuses in training (as PyTorch
  does for batch and instance norm), or None;
* ``regimes``: the input regimes the checker draws from for it (:mod:`bnsym.testing.strategies` defines them);
* ``group``, ``statistics_over``, ``parameters_are``, ``conventions``: prose for its derivation document;
* ``kernels_package``: the package of its generated modules (``<package>.<name>``, ``<name>_numba``,
  ``<name>_array_api``): ``bnsym._generated`` for the built-in layers, the user's own package for theirs.

:func:`register` adds a layer (a user's own, or a test's) to :data:`SPECS`; :func:`spec` looks one up.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnsym.spec.groupings import ChannelGroups, Channels, Grouping, SampleChannels, TrailingAxes

__all__ = ["BUILT_IN", "CENTRED_REGIMES", "CHANNEL_REGIMES", "RMS_REGIMES", "SPECS", "LayerSpec", "register", "spec",
           "unregister"]

#: The checker's input regimes (described in :mod:`bnsym.testing.strategies`), in the words of a layer whose group
#: is a channel (batch norm), of one whose group is a group, and of one that takes no mean (RMS norm).
CHANNEL_REGIMES = ("well-conditioned", "large offset", "variance near eps", "constant channel", "tiny batch",
                   "wide dynamic range")
CENTRED_REGIMES = ("well-conditioned", "large offset", "variance near eps", "constant group", "tiny group",
                   "wide dynamic range")
RMS_REGIMES = ("well-conditioned", "large offset", "mean square near eps", "constant group", "tiny group",
               "wide dynamic range")

_STATISTICS = {"centred": (("gamma", "beta"), ("mean", "invstd")), "rms": (("gamma",), ("invrms",))}


@dataclass(frozen=True)
class LayerSpec:
    """One layer (module docstring)."""

    name: str
    title: str
    short: str
    statistic: str
    grouping: Grouping
    eps: float
    regimes: tuple[str, ...]
    group: str
    statistics_over: str
    parameters_are: str
    running_statistics: bool = False
    single_value_error: str | None = None
    conventions: tuple[str, ...] = ()
    kernels_package: str = "bnsym._generated"

    def __post_init__(self):
        if self.statistic not in _STATISTICS:
            raise ValueError(f"LayerSpec {self.name!r}: statistic must be one of {sorted(_STATISTICS)}, got "
                             f"{self.statistic!r}")
        if not self.name.isidentifier():
            raise ValueError(f"LayerSpec name must be a Python identifier (it names a module), got {self.name!r}")

    @property
    def centred(self) -> bool:
        """The layer subtracts a mean (its y is unchanged when a constant is added to a group)."""
        return self.statistic == "centred"

    @property
    def parameters(self) -> tuple[str, ...]:
        """The trainable parameters: ("gamma", "beta"), or ("gamma",) for a layer with no shift."""
        return _STATISTICS[self.statistic][0]

    @property
    def saved(self) -> tuple[str, ...]:
        """The statistics the forward pass returns after y, for the backward: ("mean", "invstd") or ("invrms",)."""
        return _STATISTICS[self.statistic][1]

    @property
    def options(self) -> tuple[str, ...]:
        """The names of the layer's options (``axis``, ``num_groups``), in the order its functions take them."""
        return self.grouping.option_names

    @property
    def kernels_module(self) -> str:
        """The module of its generated NumPy kernels (the compiled and array-API ones add ``_numba``,
        ``_array_api``)."""
        return f"{self.kernels_package}.{self.name}"

    @property
    def min_ndim(self) -> int:
        return self.grouping.min_ndim

    def layout(self, shape: tuple[int, ...], **options):
        """The :class:`~bnsym.spec.layout.GroupLayout` of x of ``shape`` under the layer's ``options``."""
        return self.grouping.layout(tuple(shape), **options)


SPECS: dict[str, LayerSpec] = {s.name: s for s in (
    LayerSpec(
        "batch_norm", "Batch normalisation", "batch norm", "centred", Channels(), eps=1e-5,
        regimes=CHANNEL_REGIMES, running_statistics=True,
        single_value_error="Expected more than 1 value per channel when training ({where}: one value per channel)",
        group="one channel: its values over the batch and every spatial position",
        statistics_over="every axis but the channel axis", parameters_are="one value per channel"),
    LayerSpec(
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
            "`use_fast_variance=False`.")),
    LayerSpec(
        "rms_norm", "RMS normalisation", "RMS norm", "rms", TrailingAxes(), eps=1e-6,
        regimes=RMS_REGIMES,
        group="one sample's values over the trailing normalised axes",
        statistics_over="the trailing normalised axes (nothing is centred)",
        parameters_are="the shape of the normalised axes (a scale gamma only, no beta)",
        conventions=(
            "eps: PyTorch's `torch.nn.functional.rms_norm` with `eps=None` uses `torch.finfo(dtype).eps` "
            "(2.2e-16 in float64, 1.2e-7 in float32); Flax `nn.RMSNorm` uses 1e-6, which is bnsym's default. "
            "Both add eps to the mean square inside the square root.",)),
    LayerSpec(
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
            "Flax's `use_fast_variance` applies here as for layer norm.")),
    LayerSpec(
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
            "`use_input_stats=True`.")),
)}

#: The layers bnsym ships, in the order of :data:`SPECS` (batch norm, the default of the checker, first).
BUILT_IN = tuple(SPECS)


def spec(name: str) -> LayerSpec:
    """The specification of the layer ``name``; ValueError naming the known layers otherwise."""
    if not isinstance(name, str) or name not in SPECS:
        raise ValueError(f"unknown layer {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]


def register(layer: LayerSpec) -> LayerSpec:
    """Add ``layer`` to :data:`SPECS` (a user's layer, or a test's); ValueError if another layer has its name."""
    if not isinstance(layer, LayerSpec):
        raise TypeError(f"register takes a LayerSpec, got {type(layer).__name__}")
    if SPECS.get(layer.name, layer) != layer:
        raise ValueError(f"a different layer named {layer.name!r} is already registered")
    SPECS[layer.name] = layer
    return layer


def unregister(name: str) -> None:
    """Remove the layer ``name`` that :func:`register` added; the built-in layers cannot be removed."""
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in layer and cannot be unregistered")
    SPECS.pop(name, None)
