"""The built-in ``torch`` and ``jax`` adapters of layer, RMS, group and instance norm.

Each follows its layer's protocol (:mod:`bnsym.testing.protocols`): ``forward``, ``backward`` and ``double_backward``
in the layer's functional form, NumPy in and out.

- ``torch``: ``torch.nn.functional.layer_norm`` (normalised shape ``gamma.shape``), ``rms_norm``, ``group_norm``
  and ``instance_norm`` (``use_input_stats=True``: the statistics of the input), on the CPU, one intra-op thread;
  gradients by ``torch.autograd.grad``, and gradients of gradients with ``create_graph=True``.
- ``jax``: ``flax.linen.LayerNorm`` and ``RMSNorm`` (reduction and feature axes: the trailing axes gamma covers),
  ``GroupNorm`` (Flax's groups are on the last axis: x is moved to channel-last and back) and ``InstanceNorm``
  (``feature_axes=1``), each with ``use_fast_variance=False`` (Flax's default computes E[x^2] - E[x]^2, which the
  checker rejects in float32 at a large offset, flax #1491) and with ``dtype`` and ``param_dtype`` the input's;
  gradients by ``jax.vjp``, gradients of gradients by ``jax.vjp`` of that, each compiled by ``jax.jit`` once per
  shape and dtype (eps is traced, so it does not recompile). float64 needs JAX's x64 mode, which this adapter
  switches on for the process.
"""

from __future__ import annotations

import numpy as np

from bnsym.testing.implementation import Implementation
from bnsym.testing.protocols import protocol
from bnsym.testing.threads import torch_one_thread

__all__ = ["jax_implementation", "torch_implementation"]


def _arguments(layer: str, method: str, args: tuple) -> dict:
    """The positional arguments of a protocol method, by name."""
    names = protocol(layer).signatures[method]
    if len(args) != len(names):
        raise TypeError(f"{method} takes ({', '.join(names)}), got {len(args)} arguments")
    return dict(zip(names, args))


def _methods(layer: str, forward, backward, double_backward, name: str) -> Implementation:
    parameters = protocol(layer).parameters

    def forward_method(*args):
        a = _arguments(layer, "forward", args)
        return forward(a["x"], [a[p] for p in parameters], a["eps"], a.get("num_groups"))

    def backward_method(*args):
        a = _arguments(layer, "backward", args)
        return backward(a["dy"], a["x"], [a[p] for p in parameters], a["eps"], a.get("num_groups"))

    def double_backward_method(*args):
        a = _arguments(layer, "double_backward", args)
        cotangents = [a["ggx"], *(a["gg" + p] for p in parameters)]
        return double_backward(cotangents, a["dy"], a["x"], [a[p] for p in parameters], a["eps"],
                               a.get("num_groups"))

    return Implementation(forward_method, backward_method, name=name, layer=layer,
                          double_backward=double_backward_method)


def torch_implementation(layer: str) -> Implementation:
    """``torch.nn.functional.<layer>`` with autograd (module docstring)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    def function(x, params, eps, num_groups):
        if layer == "layer_norm":
            return F.layer_norm(x, tuple(params[0].shape), params[0], params[1], eps)
        if layer == "rms_norm":
            return F.rms_norm(x, tuple(params[0].shape), params[0], eps)
        if layer == "group_norm":
            return F.group_norm(x, int(num_groups), params[0], params[1], eps)
        return F.instance_norm(x, weight=params[0], bias=params[1], use_input_stats=True, eps=eps)

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


def jax_implementation(layer: str) -> Implementation:
    """Flax's layer (``instance_norm``: ``flax.linen.InstanceNorm``) with ``jax.vjp`` (module docstring)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import flax.linen as nn
    import jax.numpy as jnp

    def apply(x, params, eps, num_groups):
        dtype = x.dtype
        common = dict(epsilon=eps, dtype=dtype, param_dtype=dtype)
        if layer in ("layer_norm", "rms_norm"):
            axes = tuple(range(-params[0].ndim, 0))
            if layer == "layer_norm":
                module = nn.LayerNorm(reduction_axes=axes, feature_axes=axes, use_fast_variance=False, **common)
                return module.apply({"params": {"scale": params[0], "bias": params[1]}}, x)
            return nn.RMSNorm(reduction_axes=axes, feature_axes=axes, **common).apply(
                {"params": {"scale": params[0]}}, x)
        variables = {"params": {"scale": params[0], "bias": params[1]}}
        if layer == "group_norm":
            module = nn.GroupNorm(num_groups=num_groups, use_fast_variance=False, **common)
            return jnp.moveaxis(module.apply(variables, jnp.moveaxis(x, 1, -1)), -1, 1)
        return nn.InstanceNorm(feature_axes=1, use_fast_variance=False, **common).apply(variables, x)

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

    name = {"layer_norm": "LayerNorm", "rms_norm": "RMSNorm", "group_norm": "GroupNorm",
            "instance_norm": "InstanceNorm"}[layer]
    return _methods(layer, forward, backward, double_backward, f"flax.linen.{name}")
