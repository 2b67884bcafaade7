"""The protocol wrapper and the built-in adapters (torch, and jax: CI installs it so that this runs)."""

import numpy as np
import pytest

from bnsym.testing import check_batchnorm
from bnsym.testing.adapters import Implementation, TargetError, load


def _forward(x, gamma, beta, eps):
    return x


class _Both:
    def forward(self, x, gamma, beta, eps):
        return x

    def backward(self, dy, x, gamma, beta, eps):
        return dy, gamma, beta


class _NeedsArguments:
    def __init__(self, size):
        self.size = size

    def forward(self, x, gamma, beta, eps):
        return x


def test_capabilities_follow_what_is_offered():
    assert Implementation.wrap(_forward).capabilities == {"forward"}
    assert Implementation.wrap(_Both()).capabilities == {"forward", "backward"}
    assert Implementation.wrap(_Both).capabilities == {"forward", "backward"}  # a class is instantiated


@pytest.mark.parametrize("impl, message", [
    (42, "neither a function"),
    (lambda x, gamma: x, "forward must accept"),
    (_NeedsArguments, "instantiates it with no arguments"),
], ids=["not-callable", "too-few-arguments", "class-needs-arguments"])
def test_protocol_violations_are_target_errors(impl, message):
    with pytest.raises(TargetError, match=message):
        Implementation.wrap(impl)


def test_backward_signature_is_checked():
    class BadBackward(_Both):
        def backward(self, dy):
            return dy

    with pytest.raises(TargetError, match="backward must accept"):
        Implementation.wrap(BadBackward())


@pytest.mark.parametrize("bad, error", [("float8", ValueError), ("int32", ValueError)])
def test_check_batchnorm_rejects_bad_dtype(bad, error):
    with pytest.raises(error, match="dtype"):
        check_batchnorm(_forward, dtype=bad)


@pytest.mark.parametrize("kwargs", [{"max_examples": 0}, {"seed": -1}, {"properties": ["nope"]},
                                    {"max_examples": True}], ids=lambda k: next(iter(k)))
def test_check_batchnorm_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        check_batchnorm(_forward, **kwargs)


def test_torch_adapter_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    load("torch").forward(np.ones((2, 1)), np.ones(1), np.zeros(1), 1e-5)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jax_adapter_passes_gradient_and_precision_properties(dtype):
    pytest.importorskip("flax")
    check_batchnorm(load("jax"), dtype=dtype, max_examples=10,
                    properties=["forward_reference", "backward_reference", "shift_invariance", "dx_sums_to_zero"])


def test_flax_default_fast_variance_is_caught_in_float32():
    """Flax's BatchNorm defaults to use_fast_variance=True, max(0, E[x^2] - E[x]^2) (flax #1491): the reason the
    jax adapter turns it off. The checker must see the difference."""
    pytest.importorskip("flax")
    import flax.linen as nn
    import jax.numpy as jnp

    from bnsym.testing import CheckFailed

    load("jax")  # switches on x64, as the adapter does

    def flax_default(x, gamma, beta, eps):
        layer = nn.BatchNorm(use_running_average=False, axis=1, epsilon=eps, dtype=x.dtype, param_dtype=x.dtype)
        channels = x.shape[1]
        variables = {"params": {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)},
                     "batch_stats": {"mean": jnp.zeros(channels, x.dtype), "var": jnp.ones(channels, x.dtype)}}
        return np.asarray(layer.apply(variables, jnp.asarray(x), mutable=["batch_stats"])[0])

    with pytest.raises(CheckFailed) as info:
        check_batchnorm(flax_default, dtype="float32", properties=["forward_reference", "shift_invariance"])
    assert set(info.value.report.failed) == {"forward_reference", "shift_invariance"}
