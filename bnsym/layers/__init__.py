"""The layers bnsym ships, one declaration file each: adding a file here adds a layer, with no edit elsewhere.

A declaration file ``bnsym/layers/<name>.py`` holds exactly one :class:`~bnsym.spec.layer_spec.LayerSpec` named
``<name>`` (its groups, options, parameters, statistics, eps, prose) and, when its forward pass is not the standard
one of its ``statistic``, that forward pass: a function of the layer's symbols
(:class:`bnsym.symbolic.layers.LayerSymbols`) that returns its :class:`~bnsym.symbolic.program.Program` and imports
SymPy and the engine inside its body. So a declaration file imports with NumPy only (``import bnsym`` needs nothing
else), and it imports from the modules of :mod:`bnsym.spec` (``bnsym.spec.layer_spec``, ``bnsym.spec.groupings``),
never from the package :mod:`bnsym.spec` itself, whose table is being built from these files while they load.

:func:`declared` finds the files by scanning this folder; :mod:`bnsym.spec.layers` makes its table
(``SPECS``, ``BUILT_IN``) from them. From a declaration, ``bnsym derive`` writes the layer's generated kernels and
its derivation document, and ``bnsym.<name>`` serves its public functions (:mod:`bnsym.runtime.functions`).
"""

from __future__ import annotations

import importlib
import pkgutil

from bnsym.spec.layer_spec import LayerSpec

__all__ = ["DEFAULT", "declared"]

#: The checker's default layer (``bnsym check`` without ``--layer``), listed first; the others follow by name.
DEFAULT = "batch_norm"


def _declaration(module_name: str) -> LayerSpec:
    """The one LayerSpec that the declaration file ``module_name`` declares, named as the file is."""
    module = importlib.import_module(f"{__name__}.{module_name}")
    found = [value for value in vars(module).values() if isinstance(value, LayerSpec)]
    if len(found) != 1:
        raise ValueError(f"{module.__file__} must declare exactly one bnsym LayerSpec (the layer the file is named "
                         f"after), but it declares {len(found)}")
    (layer,) = found
    if layer.name != module_name:
        raise ValueError(f"{module.__file__} declares the layer {layer.name!r}: a declaration file is named after "
                         f"its layer, so rename one of them")
    if layer.kernels_package != "bnsym._generated":
        raise ValueError(f"{module.__file__}: a built-in layer's kernels live in bnsym._generated, not in "
                         f"{layer.kernels_package!r}")
    return layer


def declared() -> tuple[LayerSpec, ...]:
    """Every layer declared in this folder: :data:`DEFAULT` first, then the others sorted by name."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.ispkg)
    layers = [_declaration(name) for name in names]
    return tuple(sorted(layers, key=lambda layer: (layer.name != DEFAULT, layer.name)))
