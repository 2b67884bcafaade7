"""Layers declared in a file of their own: ``FILE.py:NAME``, as ``bnsym check --layer`` and ``bnsym derive`` take
them.

:func:`load` imports the file (under a module name of its own, so that two files with the same name do not clash),
takes its attribute ``NAME``, a :class:`~bnsym.spec.layers.LayerSpec`, and registers it
(:func:`bnsym.spec.layers.register`), so that every part of bnsym finds it by its name from then on. The file's
directory goes first on ``sys.path`` (and stays there), as ``python FILE.py`` would have it: its sibling modules
import, and so does the package of generated kernels that ``bnsym derive FILE.py:NAME --out DIR`` wrote beside it,
whichever directory the process was started from and however (the ``bnsym`` console script's own directory is the
first entry of its ``sys.path``, not the current one).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from bnsym.spec.layers import SPECS, LayerSpec, register

__all__ = ["declaration_file", "is_file_reference", "layer_name", "load", "reference"]

#: The file reference each layer loaded from a file came from, by layer name (:func:`reference`).
_REFERENCES: dict[str, str] = {}

#: The start of the module name under which :func:`load` imports a declaration file.
_MODULE_PREFIX = "_bnsym_layer_"


def is_file_reference(text: str) -> bool:
    """Whether ``text`` names a layer in a file (``path/to/layers.py:NAME``) rather than a registered layer."""
    path, colon, name = text.rpartition(":")
    return bool(colon) and path.endswith(".py") and name.isidentifier()


def load(reference: str) -> LayerSpec:
    """The layer ``NAME`` declared in ``FILE.py`` (``reference`` is ``"FILE.py:NAME"``), registered. A name that
    is already registered is returned as it is (ValueError if the file declares another layer under it)."""
    if not isinstance(reference, str) or not is_file_reference(reference):
        raise ValueError(f"a layer in a file is named FILE.py:NAME (such as layers/scale_norm.py:SCALE_NORM), got "
                         f"{reference!r}")
    path_text, _, attribute = reference.rpartition(":")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"the layer file {path_text!r} does not exist (resolved to {path})")
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"{_MODULE_PREFIX}{path.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    if not hasattr(module, attribute):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, LayerSpec))
        raise ValueError(f"{path_text} has no {attribute!r}; the layers it declares: {', '.join(found) or 'none'}")
    layer = getattr(module, attribute)
    if not isinstance(layer, LayerSpec):
        raise TypeError(f"{reference} is a {type(layer).__name__}, not a bnsym.spec.LayerSpec")
    if SPECS.get(layer.name) != layer:
        register(layer)
    _REFERENCES[layer.name] = f"{path}:{attribute}"
    return layer


def layer_name(text: str) -> str:
    """The name of the layer ``text`` names: a registered layer's name as it is, or ``FILE.py:NAME``, loaded and
    registered (:func:`load`); ValueError naming the known layers otherwise."""
    if isinstance(text, str) and is_file_reference(text):
        return load(text).name
    if not isinstance(text, str) or text not in SPECS:
        raise ValueError(f"unknown layer {text!r}; known: {', '.join(SPECS)}, or a layer of your own as "
                         "FILE.py:NAME")
    return text


def reference(name: str) -> str:
    """What names the layer ``name`` in another process: its file reference (absolute) when it was loaded from a
    file, else its name. :func:`layer_name` of it gives ``name`` back."""
    return _REFERENCES.get(name, name)


def declaration_file(module_name: str) -> str | None:
    """The file name (``scale_norm.py``, without its directory) of the declaration file that :func:`load` imported
    as the module ``module_name``; None for any other module."""
    module = sys.modules.get(module_name)
    if not module_name.startswith(_MODULE_PREFIX) or module is None or not getattr(module, "__file__", None):
        return None
    return Path(module.__file__).name
