"""The layers the checker knows, and each one's protocol: how an implementation is called and what it returns.

Every layer follows its framework's functional form: NumPy arrays in, arrays out, training mode (each group of
values normalised with its own statistics, biased variance), ``eps`` a float:

============== ================================================ ===============================================
layer          forward                                          backward
============== ================================================ ===============================================
batch_norm     ``forward(x, gamma, beta, eps) -> y``            ``backward(dy, x, gamma, beta, eps)
               x (N, C, *spatial), gamma and beta (C,)          -> (dx, dgamma, dbeta)``
layer_norm     ``forward(x, gamma, beta, eps) -> y``            ``backward(dy, x, gamma, beta, eps)
               normalised over the trailing axes of x that      -> (dx, dgamma, dbeta)``
               ``gamma.shape`` names (beta has that shape too)
rms_norm       ``forward(x, gamma, eps) -> y``                  ``backward(dy, x, gamma, eps) -> (dx, dgamma)``
               as layer norm, no centring and no beta
group_norm     ``forward(x, gamma, beta, eps, num_groups)``     ``backward(dy, x, gamma, beta, eps,
               x (N, C, *spatial), C split into num_groups      num_groups) -> (dx, dgamma, dbeta)``
               contiguous groups; gamma and beta (C,)
instance_norm  ``forward(x, gamma, beta, eps) -> y``            ``backward(dy, x, gamma, beta, eps)
               x (N, C, *spatial), statistics per sample and    -> (dx, dgamma, dbeta)``
               channel over the spatial axes; gamma, beta (C,)
============== ================================================ ===============================================

Optionally, each layer's ``double_backward`` takes the cotangents of the backward's results first, then the
backward's arguments, and returns the gradients of ``<ggx, dx> + <gggamma, dgamma> (+ <ggbeta, dbeta>)`` with
respect to x, gamma and dy: ``double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps) -> (gx, ggamma, gdy)``
for batch, layer and instance norm, ``(ggx, gggamma, dy, x, gamma, eps)`` for RMS norm and ``(ggx, gggamma, ggbeta,
dy, x, gamma, beta, eps, num_groups)`` for group norm. Batch norm also has its eval-mode and running-statistics
methods (:mod:`bnsym.testing.adapters`). dgamma and dbeta have gamma's shape: a parameter shared by several groups
(layer norm's by every row, instance norm's by every sample) gets the sum of their gradients.

This module is plain data and shapes (no SymPy, no Hypothesis): the adapters, the strategies and the properties
read the protocol from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILY", "LAYER_NAMES", "PROTOCOLS", "LayerProtocol", "protocol"]

#: Every layer the checker knows, batch norm (the default) first; the same names as bnsym.symbolic.layers.LAYERS.
LAYER_NAMES = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")
#: The layers other than batch norm, whose properties are the generic ones of bnsym.testing.family_properties.
FAMILY = LAYER_NAMES[1:]

_BATCH_NORM = {
    "forward": ("x", "gamma", "beta", "eps"),
    "backward": ("dy", "x", "gamma", "beta", "eps"),
    "eval_forward": ("x", "gamma", "beta", "eps", "running_mean", "running_var"),
    "eval_backward": ("dy", "x", "gamma", "beta", "eps", "running_mean", "running_var"),
    "train_forward": ("x", "gamma", "beta", "eps", "running_mean", "running_var", "momentum",
                      "num_batches_tracked"),
    "double_backward": ("ggx", "gggamma", "ggbeta", "dy", "x", "gamma", "beta", "eps"),
    "eval_double_backward": ("ggx", "gggamma", "ggbeta", "dy", "x", "gamma", "beta", "eps", "running_mean",
                             "running_var"),
}


def _family_signatures(parameters: tuple[str, ...], options: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    cotangents = tuple("gg" + p for p in parameters)
    return {
        "forward": ("x", *parameters, "eps", *options),
        "backward": ("dy", "x", *parameters, "eps", *options),
        "double_backward": ("ggx", *cotangents, "dy", "x", *parameters, "eps", *options),
    }


@dataclass(frozen=True)
class LayerProtocol:
    """One layer's protocol (module docstring).

    - ``name``, ``title``: the layer's name (``--layer``) and its name in prose.
    - ``signatures``: each method's positional arguments (``forward`` required, the others optional).
    - ``parameters``: ("gamma", "beta"), or ("gamma",) for RMS norm.
    - ``gradients``: what ``backward`` returns, ``"d" + x`` and ``"d" + parameter``.
    - ``centred``: the layer subtracts a mean (every layer but RMS norm).
    - ``groups``: what one group of values is, for reports ("one row over the normalised axes").
    """

    name: str
    title: str
    signatures: dict[str, tuple[str, ...]]
    parameters: tuple[str, ...]
    centred: bool
    groups: str

    @property
    def gradients(self) -> tuple[str, ...]:
        return ("dx", *("d" + p for p in self.parameters))

    @property
    def second_order(self) -> tuple[str, ...]:
        return ("gx", "ggamma", "gdy")

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(m for m in self.signatures if m != "forward")

    def call(self, method: str) -> str:
        """``forward(x, gamma, beta, eps)``: a method with its arguments, for messages."""
        return f"{method}({', '.join(self.signatures[method])})"


PROTOCOLS: dict[str, LayerProtocol] = {p.name: p for p in (
    LayerProtocol("batch_norm", "batch norm", _BATCH_NORM, ("gamma", "beta"), True,
                  "one channel over the batch and every spatial position"),
    LayerProtocol("layer_norm", "layer norm", _family_signatures(("gamma", "beta")), ("gamma", "beta"), True,
                  "one row over the trailing axes that gamma's shape names"),
    LayerProtocol("rms_norm", "RMS norm", _family_signatures(("gamma",)), ("gamma",), False,
                  "one row over the trailing axes that gamma's shape names"),
    LayerProtocol("group_norm", "group norm", _family_signatures(("gamma", "beta"), ("num_groups",)),
                  ("gamma", "beta"), True, "one sample's C/G contiguous channels with every spatial position"),
    LayerProtocol("instance_norm", "instance norm", _family_signatures(("gamma", "beta")), ("gamma", "beta"), True,
                  "one sample's channel over the spatial positions"),
)}


def protocol(layer: str) -> LayerProtocol:
    """The protocol of ``layer``; ValueError naming the known layers otherwise."""
    if layer not in PROTOCOLS:
        raise ValueError(f"unknown layer {layer!r}; known: {', '.join(LAYER_NAMES)}")
    return PROTOCOLS[layer]
