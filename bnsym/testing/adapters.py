"""The implementation protocol, the built-in adapters, and loading an implementation from a CLI target.

An implementation under test is either

- a function ``forward(x, gamma, beta, eps) -> y``, or
- an object with that ``forward`` method and, optionally, ``backward(dy, x, gamma, beta, eps) -> (dx, dgamma,
  dbeta)``,

NumPy in and NumPy out, channel axis 1 (x has shape (N, C, ...)), training mode: batch statistics, biased
variance. :class:`Implementation` wraps either form and records what it offers as ``capabilities`` (``"forward"``,
``"backward"``); a property runs when the capabilities it needs are offered and is reported as skipped otherwise,
so further optional methods (an eval forward, a running-statistics update, a double backward) only add
capability names here and properties that need them.

Built-in adapters, by name: ``torch`` (``torch.nn.functional.batch_norm``, gradients by autograd) and ``jax``
(``flax.linen.BatchNorm``, gradients by ``jax.vjp``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["BUILTIN", "Implementation", "TargetError", "load"]


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


class Implementation:
    """A batch norm under test, following the protocol in the module docstring."""

    def __init__(self, forward: Callable, backward: Callable | None = None, *, name: str = "implementation"):
        if not callable(forward):
            raise TypeError(f"forward must be callable, got {forward!r}")
        if backward is not None and not callable(backward):
            raise TypeError(f"backward must be callable or None, got {backward!r}")
        _check_signature(forward, "forward", ("x", "gamma", "beta", "eps"), name)
        if backward is not None:
            _check_signature(backward, "backward", ("dy", "x", "gamma", "beta", "eps"), name)
        self.forward, self.backward, self.name = forward, backward, name

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"forward"} | ({"backward"} if self.backward is not None else set()))

    @classmethod
    def wrap(cls, impl, name: str | None = None) -> Implementation:
        """An Implementation from a function, an object with ``forward`` (and ``backward``), or a class of such
        objects that needs no constructor arguments."""
        if isinstance(impl, Implementation):
            return impl
        if inspect.isclass(impl):
            try:
                impl = impl()
            except Exception as error:
                raise TargetError(f"{impl.__name__} is a class; bnsym instantiates it with no arguments, which "
                                  f"failed: {type(error).__name__}: {error}") from None
        label = name or getattr(impl, "__qualname__", None) or type(impl).__name__
        forward = getattr(impl, "forward", None)
        if forward is not None:
            return cls(forward, getattr(impl, "backward", None), name=label)
        if callable(impl):
            return cls(impl, name=label)
        raise TargetError(f"{label} is neither a function forward(x, gamma, beta, eps) nor an object with a "
                          f"forward method")


# ----- built-in adapters -----

def torch_implementation() -> Implementation:
    """``torch.nn.functional.batch_norm`` in training mode; the backward by autograd."""
    import torch
    import torch.nn.functional as F

    def tensors(*arrays, grad=False):
        return [torch.tensor(np.asarray(a), requires_grad=grad) for a in arrays]

    @contextmanager
    def one_thread():
        # The checker's arrays are small: waking intra-op threads costs more than the work, and on a loaded
        # 2-core machine it made each call 100x slower. The caller's setting is restored.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def forward(x, gamma, beta, eps):
        x, gamma, beta = tensors(x, gamma, beta)
        with one_thread(), torch.no_grad():
            return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps).numpy()

    def backward(dy, x, gamma, beta, eps):
        x, gamma, beta = tensors(x, gamma, beta, grad=True)
        with one_thread():
            y = F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
            dx, dgamma, dbeta = torch.autograd.grad(y, (x, gamma, beta), torch.tensor(np.asarray(dy)))
        return dx.numpy(), dgamma.numpy(), dbeta.numpy()

    return Implementation(forward, backward, name="torch.nn.functional.batch_norm")


def jax_implementation() -> Implementation:
    """``flax.linen.BatchNorm`` (axis 1, batch statistics) in JAX; the backward by ``jax.vjp``.

    float64 needs JAX's x64 mode, which this adapter switches on for the process. ``use_fast_variance=False``:
    Flax's default computes max(0, E[x^2] - E[x]^2), which the checker rejects in float32 on a large offset
    (flax #1491); the adapter checks Flax's two-pass variance.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import flax.linen as nn
    import jax.numpy as jnp

    def apply(x, gamma, beta, eps):
        layer = nn.BatchNorm(use_running_average=False, axis=1, epsilon=eps, use_fast_variance=False,
                             dtype=x.dtype, param_dtype=x.dtype)
        channels = x.shape[1]
        variables = {"params": {"scale": gamma, "bias": beta},
                     "batch_stats": {"mean": jnp.zeros(channels, x.dtype), "var": jnp.ones(channels, x.dtype)}}
        y, _ = layer.apply(variables, x, mutable=["batch_stats"])
        return y

    # Compiled whole, forward and backward together: one compilation per shape and dtype serves both methods (eps
    # is traced, so it does not recompile). Op by op, every primitive compiled separately for every new shape,
    # which made a check several times slower.
    @jax.jit
    def compiled(dy, x, gamma, beta, eps):
        y, vjp = jax.vjp(lambda a, g, b: apply(a, g, b, eps), x, gamma, beta)
        return y, vjp(dy)

    def traced_eps(eps, x):
        # float16 cannot hold eps = 1e-5 accurately; Flax computes the statistics in float32 anyway.
        return jnp.asarray(eps, jnp.promote_types(x.dtype, jnp.float32))

    def run(dy, x, gamma, beta, eps):
        x = jnp.asarray(x)
        return compiled(jnp.asarray(dy), x, jnp.asarray(gamma), jnp.asarray(beta), traced_eps(eps, x))

    def forward(x, gamma, beta, eps):
        return np.asarray(run(np.zeros_like(x), x, gamma, beta, eps)[0])

    def backward(dy, x, gamma, beta, eps):
        return tuple(np.asarray(g) for g in run(dy, x, gamma, beta, eps)[1])

    return Implementation(forward, backward, name="flax.linen.BatchNorm")


BUILTIN: dict[str, Callable[[], Implementation]] = {"jax": jax_implementation, "torch": torch_implementation}


# ----- loading a target -----

def _load_file(path: Path, target: str):
    if not path.is_file():
        raise TargetError(f"{target}: no such file {str(path)!r}")
    module_name = f"_bnsym_target_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise TargetError(f"{target}: importing {path} failed: {type(error).__name__}: {error}") from None
    return module


def load(target: str) -> Implementation:
    """The implementation named by a CLI target: ``torch``, ``jax``, ``path/to/file.py:NAME`` or
    ``package.module:NAME``. Raises :class:`TargetError` with a message for the user otherwise."""
    if not isinstance(target, str) or not target:
        raise TargetError(f"a target must be a non-empty string, got {target!r}")
    if target in BUILTIN:
        try:
            return BUILTIN[target]()
        except ImportError as error:
            raise TargetError(f"the {target} adapter needs {target} installed: {error}") from None
    location, sep, attribute = target.rpartition(":")
    if not sep or not location or not attribute:
        raise TargetError(f"{target!r} is not a target: use torch, jax, path/to/file.py:NAME or package.module:NAME")
    if location.endswith(".py") or "/" in location or "\\" in location:
        module = _load_file(Path(location), target)
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:
            raise TargetError(f"{target}: importing module {location!r} failed: {type(error).__name__}: "
                              f"{error}") from None
    try:
        impl = getattr(module, attribute)
    except AttributeError:
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        raise TargetError(f"{target}: {location} has no attribute {attribute!r} (it has: {', '.join(names)})") \
            from None
    return Implementation.wrap(impl, name=target)
