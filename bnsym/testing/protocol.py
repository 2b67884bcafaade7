"""What comes back from an implementation, turned into NumPy, or one line saying how it breaks the protocol.

Arrays of other libraries are accepted and converted: a torch.Tensor (on any device, without grad), a JAX array,
anything NumPy can convert. The mistakes real implementations make are named (:class:`ProtocolError`): a forward
that returns a tuple such as cs231n's ``(out, cache)``, a backward that returns two values instead of three, a
torch tensor that still requires grad, an output in another layout than x's.
"""

from __future__ import annotations

import numpy as np

from bnsym.testing.failures import PropertyFailure, ProtocolError

__all__ = ["output_array", "output_arrays"]


def _torch_to_numpy(value, what: str):
    if getattr(value, "requires_grad", False):
        raise ProtocolError(f"{what} is a torch.Tensor that requires grad; the protocol expects plain arrays: return "
                            "it detached (tensor.detach())")
    return value.detach().cpu().numpy()


def output_array(value, what: str, *, method: str, expects: str) -> np.ndarray:
    """``value`` as a NumPy array of numbers. ``what`` names it ("y from forward"); ``expects`` says what the
    protocol wants there ("y alone, an array shaped like x")."""
    if isinstance(value, (tuple, list)):
        hint = " (a cs231n-style (out, cache)? return out alone)" if method == "forward" and len(value) == 2 else ""
        raise ProtocolError(f"{method} returned a {type(value).__name__} of {len(value)} values where the protocol "
                            f"expects {expects}{hint}")
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        value = _torch_to_numpy(value, what)
    try:
        array = np.asarray(value)
    except Exception as error:
        raise ProtocolError(f"{what} is not an array ({type(value).__name__}: {type(error).__name__}: {error}); the "
                            f"protocol expects {expects}") from None
    if array.dtype == object:
        raise ProtocolError(f"{what} is a {type(value).__name__}, not an array of numbers; the protocol expects "
                            f"{expects}")
    if array.dtype.kind not in "fiu":
        raise PropertyFailure(f"{what} is not a floating-point array (dtype {array.dtype})")
    return array


def output_arrays(result, method: str, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """The len(names) arrays a method returns, each converted by :func:`output_array`."""
    expects = f"{len(names)} arrays ({', '.join(names)})"
    if type(result).__module__.split(".")[0] in ("numpy", "torch", "jax", "jaxlib") or not isinstance(
            result, (tuple, list)):
        raise ProtocolError(f"{method} returned one {type(result).__name__} where the protocol expects {expects}")
    if len(result) != len(names):
        raise ProtocolError(f"{method} returned {len(result)} values where the protocol expects {expects}")
    return tuple(output_array(value, f"{name} from {method}", method=f"{method} ({name})",
                              expects=f"{name} as one array") for value, name in zip(result, names))


def check_layout(array: np.ndarray, shape: tuple[int, ...], what: str, expected: str,
                 channel_axis: bool = True) -> None:
    """One line when an output has another shape than the protocol's (``expected`` says which); for a layer with a
    channel axis (``spec.grouping.channel_axis``), a permuted shape is taken for another layout of the channels."""
    if array.shape == tuple(shape):
        return
    if sorted(array.shape) == sorted(shape) or array.size == int(np.prod(shape)):
        hint = (" The protocol puts the channels on axis 1 (x of shape (N, C, ...)); gamma, beta and their gradients "
                "have gamma's shape") if channel_axis else ""
        raise ProtocolError(f"{what} has shape {array.shape}, expected {tuple(shape)} ({expected}): another "
                            f"layout?{hint}")
    raise ProtocolError(f"{what} has shape {array.shape}, expected {tuple(shape)} ({expected})")
