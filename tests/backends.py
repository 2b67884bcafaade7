"""Run bnsym's public functions through each backend, with NumPy arrays in and out, for tests written against NumPy.

``VIAS`` lists the variants a test is parametrized over (``pytest.mark.parametrize("via", VIAS, ids=str)``):

* ``numpy`` and ``numba``: the NumPy-based backends, called with ``backend=``;
* ``array_api-numpy``: the array-API kernels on NumPy arrays (array-api-compat's NumPy namespace);
* ``array_api-torch``: the arrays converted to PyTorch tensors (CPU), the results converted back;
* ``array_api-jax`` and ``array_api-jax-jit`` (``JAX`` and ``JIT``, not in ``VIAS``: JAX compiles every new shape,
  which makes a Hypothesis test of a hundred shapes take minutes): the arrays converted to JAX arrays, float64 with
  JAX's x64 mode switched on for the call; ``JIT`` makes the call inside ``jax.jit``, the arrays traced and
  everything else static.

``via.batch_norm_forward(x, gamma, beta, eps=..., axis=...)`` and ``via.layer_norm.forward(...)`` then behave like
the NumPy functions. A variant whose library is not installed is skipped, with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import types

import numpy as np
import pytest

import bnsym


class Via:
    """One backend variant (module docstring)."""

    def __init__(self, name: str, backend: str, library: str | None = None, jit: bool = False):
        self.name, self.backend, self.library, self.jit = name, backend, library, jit

    def __str__(self) -> str:
        return self.name

    def require(self) -> None:
        """Skip the calling test when the variant's libraries are not installed."""
        needed = {"numba": ["numba"], "array_api": ["array_api_compat"]}.get(self.backend, [])
        needed += [self.library] if self.library and self.library != "numpy" else []
        for module in needed:
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"backend variant {self.name} needs {module}, which is not installed")

    def __getattr__(self, name: str):
        found = getattr(bnsym, name)
        if isinstance(found, types.ModuleType):  # a layer module: via.layer_norm.forward(...)
            return _ViaModule(self, found)
        return functools.partial(self._call, found)

    def _call(self, function, *args, **kwargs):
        self.require()
        kwargs["backend"] = self.backend
        if self.library in (None, "numpy"):
            return function(*args, **kwargs)
        if self.library == "torch":
            import torch

            convert = lambda a: torch.from_numpy(np.array(a)) if isinstance(a, np.ndarray) else a  # noqa: E731
            result = function(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})
            return _to_numpy(result)
        return self._jax(function, args, kwargs)

    def _jax(self, function, args, kwargs):
        import jax

        arrays = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
        wide = any(args[i].dtype == np.float64 for i in arrays)

        def traced(*values):
            full = list(args)
            for i, value in zip(arrays, values):
                full[i] = value
            return function(*full, **kwargs)

        with jax.enable_x64(wide):
            run = jax.jit(traced) if self.jit else traced
            return _to_numpy(run(*(jax.numpy.asarray(args[i]) for i in arrays)))


class _ViaModule:
    """A layer module (bnsym.layer_norm, ...) whose functions run through a backend variant."""

    def __init__(self, via: Via, module):
        self._via, self._module = via, module

    def __getattr__(self, name: str):
        return functools.partial(self._via._call, getattr(self._module, name))


def _to_numpy(result):
    if result is None:
        return None
    if isinstance(result, tuple):
        return tuple(_to_numpy(r) for r in result)
    if hasattr(result, "detach"):
        return result.detach().numpy()
    return np.asarray(result)


VIAS = [
    Via("numpy", "numpy"),
    Via("numba", "numba"),
    Via("array_api-numpy", "array_api", "numpy"),
    Via("array_api-torch", "array_api", "torch"),
]

JAX = Via("array_api-jax", "array_api", "jax")
JIT = Via("array_api-jax-jit", "array_api", "jax", jit=True)
