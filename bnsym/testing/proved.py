"""Which invariances a layer has, as the checker reads them: the plain data that ``bnsym derive`` wrote into the
layer's generated NumPy module, never a proof run here and never a list kept per layer.

``bnsym derive`` proves each claim of :data:`bnsym.symbolic.invariances.RECORDED` from the layer's declaration (for
a symbolic group size, cross-checked by brute force: seconds of SymPy per layer) and writes the verdicts into the
layer's NumPy kernels module (:attr:`bnsym.spec.LayerSpec.kernels_module`: ``bnsym._generated.<name>`` for a
built-in layer, ``<kernels_package>.<name>`` for a layer of your own) as ``INVARIANCES``, a dict of name -> bool,
with ``INVARIANCES_FROM``, the digest of the declaration they were proved from
(:func:`bnsym.symbolic.invariances.fingerprint`). :func:`proved` reads them, once per layer and process.

A property that rests on invariances says which ones (``applies=rests_on(...)`` in :mod:`bnsym.testing.properties`)
and applies to a layer exactly when every one of them is proved.

When the data cannot be trusted, the checker stops with :class:`StaleInvarianceData` (a ValueError) naming the
command that repairs it, rather than proving on the fly: the generated package is also where the checker's
references come from (:func:`bnsym.testing.reference.public_module`), so a package that is missing, written before
the declaration last changed, or by a bnsym that recorded no invariances, would make the whole check wrong, not only
its choice of properties. The cases: the module cannot be imported; it has no ``INVARIANCES`` (or lacks a claim the
checker asks about); its ``INVARIANCES_FROM`` differs from the declaration's digest now (the declaration changed
since ``bnsym derive`` ran). Computing the digest builds the declared forward pass (SymPy, no derivation, no proof).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from bnsym.spec import LayerSpec

__all__ = ["StaleInvarianceData", "proved"]

#: layer name -> (the specification the data was read for, the data): re-read when a layer is registered anew.
_CACHE: dict[str, tuple[LayerSpec, Mapping[str, bool]]] = {}


class StaleInvarianceData(ValueError):
    """A layer's generated invariance data is missing, incomplete or proved from another declaration."""


def _derive_command(layer: LayerSpec) -> str:
    if layer.kernels_package == "bnsym._generated":
        return "`bnsym derive` (from a source checkout of bnsym)"
    from bnsym.spec.loading import is_file_reference, reference

    where = reference(layer.name)
    where = where if is_file_reference(where) else "FILE.py:NAME"
    return f"`bnsym derive {where} --out DIR` (DIR the directory of the package {layer.kernels_package})"


def _stale(layer: LayerSpec, why: str) -> StaleInvarianceData:
    return StaleInvarianceData(
        f"{layer.name}: {why}; the checker reads which invariances the layer has (and so which properties apply) "
        f"from {layer.kernels_module}, written by bnsym derive. Regenerate it with {_derive_command(layer)}.")


def _read(layer: LayerSpec) -> Mapping[str, bool]:
    from bnsym.symbolic.invariances import RECORDED, fingerprint

    try:
        module = importlib.import_module(layer.kernels_module)
    except ImportError as error:
        raise _stale(layer, f"its generated kernels module {layer.kernels_module} cannot be imported ({error})") \
            from None
    data = getattr(module, "INVARIANCES", None)
    if not isinstance(data, Mapping) or any(name not in data for name in RECORDED):
        missing = RECORDED if not isinstance(data, Mapping) else [n for n in RECORDED if n not in data]
        raise _stale(layer, f"{layer.kernels_module} records no verdict on {', '.join(missing)} (it was generated "
                            "by an older bnsym)")
    digest = fingerprint(layer.name)
    if getattr(module, "INVARIANCES_FROM", None) != digest:
        raise _stale(layer, f"{layer.kernels_module} was generated from another declaration of the layer (its "
                            "forward pass or the placement of its parameters changed since)")
    return {name: bool(data[name]) for name in RECORDED}


def proved(layer: LayerSpec) -> Mapping[str, bool]:
    """Each claim of :data:`bnsym.symbolic.invariances.RECORDED` for ``layer``, proved (True) or refuted (False),
    from its generated data; :class:`StaleInvarianceData` when that is missing or stale (module docstring)."""
    cached = _CACHE.get(layer.name)
    if cached is None or cached[0] is not layer:
        cached = _CACHE[layer.name] = (layer, _read(layer))
    return cached[1]
