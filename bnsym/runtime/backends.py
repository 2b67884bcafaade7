"""Which generated kernels a public function runs: ``backend="auto"``, ``"numpy"``, ``"numba"`` or ``"array_api"``.

Every backend runs kernels printed from the same derivation (``bnsym._generated.<layer>``, ``<layer>_numba``,
``<layer>_array_api``); they differ in how they evaluate it:

* ``"numpy"``: NumPy, one operation per pass over memory; needs nothing beyond NumPy;
* ``"numba"``: fused loops compiled by Numba, one pass over memory per stage, parallel over the threads that
  ``numba.set_num_threads`` allows (``pip install -e ".[fast]"``); NumPy arrays only;
* ``"array_api"``: the array API standard through ``array-api-compat`` (``pip install -e ".[array-api]"``): NumPy,
  PyTorch (CPU, CUDA), JAX (also under ``jax.jit``) and CuPy arrays, results of the same library and device.

``"auto"`` (the default) is ``"numba"`` for NumPy input when Numba is installed, else ``"numpy"``, and
``"array_api"`` for the arrays of any other library. Asking by name for a backend whose extra is missing is an
``ImportError`` that names the extra.

``"auto"`` never waits on the compiler: a compiled kernel that is not ready (in memory or in Numba's disk cache)
is compiled in the background while the call runs the NumPy kernel (:mod:`bnsym.runtime.compiled`,
:mod:`bnsym.runtime.background`). ``"numba"`` named explicitly compiles on the spot, and says so when that takes long.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass

import numpy as np

__all__ = ["BACKENDS", "Backend", "numpy_kernels", "resolve"]

BACKENDS = ("auto", "numpy", "numba", "array_api")

# The compile policies of bnsym.runtime.compiled (WAIT, BACKGROUND), named here without importing it: `import bnsym`
# stays
# free of the compiled backend's machinery until a compiled kernel runs. tests/test_compile_policy.py checks they agree.
_WAIT, _BACKGROUND = "wait", "background"

_EXTRAS = {"numba": ("numba", "fast"), "array_api": ("array_api_compat", "array-api")}
_SUFFIX = {"numpy": "", "numba": "_numba", "array_api": "_array_api"}


def _installed(backend: str) -> bool:
    return _findable(_EXTRAS[backend][0])


@functools.cache
def _findable(module: str) -> bool:
    # Once per process: find_spec searches the path (40 us), which would be a third of a small batch norm's time.
    return importlib.util.find_spec(module) is not None


def _missing(backend: str, why: str = "") -> ImportError:
    module, extra = _EXTRAS[backend]
    return ImportError(f'backend="{backend}" needs {module}, which is not installed{why}: '
                       f'pip install -e ".[{extra}]" from a clone of bnsym (it is not published on PyPI)')


def _is_numpy_input(x) -> bool:
    """NumPy arrays, NumPy scalars and Python sequences go to the NumPy-based backends."""
    if isinstance(x, np.ndarray | np.generic | list | tuple | int | float):
        return True
    # An array of another library has the array API's namespace method, or at least a dtype and a shape.
    return not (hasattr(x, "__array_namespace__") or (hasattr(x, "shape") and hasattr(x, "dtype")))


def numpy_kernels(module: str):
    """The generated NumPy kernels in ``module`` (a layer's :attr:`bnsym.spec.LayerSpec.kernels_module`)."""
    return importlib.import_module(module)


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its ``name`` and ``xp``, the namespace the public function handles arrays with (NumPy
    itself for the NumPy-based backends)."""

    name: str
    xp: object
    #: The compiled backend's policy (:mod:`bnsym.runtime.compiled`): WAIT when named, BACKGROUND when chosen by "auto".
    compile_policy: str = _WAIT

    @property
    def is_numpy(self) -> bool:
        """The NumPy-based backends: arrays are NumPy arrays, validated and cast with NumPy."""
        return self.name in ("numpy", "numba")

    def kernels(self, module: str):
        """This backend's generated module of a layer whose NumPy kernels are ``module`` (the layer's
        :attr:`bnsym.spec.LayerSpec.kernels_module`, such as ``bnsym._generated.layer_norm``)."""
        # Imported on first use, not with bnsym, so that `bnsym derive` can regenerate a broken or missing module.
        if self.name == "numba":
            return _compiled_kernels(module, self.compile_policy)
        return importlib.import_module(f"{module}{_SUFFIX[self.name]}")

    def reducer(self, axes: tuple[int, ...], count: int, parameter_axes: tuple[int, ...] = ()):
        """The reducer the kernels of this backend take."""
        if self.is_numpy:
            from bnsym.runtime.reduce import Reducer

            return Reducer(axes, count, parameter_axes)
        from bnsym.runtime.array_api import ArrayAPIReducer

        return ArrayAPIReducer(self.xp, axes, count, parameter_axes)


class _CompiledKernels:
    """A generated ``_numba`` module's kernels, each called under a compile policy; under BACKGROUND, a kernel
    that is not compiled yet runs its NumPy twin (same derivation, same signature) instead."""

    def __init__(self, module: str, compile_policy: str):
        self._module = importlib.import_module(f"{module}_numba")
        self._numpy = numpy_kernels(module)
        self._policy = compile_policy
        self.SIGNATURES = self._module.SIGNATURES

    def __getattr__(self, name: str):
        if name not in self.SIGNATURES:
            return getattr(self._module, name)
        compiled, fallback, policy = getattr(self._module, name), getattr(self._numpy, name), self._policy
        from bnsym.runtime.compiled import NotCompiled
        from bnsym.runtime.compiled import policy as compile_policy

        @functools.wraps(compiled)
        def kernel(*args):
            with compile_policy(policy):
                try:
                    return compiled(*args)
                except NotCompiled:
                    return fallback(*args)

        setattr(self, name, kernel)  # found directly from now on
        return kernel


@functools.cache
def _compiled_kernels(module: str, compile_policy: str) -> _CompiledKernels:
    return _CompiledKernels(module, compile_policy)


def resolve(backend, x) -> Backend:
    """The backend that runs a call whose main input is ``x`` (module docstring)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}")
    numpy_input = _is_numpy_input(x)
    compile_policy = _WAIT
    if backend == "auto":
        if numpy_input:
            backend = "numba" if _installed("numba") else "numpy"
            compile_policy = _BACKGROUND
        else:
            if not _installed("array_api"):
                raise _missing("array_api", f" and x is a {type(x).__module__}.{type(x).__name__}")
            backend = "array_api"
    if backend in ("numpy", "numba"):
        if not numpy_input:
            raise TypeError(f'backend="{backend}" computes on NumPy arrays, got x of type '
                            f'{type(x).__module__}.{type(x).__name__}: use backend="array_api" (or "auto") for '
                            "the arrays of other libraries, or convert x with numpy.asarray")
        if backend == "numba" and not _installed("numba"):
            raise _missing("numba")
        return Backend(backend, np, compile_policy)
    if not _installed("array_api"):
        raise _missing("array_api")
    from bnsym.runtime.array_api import namespace

    if numpy_input:
        x = np.asarray(x)
    return Backend("array_api", namespace(x))
