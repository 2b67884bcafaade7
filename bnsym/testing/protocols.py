"""Each layer's protocol: how an implementation is called and what it returns, computed from the layer's
specification (:mod:`bnsym.spec`).

Every layer follows its framework's functional form: NumPy arrays in, arrays out, training mode (each group of
values normalised with its own statistics, biased variance), ``eps`` a float. The arguments follow from the spec:

* ``forward(x, *parameters, eps, *options) -> y`` and ``backward(dy, x, *parameters, eps, *options) ->
  (dx, *d parameters)``, with the parameters ``spec.parameters`` (gamma and beta, or gamma alone for a layer that
  takes no mean) and the options the checker passes positionally: those an example's shape does not say
  (group norm's ``num_groups``). Batch norm: ``forward(x, gamma, beta, eps)``, x (N, C, *spatial), gamma and beta
  (C,); layer norm: the same, normalised over the trailing axes of x that ``gamma.shape`` names; RMS norm:
  ``forward(x, gamma, eps)``; group norm: ``forward(x, gamma, beta, eps, num_groups)``.
* optionally ``double_backward(ggx, *gg parameters, dy, x, *parameters, eps, *options) -> (gx, ggamma, gdy)``: the
  gradients of ``<ggx, dx> + <gggamma, dgamma> (+ <ggbeta, dbeta>)`` with respect to x, gamma and dy.
* a layer with running statistics (``spec.running_statistics``: batch norm) also has its eval-mode and
  running-statistics methods: ``eval_forward``, ``eval_backward`` and ``eval_double_backward`` take the training
  arguments followed by ``running_mean, running_var``; ``train_forward(x, gamma, beta, eps, running_mean,
  running_var, momentum, num_batches_tracked) -> (y, new_running_mean, new_running_var)``.

A layer whose training forward reads its running statistics, or that has scalar options (batch renormalisation:
``forward(x, gamma, beta, eps, running_mean, running_std, r_max, d_max)``), takes them after the options in every
training method (:func:`constants`), and its eval methods take its own running statistics (``running_std``).
A layer with field inputs and outputs (``spec.field_inputs``, ``spec.field_outputs``: fused add + RMS norm's
residual and h) takes each field input after x and returns ``(y, *field outputs)`` from forward; its backward takes
one upstream gradient per output first and returns one gradient per field input after dx::

    forward(x, residual, gamma, eps)            -> (y, h)
    backward(dy, dh, x, residual, gamma, eps)   -> (dx, dresidual, dgamma)

and ``double_backward(ggx, ggresidual, gggamma, dy, dh, x, residual, gamma, eps) -> (gx, gresidual, ggamma, gdy,
gdh)``: the gradients of ``<ggx, dx> + <ggresidual, dresidual> + <gggamma, dgamma>`` with respect to x, residual,
gamma, dy and dh.

dgamma and dbeta have gamma's shape: a parameter shared by several groups (layer norm's by every row, instance
norm's by every sample) gets the sum of their gradients.

This module is plain data and shapes (no SymPy, no Hypothesis): the adapters, the strategies and the properties
read the protocol from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnsym.spec import SPECS, LayerSpec, spec

__all__ = ["DEFAULT_LAYER", "METHODS", "LayerProtocol", "constants", "layer_names", "protocol"]

#: The layer a check is of when none is named (``check_batchnorm``, ``bnsym check`` without ``--layer``).
DEFAULT_LAYER = "batch_norm"

#: Every method a protocol can have (a layer with running statistics has them all).
METHODS = ("forward", "backward", "eval_forward", "eval_backward", "train_forward", "double_backward",
           "eval_double_backward")

#: The options an example's shape and gamma's shape do not say, passed positionally after eps.
_POSITIONAL_OPTIONS = ("num_groups",)


def layer_names() -> tuple[str, ...]:
    """Every layer the checker knows: the registered specifications, the built-in ones first."""
    return tuple(SPECS)


def constants(layer: LayerSpec) -> tuple[str, ...]:
    """The arguments of a layer's training methods that are never differentiated, after its options
    (:attr:`~bnsym.spec.LayerSpec.constant_names`: the running statistics it reads, then its scalar options)."""
    return layer.constant_names


def _signatures(layer: LayerSpec) -> dict[str, tuple[str, ...]]:
    parameters = layer.parameters
    options = tuple(name for name in layer.options if name in _POSITIONAL_OPTIONS)
    cotangents = tuple("gg" + p for p in parameters)
    fixed = constants(layer)
    signatures = {
        "forward": (*layer.inputs, *parameters, "eps", *options, *fixed),
        "backward": (*("d" + o for o in layer.outputs), *layer.inputs, *parameters, "eps", *options, *fixed),
    }
    if not layer.plain:  # no eval mode or running statistics for a layer with field inputs and outputs
        signatures["double_backward"] = (*("gg" + f for f in layer.inputs), *cotangents,
                                         *("d" + o for o in layer.outputs), *layer.inputs, *parameters, "eps",
                                         *options)
        return signatures
    if layer.running_statistics:
        running = layer.running_names
        if layer.reads_running:  # the training methods take them already
            signatures.update({
                "eval_forward": ("x", *parameters, "eps", *options, *running),
                "eval_backward": ("dy", "x", *parameters, "eps", *options, *running),
                "train_forward": (*signatures["forward"], "momentum", "num_batches_tracked"),
            })
        else:
            signatures.update({
                "eval_forward": (*signatures["forward"], *running),
                "eval_backward": (*signatures["backward"], *running),
                "train_forward": (*signatures["forward"], *running, "momentum", "num_batches_tracked"),
            })
    signatures["double_backward"] = ("ggx", *cotangents, "dy", "x", *parameters, "eps", *options, *fixed)
    if layer.running_statistics:
        signatures["eval_double_backward"] = ("ggx", *cotangents, "dy", "x", *parameters, "eps", *options,
                                              *layer.running_names)
    return signatures


@dataclass(frozen=True)
class LayerProtocol:
    """One layer's protocol (module docstring).

    - ``name``, ``title``: the layer's name (``--layer``) and its name in prose.
    - ``inputs``, ``outputs``: the per-element inputs (x, then the layer's field inputs) and what ``forward``
      returns (y, then the layer's field outputs); ``upstream``: the upstream gradients ``backward`` takes (dy, then
      one per field output).
    - ``signatures``: each method's positional arguments (``forward`` required, the others optional).
    - ``parameters``: ("gamma", "beta"), or ("gamma",) for a layer that takes no mean.
    - ``gradients``: what ``backward`` returns, ``"d" + x`` and ``"d" + parameter``.
    - ``centred``: the layer subtracts a mean.
    - ``groups``: what one group of values is, for reports.
    """

    name: str
    title: str
    signatures: dict[str, tuple[str, ...]]
    parameters: tuple[str, ...]
    centred: bool
    groups: str
    inputs: tuple[str, ...] = ("x",)
    outputs: tuple[str, ...] = ("y",)

    @classmethod
    def of(cls, layer: LayerSpec) -> LayerProtocol:
        return cls(layer.name, layer.short, _signatures(layer), layer.parameters, layer.centred, layer.group,
                   layer.inputs, layer.outputs)

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple("d" + o for o in self.outputs)

    @property
    def gradients(self) -> tuple[str, ...]:
        return (*("d" + f for f in self.inputs), *("d" + p for p in self.parameters))

    @property
    def field_gradients(self) -> tuple[str, ...]:
        """The gradients shaped like x: dx and one per field input."""
        return tuple("d" + f for f in self.inputs)

    @property
    def second_order(self) -> tuple[str, ...]:
        """What double_backward returns: (gx, ggamma, gdy), with a layer's field inputs and upstream gradients
        (gx, gresidual, ggamma, gdy, gdh)."""
        return (*("g" + f for f in self.inputs), "ggamma", *("g" + d for d in self.upstream))

    @property
    def cotangents(self) -> tuple[str, ...]:
        """The cotangents double_backward takes, one per gradient of backward: (ggx, gggamma[, ggbeta]), with a
        layer's field inputs (ggx, ggresidual, gggamma)."""
        return tuple("gg" + name for name in (*self.inputs, *self.parameters))

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(m for m in self.signatures if m != "forward")

    def call(self, method: str) -> str:
        """``forward(x, gamma, beta, eps)``: a method with its arguments, for messages."""
        return f"{method}({', '.join(self.signatures[method])})"


_CACHE: dict[LayerSpec, LayerProtocol] = {}


def protocol(layer: str) -> LayerProtocol:
    """The protocol of ``layer``; ValueError naming the known layers otherwise."""
    layer_spec = spec(layer)
    if layer_spec not in _CACHE:
        _CACHE[layer_spec] = LayerProtocol.of(layer_spec)
    return _CACHE[layer_spec]
