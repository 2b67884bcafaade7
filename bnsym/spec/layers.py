"""The table of layers every part of bnsym reads: :data:`SPECS`, by name.

Each layer is a :class:`~bnsym.spec.layer_spec.LayerSpec` (:mod:`bnsym.spec.layer_spec` says what its fields
mean). The layers bnsym ships are declared one per file in :mod:`bnsym.layers`, which is scanned once, here
(:data:`BUILT_IN`: batch norm, the default of the checker, first, then the others by name); adding a file there
adds a layer. :func:`register` adds a layer of a user's own (or a test's) to :data:`SPECS`; :func:`spec` looks one
up. ``LayerSpec`` and the regime tuples are importable from here too.
"""

from __future__ import annotations

from bnsym.layers import declared
from bnsym.spec.layer_spec import CENTRED_REGIMES, CHANNEL_REGIMES, RMS_REGIMES, LayerSpec

__all__ = ["BUILT_IN", "CENTRED_REGIMES", "CHANNEL_REGIMES", "RMS_REGIMES", "SPECS", "LayerSpec", "register", "spec",
           "unregister"]

SPECS: dict[str, LayerSpec] = {layer.name: layer for layer in declared()}

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
