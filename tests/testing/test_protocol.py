"""Protocol mistakes get one line that says what the protocol expects and what came back (exit status 2 from
`bnsym check`); arrays of other libraries are accepted and converted."""

import numpy as np
import pytest

from bnsym.testing import check_batchnorm
from bnsym.testing.adapters import Implementation, TargetError, probe_protocol
from bnsym.tools.cli import main
from tests.testing.zoo import TwoPass

_correct = TwoPass()


class _CacheTuple:
    """cs231n's batchnorm_forward returns (out, cache)."""

    def forward(self, x, gamma, beta, eps):
        return _correct.forward(x, gamma, beta, eps), {"x": x}


class _TwoGradients(TwoPass):
    def backward(self, dy, x, gamma, beta, eps):
        return super().backward(dy, x, gamma, beta, eps)[:2]


class _RequiresGrad:
    def forward(self, x, gamma, beta, eps):
        import torch

        return torch.tensor(_correct.forward(x, gamma, beta, eps), requires_grad=True) * 1


class _ChannelsLast:
    """Written for (N, H, W, C): gamma broadcasts against the last axis."""

    def forward(self, x, gamma, beta, eps):
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        return gamma * (x - mean) / np.sqrt(var + eps) + beta


class _KeepdimsGradients(TwoPass):
    def backward(self, dy, x, gamma, beta, eps):
        dx, dgamma, dbeta = super().backward(dy, x, gamma, beta, eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return dx, dgamma.reshape(shape), dbeta.reshape(shape)


class _TransposedOutput:
    def forward(self, x, gamma, beta, eps):
        return np.ascontiguousarray(np.moveaxis(_correct.forward(x, gamma, beta, eps), 1, -1))


@pytest.mark.parametrize("impl, message", [
    (_CacheTuple(), "forward returned a tuple of 2 values where the protocol expects y alone, an array shaped like x "
                    "(a cs231n-style (out, cache)? return out alone)"),
    (_TwoGradients(), "backward returned 2 values where the protocol expects 3 arrays (dx, dgamma, dbeta)"),
    (_RequiresGrad(), "y from forward is a torch.Tensor that requires grad; the protocol expects plain arrays: return "
                      "it detached (tensor.detach())"),
    (_ChannelsLast(), "the protocol puts the channels on axis 1 (x of shape (N, C, ...)); wrap a channels-last "
                      "implementation in a transpose"),
    (_KeepdimsGradients(), "dgamma from backward has shape (1, 3), expected (3,) (gamma's shape, one value per "
                           "channel of x): another layout?"),
    (_TransposedOutput(), "y from forward has shape (2, 4, 5, 3), expected (2, 3, 4, 5) (the shape of x): another "
                          "layout?"),
], ids=["forward-tuple", "two-gradients", "requires-grad", "channels-last", "keepdims-gradients", "transposed-y"])
def test_each_protocol_mistake_gets_one_line(impl, message):
    with pytest.raises(TargetError) as info:
        probe_protocol(Implementation.wrap(impl))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_protocol_mistake_is_a_usage_error_of_bnsym_check(capsys):
    assert main(["check", "tests/testing/test_protocol.py:_CacheTuple"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(out, cache)" in err


def test_inside_a_run_a_protocol_mistake_is_one_cause_for_every_property():
    """Without the probe (check_batchnorm in a test), the failures share the mistake as their one cause."""
    from bnsym.testing import CheckFailed

    with pytest.raises(CheckFailed) as info:
        check_batchnorm(_CacheTuple(), max_examples=3)
    text = str(info.value.report)
    assert "properties, one cause (forward returned a tuple of 2 values" in text, text


class _TorchArrays(TwoPass):
    def forward(self, x, gamma, beta, eps):
        import torch

        return torch.from_numpy(super().forward(x, gamma, beta, eps))

    def backward(self, dy, x, gamma, beta, eps):
        import torch

        return [torch.from_numpy(g) for g in super().backward(dy, x, gamma, beta, eps)]


class _JaxArrays(TwoPass):
    def forward(self, x, gamma, beta, eps):
        import jax.numpy as jnp

        return jnp.asarray(super().forward(x, gamma, beta, eps))

    def backward(self, dy, x, gamma, beta, eps):
        import jax.numpy as jnp

        return tuple(jnp.asarray(g) for g in super().backward(dy, x, gamma, beta, eps))


@pytest.mark.parametrize("impl", [_TorchArrays, _JaxArrays], ids=["torch", "jax"])
def test_arrays_of_other_libraries_are_accepted(impl):
    if impl is _JaxArrays:
        pytest.importorskip("jax")
        import jax

        jax.config.update("jax_enable_x64", True)
    check_batchnorm(impl(), dtype="float32", max_examples=5,
                    properties=["shapes_and_dtypes", "gradient_shapes_and_dtypes", "forward_reference",
                                "backward_reference"])
