"""Layer, RMS, group and instance norm against Flax (flax.linen) in float64, to 1e-10 relative: y, and the gradients
of x and of the parameters by jax.vjp for a random cotangent.

Flax's conventions differ from PyTorch's and bnsym's in places (docs/conventions.md); here each Flax layer is set up
to compute the same function: ``use_fast_variance=False`` (Flax's default E[x^2] - E[x]^2 loses digits at a large
offset), the same epsilon, and channel-last input (``axis=-1`` in bnsym) for group and instance norm.
"""

import numpy as np
import pytest

import bnsym

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")

RTOL = 1e-10


@pytest.fixture(autouse=True)
def float64_jax():
    jax.config.update("jax_enable_x64", True)


def _close(actual, expected, what, scale=0.0):
    """max|actual - expected| <= RTOL * max(max|expected|, scale) (``scale``: the size of the terms, see
    tests/test_family_vs_torch.py)."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, Flax's is {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), scale, 1e-300)
    error = float(np.max(np.abs(actual - expected))) / scale
    assert error <= RTOL, f"{what}: max error {error:.2e} relative to {scale:.2e} exceeds {RTOL:.0e}"


def flax_reference(layer, x, params, dy):
    """Flax's ``y`` and the vjp of ``dy``: ``(y, dx, dparams)``, params as a {"scale": ..., "bias": ...} dict."""
    params = {name: jax.numpy.asarray(value) for name, value in params.items()}
    y, (dx, dparams) = _value_and_vjp(layer, x, params, dy)
    return np.asarray(y), np.asarray(dx), {name: np.asarray(value) for name, value in dparams.items()}


def value_and_vjp(layer, x, params, dy):
    """Flax's y and the vjp of dy with respect to (x, params), compiled as one function (far faster than running
    jax.vjp op by op)."""

    def apply(x, params):
        return layer.apply({"params": params}, x)

    y, vjp = jax.vjp(apply, x, params)
    return y, vjp(dy)


_value_and_vjp = jax.jit(value_and_vjp, static_argnums=0)


def _float64(cls, **options):
    return cls(dtype=jax.numpy.float64, param_dtype=jax.numpy.float64, **options)


def _data(shape, parameter_shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.normal(0, 3), rng.uniform(0.3, 3), size=shape)
    return x, rng.normal(size=parameter_shape), rng.normal(size=parameter_shape), rng.normal(size=shape)


def _terms(gamma, invstd, dy):
    return float(np.max(np.abs(gamma)) * np.max(invstd) * np.max(np.abs(dy)))


LAYER_NORM = [((6, 5), -1, 1e-6), ((3, 4, 5), -1, 0.1), ((2, 3, 4, 5), (-2, -1), 1e-3),
              ((2, 2, 3, 4, 3), (2, 3, 4), 1e-5)]


@pytest.mark.parametrize("shape, axis, eps", LAYER_NORM)
def test_layer_norm_matches_flax(shape, axis, eps):
    axes = axis if isinstance(axis, tuple) else (axis,)
    parameter_shape = shape[-len(axes):]
    x, gamma, beta, dy = _data(shape, parameter_shape, 0)
    layer = _float64(nn.LayerNorm, epsilon=eps, reduction_axes=axes, feature_axes=axes, use_fast_variance=False)
    y_ref, dx_ref, grads = flax_reference(layer, x, {"scale": gamma, "bias": beta}, dy)
    y, mean, invstd = bnsym.layer_norm.forward(x, gamma, beta, eps=eps, axis=axis)
    dx, dgamma, dbeta = bnsym.layer_norm.backward(dy, x, gamma, mean, invstd, axis=axis)
    _close(y, y_ref, "layer norm y")
    _close(dx, dx_ref, "layer norm dx", scale=_terms(gamma, invstd, dy))
    _close(dgamma, grads["scale"], "layer norm dgamma")
    _close(dbeta, grads["bias"], "layer norm dbeta")


@pytest.mark.parametrize("shape, axis, eps", LAYER_NORM)
def test_rms_norm_matches_flax(shape, axis, eps):
    axes = axis if isinstance(axis, tuple) else (axis,)
    parameter_shape = shape[-len(axes):]
    x, gamma, _, dy = _data(shape, parameter_shape, 1)
    layer = _float64(nn.RMSNorm, epsilon=eps, reduction_axes=axes, feature_axes=axes)
    y_ref, dx_ref, grads = flax_reference(layer, x, {"scale": gamma}, dy)
    y, invrms = bnsym.rms_norm.forward(x, gamma, eps=eps, axis=axis)
    dx, dgamma = bnsym.rms_norm.backward(dy, x, gamma, invrms, axis=axis)
    _close(y, y_ref, "rms norm y")
    _close(dx, dx_ref, "rms norm dx", scale=_terms(gamma, invrms, dy))
    _close(dgamma, grads["scale"], "rms norm dgamma")


@pytest.mark.parametrize("shape, groups, eps", [((4, 6), 3, 1e-6), ((2, 5, 6), 3, 0.1), ((2, 3, 4, 6), 2, 1e-3),
                                                ((2, 2, 3, 2, 4), 4, 1e-5), ((2, 3, 4, 6), 1, 1e-5)])
def test_group_norm_matches_flax_channel_last(shape, groups, eps):
    x, gamma, beta, dy = _data(shape, shape[-1:], 2)
    layer = _float64(nn.GroupNorm, num_groups=groups, epsilon=eps, use_fast_variance=False)
    y_ref, dx_ref, grads = flax_reference(layer, x, {"scale": gamma, "bias": beta}, dy)
    y, mean, invstd = bnsym.group_norm.forward(x, gamma, beta, groups, eps=eps, axis=-1)
    dx, dgamma, dbeta = bnsym.group_norm.backward(dy, x, gamma, mean, invstd, groups, axis=-1)
    _close(y, y_ref, "group norm y")
    _close(dx, dx_ref, "group norm dx", scale=_terms(gamma, invstd, dy))
    _close(dgamma, grads["scale"], "group norm dgamma")
    _close(dbeta, grads["bias"], "group norm dbeta")


@pytest.mark.parametrize("shape, eps", [((2, 5, 3), 1e-6), ((2, 3, 4, 2), 0.1), ((2, 2, 3, 2, 4), 1e-3)])
def test_instance_norm_matches_flax_channel_last(shape, eps):
    x, gamma, beta, dy = _data(shape, shape[-1:], 3)
    layer = _float64(nn.InstanceNorm, epsilon=eps, use_fast_variance=False)
    y_ref, dx_ref, grads = flax_reference(layer, x, {"scale": gamma, "bias": beta}, dy)
    y, mean, invstd = bnsym.instance_norm.forward(x, gamma, beta, eps=eps, axis=-1)
    dx, dgamma, dbeta = bnsym.instance_norm.backward(dy, x, gamma, mean, invstd, axis=-1)
    _close(y, y_ref, "instance norm y")
    _close(dx, dx_ref, "instance norm dx", scale=_terms(gamma, invstd, dy))
    _close(dgamma, grads["scale"], "instance norm dgamma")
    _close(dbeta, grads["bias"], "instance norm dbeta")
