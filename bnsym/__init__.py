"""bnsym: normalisation layers derived symbolically, generated as NumPy code, and verified by properties.

Each layer is a module: :mod:`bnsym.batch_norm`, :mod:`bnsym.layer_norm`, :mod:`bnsym.rms_norm`,
:mod:`bnsym.group_norm` and :mod:`bnsym.instance_norm`, each with ``forward``, ``backward``, ``double_backward`` and
``jvp``; batch norm, which keeps running statistics, also has ``inference``, ``inference_backward`` and
``update_running_stats``. Batch norm's functions are also here under their historical names
(``bnsym.batch_norm_forward`` is ``bnsym.batch_norm.forward``, ...). The derivations are
``derivations/<layer>.md``.

A layer declared in :mod:`bnsym.layers` with no module file here (a variant such as
:mod:`bnsym.gemma_rms_norm`, Gemma's RMS norm) is served as ``bnsym.<name>`` all the same, on first use or import:
its functions are made from its specification (:func:`bnsym.runtime.functions.module`), with the built-in modules'
signatures.
"""

import sys

from bnsym import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from bnsym.runtime.functions import DeclaredModules
from bnsym.spec import BUILT_IN, SPECS

batch_norm_forward = batch_norm.forward
batch_norm_backward = batch_norm.backward
batch_norm_inference = batch_norm.inference
batch_norm_inference_backward = batch_norm.inference_backward
batch_norm_double_backward = batch_norm.double_backward
batch_norm_jvp = batch_norm.jvp
update_running_stats = batch_norm.update_running_stats

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_double_backward",
    "batch_norm_forward",
    "batch_norm_inference",
    "batch_norm_inference_backward",
    "batch_norm_jvp",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "update_running_stats",
]
__version__ = "0.1.0"

# The built-in layers without a module file of their own, served by an import hook (module docstring). They are
# in dir(bnsym) but not in __all__, which pins the modules written by hand: a new declaration edits nothing here.
_SERVED = tuple(name for name in BUILT_IN if name not in globals())
if not any(isinstance(finder, DeclaredModules) and finder.package == __name__ for finder in sys.meta_path):
    sys.meta_path.append(DeclaredModules(__name__, lambda: {name: SPECS[name] for name in _SERVED}))


def __getattr__(name: str):
    """``bnsym.<name>`` of a served layer: imported (made) on first use."""
    if name in _SERVED:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SERVED))
