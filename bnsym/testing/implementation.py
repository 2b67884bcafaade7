"""What an implementation under test is: :class:`Implementation`, the methods of its layer's protocol (checked
against their signatures when it is made), and :class:`TargetError` for a target that does not follow it.

The adapters (:mod:`bnsym.testing.adapters`) make Implementations; the properties call them. Both import this
module, and neither imports the other for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from bnsym.testing.protocols import DEFAULT_LAYER, METHODS, protocol

__all__ = ["OPTIONAL", "SIGNATURES", "Implementation", "TargetError"]


class TargetError(ValueError):
    """A target that cannot be loaded or does not follow the protocol (a usage error: exit status 2)."""


def _check_signature(function: Callable, name: str, arguments: tuple[str, ...], owner: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(*arguments)
    except TypeError:
        raise TargetError(f"{owner}: {name} must accept ({', '.join(arguments)}), but its signature is "
                          f"{name}{signature}") from None


#: The methods of batch norm's protocol (the default layer's) and their positional arguments; any layer's are
#: :func:`bnsym.testing.protocols.protocol`'s.
SIGNATURES: dict[str, tuple[str, ...]] = protocol(DEFAULT_LAYER).signatures
OPTIONAL = tuple(name for name in SIGNATURES if name != "forward")


class Implementation:
    """A normalisation layer under test, following its layer's protocol (module docstring).

    ``forward`` is required; ``backward`` and every other method of the layer's protocol (for batch norm,
    :data:`SIGNATURES`) are optional keyword arguments (None when not offered), available as attributes of the
    same name. ``layer`` (default batch norm) names the protocol.
    """

    def __init__(self, forward: Callable, backward: Callable | None = None, *, name: str = "implementation",
                 layer: str = DEFAULT_LAYER, **optional: Callable | None):
        signatures = protocol(layer).signatures
        unknown = set(optional) - set(signatures) - {"forward", "backward"}
        if unknown:
            raise TypeError(f"unknown protocol methods {sorted(unknown)}; the {protocol(layer).title} protocol has "
                            f"{', '.join(signatures)}")
        methods = {"forward": forward, "backward": backward, **optional}
        for method, function in methods.items():
            if function is None and method != "forward":
                continue
            if not callable(function):
                raise TypeError(f"{method} must be callable{'' if method == 'forward' else ' or None'}, got "
                                f"{function!r}")
            _check_signature(function, method, signatures[method], name)
        self.name = name
        self.layer = layer
        for method in METHODS:  # every protocol's methods exist (None) on every implementation
            setattr(self, method, None)
        for method in signatures:
            setattr(self, method, methods.get(method))

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(method for method in protocol(self.layer).signatures if getattr(self, method) is not None)

    @classmethod
    def wrap(cls, impl, name: str | None = None, layer: str = DEFAULT_LAYER) -> Implementation:
        """An Implementation of ``layer`` from a function, an object with ``forward`` (and ``backward``), or a class
        of such objects that needs no constructor arguments."""
        if isinstance(impl, Implementation):
            if impl.layer != layer:
                raise TargetError(f"{impl.name} is an implementation of {protocol(impl.layer).title}, not of "
                                  f"{protocol(layer).title}")
            return impl
        if inspect.isclass(impl):
            try:
                impl = impl()
            except Exception as error:
                raise TargetError(f"{impl.__name__} is a class; bnsym instantiates it with no arguments, which "
                                  f"failed: {type(error).__name__}: {error}") from None
        label = name or getattr(impl, "__qualname__", None) or type(impl).__name__
        forward = getattr(impl, "forward", None)
        optional = protocol(layer).optional
        if forward is not None:
            return cls(forward, getattr(impl, "backward", None), name=label, layer=layer,
                       **{method: getattr(impl, method, None) for method in optional if method != "backward"})
        if callable(impl):
            return cls(impl, name=label, layer=layer)
        raise TargetError(f"{label} is neither a function {protocol(layer).call('forward')} nor an object with a "
                          f"forward method")
