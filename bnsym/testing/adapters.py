"""The implementation protocol, the built-in adapters, and loading an implementation from a CLI target.

Each layer has its protocol, following its framework's functional form (:mod:`bnsym.testing.protocols`):

- batch norm (the default): ``forward(x, gamma, beta, eps)``, ``backward(dy, x, gamma, beta, eps) -> (dx, dgamma,
  dbeta)``, channel axis 1, and the optional methods below;
- layer norm: ``forward(x, gamma, beta, eps)``, normalised over the trailing axes of x that ``gamma.shape`` names,
  ``backward(dy, x, gamma, beta, eps) -> (dx, dgamma, dbeta)``;
- RMS norm: ``forward(x, gamma, eps)``, ``backward(dy, x, gamma, eps) -> (dx, dgamma)``;
- group norm: ``forward(x, gamma, beta, eps, num_groups)``, ``backward(dy, x, gamma, beta, eps, num_groups) ->
  (dx, dgamma, dbeta)``, x of shape (N, C, *spatial), C split into num_groups contiguous groups;
- instance norm: ``forward(x, gamma, beta, eps)``, ``backward(dy, x, gamma, beta, eps) -> (dx, dgamma, dbeta)``,
  statistics per sample and channel over the spatial axes (channel axis 1);

and optionally ``double_backward`` in the layer's form: the cotangents of the backward's results (``ggx, gggamma,
ggbeta``; no ggbeta for RMS norm) followed by the backward's arguments, returning ``(gx, ggamma, gdy)``, the
gradients of ``<ggx, dx> + <gggamma, dgamma> (+ <ggbeta, dbeta>)`` with respect to x, gamma and dy. dgamma and
dbeta have gamma's shape (a parameter shared by several groups gets the sum of their gradients).

For batch norm in detail, an implementation under test is either

- a function ``forward(x, gamma, beta, eps) -> y``, or
- an object with that ``forward`` method and, optionally, ``backward(dy, x, gamma, beta, eps) -> (dx, dgamma,
  dbeta)`` and any of the optional methods below,

NumPy in and NumPy out, channel axis 1 (x has shape (N, C, ...)), training mode: batch statistics, biased
variance. Optional methods (the checker runs the properties whose methods are offered and says what it skipped):

- ``eval_forward(x, gamma, beta, eps, running_mean, running_var) -> y``: eval mode. ``running_mean`` and
  ``running_var`` are the layer's buffers: an eval forward must leave them bit-identical.
- ``eval_backward(dy, x, gamma, beta, eps, running_mean, running_var) -> (dx, dgamma, dbeta)``.
- ``train_forward(x, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked) -> (y,
  new_running_mean, new_running_var)``: a training step that also updates the running statistics, in the
  implementation's own convention (``bnsym check --convention`` says which one to expect). ``momentum`` is None for
  a cumulative average; ``num_batches_tracked`` counts the batches seen *before* this one.
- ``double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps) -> (gx, ggamma, gdy)``: the gradients of
  ``<ggx, dx> + <gggamma, dgamma> + <ggbeta, dbeta>`` with respect to x, gamma and dy (training mode).
- ``eval_double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running_mean, running_var) -> (gx,
  ggamma, gdy)``: the same in eval mode.

:class:`Implementation` wraps either form and records what it offers as ``capabilities`` (``"forward"``,
``"backward"`` and the names of the optional methods); a property runs when the capabilities it needs are offered
and is reported as skipped otherwise.

Built-in adapters, by name: ``torch`` and ``jax``, for every built-in layer; which framework call is which layer is
data, in one table (:data:`FRAMEWORK_CALLS`). A layer that keeps running statistics (``spec.running_statistics``:
batch norm) is driven as a module with its buffers, in train and eval mode: ``torch.nn.BatchNorm1d/2d/3d`` with
gradients by autograd, ``flax.linen.BatchNorm`` with gradients by ``jax.vjp``. The others are driven functionally,
in training mode:

- ``torch``: ``torch.nn.functional.layer_norm`` (normalised shape ``gamma.shape``), ``rms_norm``, ``group_norm``
  and ``instance_norm`` (``use_input_stats=True``: the statistics of the input), on the CPU, one intra-op thread;
  gradients by ``torch.autograd.grad``, and gradients of gradients with ``create_graph=True``.
- ``jax``: ``flax.linen.LayerNorm`` and ``RMSNorm`` (reduction and feature axes: the trailing axes gamma covers),
  ``GroupNorm`` (Flax's groups are on the last axis: x is moved to channel-last and back) and ``InstanceNorm``
  (``feature_axes=1``), each with ``use_fast_variance=False`` (Flax's default computes E[x^2] - E[x]^2, which the
  checker rejects in float32 at a large offset, flax #1491) and with ``dtype`` and ``param_dtype`` the input's;
  gradients by ``jax.vjp``, gradients of gradients by ``jax.vjp`` of that, each compiled by ``jax.jit`` once per
  shape and dtype (eps is traced, so it does not recompile). float64 needs JAX's x64 mode, which the adapter
  switches on for the process.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnsym.spec import spec
from bnsym.testing.implementation import OPTIONAL, SIGNATURES, Implementation, TargetError
from bnsym.testing.protocols import DEFAULT_LAYER, protocol
from bnsym.testing.protocols import constants as protocol_constants
from bnsym.testing.threads import torch_one_thread

__all__ = ["BUILTIN", "FRAMEWORK_CALLS", "OPTIONAL", "SIGNATURES", "FrameworkCalls", "Implementation", "TargetError",
           "load", "resolve"]


# ----- which framework call is which layer -----

@dataclass(frozen=True)
class FrameworkCalls:
    """How the frameworks compute one layer. ``torch``: a function ``(F, x, params, eps, num_groups) -> y`` of
    ``torch.nn.functional`` (``F``), or for a layer with running statistics the name of its module family
    (``BatchNorm``: ``torch.nn.BatchNorm1d/2d/3d``); ``flax``: the ``flax.linen`` module's name, and for a layer
    without running statistics ``apply(nn, jnp, x, params, common, num_groups) -> y``, where ``common`` are the
    keyword arguments every Flax module takes here (``epsilon``, ``dtype``, ``param_dtype``)."""

    torch: Callable | str
    flax: str
    apply: Callable | None = None


def _flax_trailing(module):
    def apply(nn, jnp, x, params, common, num_groups):
        axes = tuple(range(-params[0].ndim, 0))
        names = ("scale", "bias")[:len(params)]
        fast = {"use_fast_variance": False} if len(params) == 2 else {}
        layer = getattr(nn, module)(reduction_axes=axes, feature_axes=axes, **fast, **common)
        return layer.apply({"params": dict(zip(names, params))}, x)
    return apply


def _flax_group_norm(nn, jnp, x, params, common, num_groups):
    layer = nn.GroupNorm(num_groups=num_groups, use_fast_variance=False, **common)
    variables = {"params": {"scale": params[0], "bias": params[1]}}
    return jnp.moveaxis(layer.apply(variables, jnp.moveaxis(x, 1, -1)), -1, 1)


def _flax_instance_norm(nn, jnp, x, params, common, num_groups):
    variables = {"params": {"scale": params[0], "bias": params[1]}}
    return nn.InstanceNorm(feature_axes=1, use_fast_variance=False, **common).apply(variables, x)


#: Each built-in layer's framework calls (:class:`FrameworkCalls`).
FRAMEWORK_CALLS: dict[str, FrameworkCalls] = {
    "batch_norm": FrameworkCalls("BatchNorm", "BatchNorm"),
    "layer_norm": FrameworkCalls(lambda F, x, p, eps, groups: F.layer_norm(x, tuple(p[0].shape), p[0], p[1], eps),
                                 "LayerNorm", _flax_trailing("LayerNorm")),
    "rms_norm": FrameworkCalls(lambda F, x, p, eps, groups: F.rms_norm(x, tuple(p[0].shape), p[0], eps),
                               "RMSNorm", _flax_trailing("RMSNorm")),
    "group_norm": FrameworkCalls(lambda F, x, p, eps, groups: F.group_norm(x, int(groups), p[0], p[1], eps),
                                 "GroupNorm", _flax_group_norm),
    "instance_norm": FrameworkCalls(lambda F, x, p, eps, groups: F.instance_norm(x, weight=p[0], bias=p[1],
                                                                                 use_input_stats=True, eps=eps),
                                    "InstanceNorm", _flax_instance_norm),
}


def _calls(layer: str) -> FrameworkCalls:
    if layer not in FRAMEWORK_CALLS:
        raise TargetError(f"the built-in adapters know {', '.join(FRAMEWORK_CALLS)}; {layer} has none: check your "
                          "own implementation (path/to/file.py:NAME)")
    return FRAMEWORK_CALLS[layer]


# ----- built-in adapters -----

def torch_implementation(layer: str = DEFAULT_LAYER) -> Implementation:
    """The torch modules of a layer with running statistics (``torch.nn.BatchNorm1d/2d/3d``, by the number of
    dimensions of x), in train and eval mode with its running buffers; gradients, and gradients of gradients, by
    autograd."""
    import torch

    family = _calls(layer).torch
    modules = {ndim: getattr(torch.nn, f"{family}{max(ndim - 2, 1)}d") for ndim in (2, 3, 4, 5)}

    def tensor(a, grad=False):
        return torch.tensor(np.asarray(a), requires_grad=grad)

    one_thread = torch_one_thread

    def module(x, gamma, beta, eps, *, running=None, momentum=0.1, num_batches_tracked=0, training=True):
        """A BatchNorm module holding gamma and beta (as tensors that require grad) and the running buffers."""
        if x.ndim not in modules:
            raise ValueError(f"torch.nn.{family}*d takes 2 to 5 dimensions, got x of shape {x.shape}")
        layer = modules[x.ndim](x.shape[1], eps=eps, momentum=momentum, dtype=torch.from_numpy(x[:0]).dtype)
        with torch.no_grad():
            if running is not None:
                layer.running_mean.copy_(tensor(running[0]))
                layer.running_var.copy_(tensor(running[1]))
            layer.num_batches_tracked.fill_(int(num_batches_tracked))
        weight, bias = tensor(gamma, grad=True), tensor(beta, grad=True)
        del layer.weight, layer.bias  # plain tensors instead of Parameters, so that autograd sees them as inputs
        layer.weight, layer.bias = weight, bias
        return layer.train(training), weight, bias

    def write_back(layer, running_mean, running_var):
        # The buffers are the caller's arrays: whatever the module did to its buffers shows in them.
        np.copyto(running_mean, layer.running_mean.detach().numpy())
        np.copyto(running_var, layer.running_var.detach().numpy())

    def forward(x, gamma, beta, eps):
        layer, _, _ = module(x, gamma, beta, eps)
        with one_thread(), torch.no_grad():
            return layer(tensor(x)).numpy()

    def gradients(dy, x, gamma, beta, eps, running=None):
        layer, weight, bias = module(x, gamma, beta, eps, running=running, training=running is None)
        xt = tensor(x, grad=True)
        with one_thread():
            y = layer(xt)
            return [g.numpy() for g in torch.autograd.grad(y, (xt, weight, bias), tensor(dy))]

    def backward(dy, x, gamma, beta, eps):
        return tuple(gradients(dy, x, gamma, beta, eps))

    def eval_forward(x, gamma, beta, eps, running_mean, running_var):
        layer, _, _ = module(x, gamma, beta, eps, running=(running_mean, running_var), training=False)
        with one_thread(), torch.no_grad():
            y = layer(tensor(x)).numpy()
        write_back(layer, running_mean, running_var)
        return y

    def eval_backward(dy, x, gamma, beta, eps, running_mean, running_var):
        return tuple(gradients(dy, x, gamma, beta, eps, running=(running_mean, running_var)))

    def train_forward(x, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        layer, _, _ = module(x, gamma, beta, eps, running=(running_mean, running_var), momentum=momentum,
                             num_batches_tracked=num_batches_tracked)
        with one_thread(), torch.no_grad():
            y = layer(tensor(x)).numpy()
        return y, layer.running_mean.numpy().copy(), layer.running_var.numpy().copy()

    def second_order(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running=None):
        layer, weight, bias = module(x, gamma, beta, eps, running=running, training=running is None)
        xt, dyt = tensor(x, grad=True), tensor(dy, grad=True)
        with one_thread():
            y = layer(xt)
            dx, dgamma, dbeta = torch.autograd.grad(y, (xt, weight, bias), dyt, create_graph=True)
            total = (dx * tensor(ggx)).sum() + (dgamma * tensor(gggamma)).sum() + (dbeta * tensor(ggbeta)).sum()
            result = torch.autograd.grad(total, (xt, weight, dyt), allow_unused=True)
        # A gradient that does not depend on an input comes back as None: it is zero.
        return tuple(np.zeros(np.shape(a)) if g is None else g.detach().numpy()
                     for g, a in zip(result, (x, gamma, dy)))

    def double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps):
        return second_order(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps)

    def eval_double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running_mean, running_var):
        return second_order(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running=(running_mean, running_var))

    return Implementation(forward, backward, name=f"torch.nn.{family}*d", layer=layer, eval_forward=eval_forward,
                          eval_backward=eval_backward, train_forward=train_forward, double_backward=double_backward,
                          eval_double_backward=eval_double_backward)


def jax_implementation(layer: str = DEFAULT_LAYER) -> Implementation:
    """The Flax module of a layer with running statistics (``flax.linen.BatchNorm``, axis 1) in JAX, in train mode
    (batch statistics, running statistics updated with Flax's momentum) and eval mode
    (``use_running_average=True``); gradients by ``jax.vjp``, and gradients of gradients by ``jax.vjp`` of that.

    float64 needs JAX's x64 mode, which this adapter switches on for the process. ``use_fast_variance=False``:
    Flax's default computes max(0, E[x^2] - E[x]^2), which the checker rejects in float32 on a large offset
    (flax #1491); the adapter checks Flax's two-pass variance. Flax has no cumulative average: with
    ``momentum=None`` its ``train_forward`` raises.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import flax.linen as nn
    import jax.numpy as jnp

    module = getattr(nn, _calls(layer).flax)

    def apply(x, gamma, beta, eps, running_mean, running_var, momentum, training):
        layer = module(use_running_average=not training, axis=1, epsilon=eps, momentum=momentum,
                             use_fast_variance=False, dtype=x.dtype, param_dtype=x.dtype)
        variables = {"params": {"scale": gamma, "bias": beta},
                     "batch_stats": {"mean": running_mean, "var": running_var}}
        y, updated = layer.apply(variables, x, mutable=["batch_stats"])
        return y, updated["batch_stats"]["mean"], updated["batch_stats"]["var"]

    # Compiled whole, one compilation per shape and dtype (eps and momentum are traced, so they do not
    # recompile): op by op, every primitive compiles separately for every new shape, which made a check several
    # times slower.
    @jax.jit
    def compiled_train(x, gamma, beta, eps, running_mean, running_var, momentum):
        return apply(x, gamma, beta, eps, running_mean, running_var, momentum, True)

    @jax.jit
    def compiled_eval(x, gamma, beta, eps, running_mean, running_var):
        return apply(x, gamma, beta, eps, running_mean, running_var, 0.99, False)[0]

    def output(training):
        if training:
            def y_of(x, gamma, beta, eps, running_mean, running_var):
                return apply(x, gamma, beta, eps, running_mean, running_var, 0.99, True)[0]
        else:
            def y_of(x, gamma, beta, eps, running_mean, running_var):
                return apply(x, gamma, beta, eps, running_mean, running_var, 0.99, False)[0]
        return y_of

    def first_order(training):
        y_of = output(training)

        def gradients(dy, x, gamma, beta, eps, running_mean, running_var):
            _, vjp = jax.vjp(lambda a, g, b: y_of(a, g, b, eps, running_mean, running_var), x, gamma, beta)
            return vjp(dy)
        return gradients

    compiled_backward = {training: jax.jit(first_order(training)) for training in (True, False)}

    def second_order(training):
        gradients = first_order(training)

        def second(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running_mean, running_var):
            _, vjp = jax.vjp(lambda a, g, d: gradients(d, a, g, beta, eps, running_mean, running_var), x, gamma, dy)
            return vjp((ggx, gggamma, ggbeta))
        return jax.jit(second)

    compiled_double = {training: second_order(training) for training in (True, False)}

    def scalar(value, x):
        # float16 cannot hold eps = 1e-5 accurately; Flax computes the statistics in float32 anyway.
        return jnp.asarray(value, jnp.promote_types(x.dtype, jnp.float32))

    def arrays(*values):
        return [jnp.asarray(v) for v in values]

    def placeholders(x):
        channels = x.shape[1]
        return jnp.zeros(channels, x.dtype), jnp.ones(channels, x.dtype)

    def numpy(values):
        return tuple(np.asarray(v) for v in values)

    def forward(x, gamma, beta, eps):
        x, gamma, beta = arrays(x, gamma, beta)
        return np.asarray(compiled_train(x, gamma, beta, scalar(eps, x), *placeholders(x), scalar(0.99, x))[0])

    def backward(dy, x, gamma, beta, eps):
        dy, x, gamma, beta = arrays(dy, x, gamma, beta)
        return numpy(compiled_backward[True](dy, x, gamma, beta, scalar(eps, x), *placeholders(x)))

    def eval_forward(x, gamma, beta, eps, running_mean, running_var):
        x, gamma, beta, rm, rv = arrays(x, gamma, beta, running_mean, running_var)
        return np.asarray(compiled_eval(x, gamma, beta, scalar(eps, x), rm, rv))

    def eval_backward(dy, x, gamma, beta, eps, running_mean, running_var):
        dy, x, gamma, beta, rm, rv = arrays(dy, x, gamma, beta, running_mean, running_var)
        return numpy(compiled_backward[False](dy, x, gamma, beta, scalar(eps, x), rm, rv))

    def train_forward(x, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        if momentum is None:
            raise NotImplementedError(f"flax.linen.{_calls(layer).flax} has no cumulative average (momentum=None)")
        x, gamma, beta, rm, rv = arrays(x, gamma, beta, running_mean, running_var)
        return numpy(compiled_train(x, gamma, beta, scalar(eps, x), rm, rv, scalar(momentum, x)))

    def double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps):
        args = arrays(ggx, gggamma, ggbeta, dy, x, gamma, beta)
        return numpy(compiled_double[True](*args, scalar(eps, args[4]), *placeholders(args[4])))

    def eval_double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running_mean, running_var):
        args = arrays(ggx, gggamma, ggbeta, dy, x, gamma, beta)
        return numpy(compiled_double[False](*args, scalar(eps, args[4]), *arrays(running_mean, running_var)))

    return Implementation(forward, backward, name=f"flax.linen.{_calls(layer).flax}", layer=layer,
                          eval_forward=eval_forward,
                          eval_backward=eval_backward, train_forward=train_forward, double_backward=double_backward,
                          eval_double_backward=eval_double_backward)


# ----- the built-in adapters of the layers without running statistics: functional, in training mode -----

def _arguments(layer: str, method: str, args: tuple) -> dict:
    """The positional arguments of a protocol method, by name."""
    names = protocol(layer).signatures[method]
    if len(args) != len(names):
        raise TypeError(f"{method} takes ({', '.join(names)}), got {len(args)} arguments")
    return dict(zip(names, args))


def _methods(layer: str, forward, backward, double_backward, name: str) -> Implementation:
    parameters = protocol(layer).parameters
    fixed = protocol_constants(spec(layer))

    def constants(a: dict) -> dict:
        """The layer's constants (running statistics read, scalar options) by name, for a layer that has them."""
        return {"constants": {n: a[n] for n in fixed}} if fixed else {}

    def forward_method(*args):
        a = _arguments(layer, "forward", args)
        return forward(a["x"], [a[p] for p in parameters], a["eps"], a.get("num_groups"), **constants(a))

    def backward_method(*args):
        a = _arguments(layer, "backward", args)
        return backward(a["dy"], a["x"], [a[p] for p in parameters], a["eps"], a.get("num_groups"), **constants(a))

    def double_backward_method(*args):
        a = _arguments(layer, "double_backward", args)
        cotangents = [a["ggx"], *(a["gg" + p] for p in parameters)]
        return double_backward(cotangents, a["dy"], a["x"], [a[p] for p in parameters], a["eps"],
                               a.get("num_groups"), **constants(a))

    return Implementation(forward_method, backward_method, name=name, layer=layer,
                          double_backward=double_backward_method)


def torch_functional_implementation(layer: str) -> Implementation:
    """The layer's ``torch.nn.functional`` call (:data:`FRAMEWORK_CALLS`) with autograd (module docstring)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    call = _calls(layer).torch

    def function(x, params, eps, num_groups):
        return call(F, x, params, eps, num_groups)

    def tensor(a, grad=False):
        return torch.tensor(np.asarray(a), requires_grad=grad)

    def forward(x, params, eps, num_groups):
        with torch_one_thread(), torch.no_grad():
            return function(tensor(x), [tensor(p) for p in params], float(eps), num_groups).numpy()

    def backward(dy, x, params, eps, num_groups):
        xt, pt = tensor(x, True), [tensor(p, True) for p in params]
        with torch_one_thread():
            y = function(xt, pt, float(eps), num_groups)
            return tuple(g.numpy() for g in torch.autograd.grad(y, (xt, *pt), tensor(dy)))

    def double_backward(cotangents, dy, x, params, eps, num_groups):
        xt, pt, dyt = tensor(x, True), [tensor(p, True) for p in params], tensor(dy, True)
        with torch_one_thread():
            y = function(xt, pt, float(eps), num_groups)
            first = torch.autograd.grad(y, (xt, *pt), dyt, create_graph=True)
            total = sum((g * tensor(c)).sum() for g, c in zip(first, cotangents))
            result = torch.autograd.grad(total, (xt, pt[0], dyt), allow_unused=True)
        # A gradient that does not depend on an input comes back as None: it is zero.
        return tuple(np.zeros(np.shape(a), np.asarray(x).dtype) if g is None else g.detach().numpy()
                     for g, a in zip(result, (x, params[0], dy)))

    return _methods(layer, forward, backward, double_backward, f"torch.nn.functional.{layer}")


def jax_functional_implementation(layer: str) -> Implementation:
    """The layer's Flax module (:data:`FRAMEWORK_CALLS`) with ``jax.vjp`` (module docstring)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import flax.linen as nn
    import jax.numpy as jnp

    calls = _calls(layer)

    def apply(x, params, eps, num_groups):
        common = dict(epsilon=eps, dtype=x.dtype, param_dtype=x.dtype)
        return calls.apply(nn, jnp, x, params, common, num_groups)

    def gradients(dy, x, params, eps, num_groups):
        _, vjp = jax.vjp(lambda a, p: apply(a, p, eps, num_groups), x, params)
        dx, dparams = vjp(dy)
        return (dx, *dparams)

    def second(cotangents, dy, x, params, eps, num_groups):
        def first(a, gamma, d):
            return gradients(d, a, (gamma, *params[1:]), eps, num_groups)

        _, vjp = jax.vjp(first, x, params[0], dy)
        return vjp(tuple(cotangents))

    # Compiled whole, once per shape and dtype: op by op, every primitive would compile for every new shape.
    compiled_forward = jax.jit(apply, static_argnums=3)
    compiled_backward = jax.jit(gradients, static_argnums=4)
    compiled_second = jax.jit(second, static_argnums=5)

    # NumPy arrays go to the compiled functions as they are: jnp.asarray would compile a conversion of its own
    # for every new shape.
    def scalar(value, x):
        # float16 cannot hold eps = 1e-5 accurately; Flax computes the statistics in float32 anyway.
        return np.asarray(value, np.promote_types(x.dtype, np.float32))

    def arrays(values):
        return tuple(np.asarray(v) for v in values)

    def groups(num_groups):
        return None if num_groups is None else int(num_groups)

    def forward(x, params, eps, num_groups):
        x = np.asarray(x)
        return np.asarray(compiled_forward(x, arrays(params), scalar(eps, x), groups(num_groups)))

    def backward(dy, x, params, eps, num_groups):
        x = np.asarray(x)
        results = compiled_backward(np.asarray(dy), x, arrays(params), scalar(eps, x), groups(num_groups))
        return tuple(np.asarray(r) for r in results)

    def double_backward(cotangents, dy, x, params, eps, num_groups):
        x = np.asarray(x)
        results = compiled_second(arrays(cotangents), np.asarray(dy), x, arrays(params), scalar(eps, x),
                                  groups(num_groups))
        return tuple(np.asarray(r) for r in results)

    return _methods(layer, forward, backward, double_backward, f"flax.linen.{calls.flax}")


def bnsym_implementation(layer: str = DEFAULT_LAYER) -> Implementation:
    """bnsym's own functions of ``layer`` (its NumPy kernels, through the one runtime: :mod:`bnsym.runtime.functions`,
    the same path as ``bnsym.<layer>``), in the checker's protocol: the options the protocol leaves to the shapes
    come from the layer's grouping (:meth:`bnsym.spec.Grouping.protocol_options`); backward and double backward
    recompute the saved statistics with the forward pass, as a framework's autograd does."""
    from bnsym.runtime.functions import functions

    layer_spec = spec(layer)
    own, grouping = functions(layer_spec), layer_spec.grouping

    def options(x, params, num_groups) -> dict:
        chosen = grouping.protocol_options(np.shape(x), np.shape(params[0]))
        return chosen if num_groups is None else {**chosen, "num_groups": num_groups}

    running = layer_spec.running_names if layer_spec.reads_running else ()
    if not layer_spec.plain:
        return _bnsym_with_fields(layer, own, options)

    def split(constants):
        """(the running statistics read, positionally; the scalar options, by keyword)."""
        return [constants[n] for n in running], {n: constants[n] for n in layer_spec.scalar_defaults}

    def forward(x, params, eps, num_groups, constants=None):
        read, scalars = split(constants or {})
        return own.forward(x, *params, *read, eps=eps, backend="numpy", **options(x, params, num_groups),
                           **scalars)[0]

    def saved(x, params, eps, num_groups, constants):
        read, scalars = split(constants or {})
        return own.forward(x, *params, *read, eps=eps, backend="numpy", **options(x, params, num_groups),
                           **scalars)[1:]

    def backward(dy, x, params, eps, num_groups, constants=None):
        statistics = saved(x, params, eps, num_groups, constants)
        read, scalars = split(constants or {})
        gradients = own.backward(dy, x, params[0], *statistics, *read, backend="numpy",
                                 **options(x, params, num_groups), **scalars)
        return gradients[:1 + len(params)]

    def double_backward(cotangents, dy, x, params, eps, num_groups, constants=None):
        statistics = saved(x, params, eps, num_groups, constants)
        read, scalars = split(constants or {})
        return own.double_backward(*cotangents, dy, x, params[0], *statistics, *read, backend="numpy",
                                   **options(x, params, num_groups), **scalars)

    return _methods(layer, forward, backward, double_backward, f"bnsym.{layer}")


def _bnsym_with_fields(layer: str, own, options) -> Implementation:
    """bnsym's own functions of a layer with field inputs and outputs (``LayerSpec.field_inputs``,
    ``field_outputs``) in the checker's protocol: forward returns (y, *field outputs); backward takes the upstream
    gradients, recomputes the forward pass and passes the normalised field and the saved statistics on."""
    layer_spec = spec(layer)
    p = protocol(layer)
    count = len(p.outputs)

    def run_forward(a):
        params = [a[name] for name in p.parameters]
        results = own.forward(*(a[f] for f in p.inputs), *params, eps=a["eps"], backend="numpy",
                              **options(a["x"], params, a.get("num_groups")))
        return dict(zip(p.outputs, results[:count])), results[count:], params

    def forward_method(*args):
        outputs, _, _ = run_forward(_arguments(layer, "forward", args))
        return tuple(outputs.values())

    def backward_method(*args):
        a = _arguments(layer, "backward", args)
        outputs, statistics, params = run_forward(a)
        normalised = a["x"] if layer_spec.normalises == "x" else outputs[layer_spec.normalises]
        return own.backward(*(a[d] for d in p.upstream), normalised, params[0], *statistics, backend="numpy",
                            **options(a["x"], params, a.get("num_groups")))

    def double_backward_method(*args):
        a = _arguments(layer, "double_backward", args)
        outputs, statistics, params = run_forward(a)
        normalised = a["x"] if layer_spec.normalises == "x" else outputs[layer_spec.normalises]
        return own.double_backward(*(a[c] for c in p.cotangents), *(a[d] for d in p.upstream), normalised,
                                   params[0], *statistics, backend="numpy",
                                   **options(a["x"], params, a.get("num_groups")))

    return Implementation(forward_method, backward_method, name=f"bnsym.{layer}", layer=layer,
                          double_backward=double_backward_method)


def _definition(layer: str) -> Implementation:
    """The layer written from its definition with torch and autograd
    (:class:`bnsym.testing.definition_target.DefinitionTarget`): the torch target of a layer that torch has no
    function for (Gemma's RMS norm, adaptive layer norm, a user's layer)."""
    from bnsym.testing.definition_target import definition_implementation  # SymPy: only when it is needed

    return definition_implementation(layer)


def _builtin(module: Callable[[str], Implementation], functional: Callable[[str], Implementation],
             framework: str, otherwise: Callable[[str], Implementation] | None = None) -> Callable[..., Implementation]:
    def build(layer: str = DEFAULT_LAYER) -> Implementation:
        if otherwise is not None and layer not in FRAMEWORK_CALLS:
            return otherwise(layer)
        return (module if spec(layer).running_statistics else functional)(layer)
    build.__doc__ = f"The built-in {framework} adapter of ``layer`` (default batch norm)."
    if otherwise is not None:
        build.__doc__ += f" A layer {framework} has no call for is written from its definition."
    return build


#: The built-in adapters by target name; each takes the layer (default batch norm). ``torch`` of a layer without a
#: framework call in :data:`FRAMEWORK_CALLS` is the layer's definition evaluated with torch and autograd.
BUILTIN: dict[str, Callable[..., Implementation]] = {
    "bnsym": bnsym_implementation,
    "jax": _builtin(jax_implementation, jax_functional_implementation, "jax"),
    "torch": _builtin(torch_implementation, torch_functional_implementation, "torch", _definition)}


# ----- loading a target -----

def _load_file(path: Path, target: str):
    """Import a file as ``python path/to/file.py`` would see it: its directory first on sys.path (and kept there,
    so that a sibling module imported later, inside a function, is found too)."""
    if not path.is_file():
        raise TargetError(f"{target}: no such file {str(path)!r}")
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module_name = f"_bnsym_target_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        hint = ""
        if isinstance(error, ModuleNotFoundError):
            hint = (f" ({error.name!r} is not next to {path.name} nor installed: install it, or add the directory "
                    "that holds it to PYTHONPATH)")
        raise TargetError(f"{target}: importing {path} failed: {type(error).__name__}: {error}{hint}") from None
    return module


def _load_module(location: str, target: str):
    """Import ``package.module`` as ``python -m`` would: from the current directory first, then sys.path."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as error:
        if error.name and (location == error.name or location.startswith(error.name + ".")):
            raise TargetError(f"{target}: there is no module {location!r} in the current directory ({cwd}) nor on "
                              "sys.path; run bnsym from the directory that holds it, or add that directory to "
                              "PYTHONPATH") from None
        raise TargetError(f"{target}: importing module {location!r} failed: {type(error).__name__}: {error} (a "
                          f"module it imports; install it, or add its directory to PYTHONPATH)") from None
    except Exception as error:
        raise TargetError(f"{target}: importing module {location!r} failed: {type(error).__name__}: "
                          f"{error}") from None


def load(target: str, layer: str = DEFAULT_LAYER) -> Implementation:
    """The implementation of ``layer`` named by a CLI target: ``torch``, ``jax``, ``path/to/file.py:NAME`` or
    ``package.module:NAME``. Raises :class:`TargetError` with a message for the user otherwise."""
    if not isinstance(target, str) or not target:
        raise TargetError(f"a target must be a non-empty string, got {target!r}")
    protocol(layer)  # an unknown layer is a ValueError before anything is imported
    if target in BUILTIN:
        try:
            return BUILTIN[target](layer)
        except ImportError as error:
            raise TargetError(f"the {target} adapter needs {target} installed: {error}") from None
    return Implementation.wrap(resolve(target), name=target, layer=layer)


def resolve(target: str):
    """The object named by ``path/to/file.py:NAME`` or ``package.module:NAME`` (any protocol: the sharded check
    loads its targets with it too). Raises :class:`TargetError` with a message for the user otherwise."""
    if not isinstance(target, str) or not target:
        raise TargetError(f"a target must be a non-empty string, got {target!r}")
    location, sep, attribute = target.rpartition(":")
    if not sep or not location or not attribute:
        raise TargetError(f"{target!r} is not a target: use bnsym, torch, jax, path/to/file.py:NAME or "
                          "package.module:NAME")
    if location.endswith(".py") or "/" in location or "\\" in location:
        module = _load_file(Path(location), target)
    else:
        module = _load_module(location, target)
    try:
        impl = getattr(module, attribute)
    except AttributeError:
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        raise TargetError(f"{target}: {location} has no attribute {attribute!r} (it has: {', '.join(names)})") \
            from None
    return impl


# ----- protocol mistakes, found before a run -----

def probe_protocol(impl: Implementation) -> None:
    """Call forward (and backward) once on a small input and raise :class:`TargetError` with one line when what
    comes back breaks the protocol: a tuple from forward, a wrong number of gradients, a tensor that requires grad,
    another layout. Anything else (an exception, wrong numbers) is left to the properties to report."""
    from bnsym.testing.failures import ProtocolError
    from bnsym.testing.properties import call_backward, call_forward
    from bnsym.testing.strategies import make_layer_example

    layer = getattr(impl, "layer", DEFAULT_LAYER)

    def attempt(example):
        try:
            call_forward(impl, example)
            if impl.backward is not None:
                call_backward(impl, example)
        except ProtocolError as error:
            raise TargetError(f"{impl.name}: {error.message}") from None
        except Exception as error:  # reported by the properties, with an example
            return error
        return None

    grouping = spec(layer).grouping
    small, large = (grouping.fit_entry(entry) for entry in grouping.probe_entries)
    if attempt(make_layer_example(layer, *small, "well-conditioned", 1e-5, 0)) is not None:
        return
    error = attempt(make_layer_example(layer, *large, "well-conditioned", 1e-5, 0))
    if error is not None and "broadcast" in str(error) and grouping.channel_axis:
        raise TargetError(f"{impl.name}: forward works on x of shape {small[0]} but on {large[0]} it raised {error}: "
                          "the protocol puts the channels on axis 1 (x of shape (N, C, ...)); wrap a channels-last "
                          "implementation in a transpose")

