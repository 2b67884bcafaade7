"""What a layer is, in data (no SymPy): its groups, parameters, statistics, options, eps and regimes.

:mod:`bnsym.spec.layer_spec` says what a layer is (:class:`~bnsym.spec.layer_spec.LayerSpec`),
:mod:`bnsym.spec.layers` holds the table of layers (:data:`~bnsym.spec.layers.SPECS`, the built-in ones declared one
per file in :mod:`bnsym.layers`), :mod:`bnsym.spec.groupings` the ways a layer groups its input,
:mod:`bnsym.spec.layout` the shape arithmetic of one call, and :mod:`bnsym.spec.validation` the argument checks
every layer shares. Everything else in bnsym (the derivation, the generated code, the runtime, the checker, the
documents and the command line) reads a layer from here.
"""

from bnsym.spec.groupings import (
    REQUIRED,
    ChannelGroups,
    Channels,
    Grouping,
    Option,
    SampleChannels,
    SampleTrailingAxes,
    TrailingAxes,
)
from bnsym.spec.layers import BUILT_IN, SPECS, LayerSpec, register, spec, unregister

__all__ = ["BUILT_IN", "REQUIRED", "SPECS", "ChannelGroups", "Channels", "Grouping", "LayerSpec", "Option",
           "SampleChannels", "SampleTrailingAxes", "TrailingAxes", "register", "spec", "unregister"]
