"""bnsym.torch.SyncBatchNorm as a drop-in for torch.nn.SyncBatchNorm, in one process (no process group: a local
batch norm, as PyTorch's is): constructor, parameters and buffers, state_dict, convert_sync_batchnorm, eval mode,
running statistics, dtypes and input errors. The multi-process behaviour is in test_sync_batch_norm.py."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bnsym.torch  # noqa: E402
from bnsym.torch import SyncBatchNorm  # noqa: E402


def _pair(channels=3, dtype=torch.float64, **kwargs):
    """bnsym's layer and torch.nn.BatchNorm2d with the same random parameters and buffers."""
    ours = SyncBatchNorm(channels, dtype=dtype, **kwargs)
    theirs = torch.nn.BatchNorm2d(channels, dtype=dtype, **kwargs)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if theirs.affine:
            theirs.weight.copy_(torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
        if theirs.bias is not None:
            theirs.bias.copy_(torch.randn(channels, generator=generator, dtype=dtype))
        if theirs.track_running_stats:
            theirs.running_mean.copy_(torch.randn(channels, generator=generator, dtype=dtype))
            theirs.running_var.copy_(torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _run(layer, x, dy):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(dy)
    grads = [p.grad.clone() for p in (layer.weight, layer.bias) if p is not None]
    return [y.detach(), x.grad] + grads


def _assert_same(ours, theirs, rtol):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
                                     {"bias": False}], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_torch_batch_norm(options, training):
    ours, theirs = _pair(**options)
    ours.train(training)
    theirs.train(training)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # several steps: the running statistics accumulate
        x = torch.randn(4, 3, 5, 2, generator=generator, dtype=torch.float64) * 2 + 3
        dy = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        _assert_same(_run(ours, x, dy), _run(theirs, x, dy), 1e-12)
        for layer in (ours, theirs):
            layer.zero_grad(set_to_none=True)
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name].numpy(), value.numpy(), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float16, 2e-2)], ids=str)
def test_narrow_dtypes_keep_their_dtype(dtype, rtol):
    """float32 runs in float32, float16 in float32 (as PyTorch's kernels do); outputs come back in the input's
    dtype. Parameters stay float32, as in a mixed-precision model."""
    ours, theirs = _pair(dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 3, 4, 4, generator=generator) + 1).to(dtype)
    dy = torch.randn(x.shape, generator=generator).to(dtype)
    y, dx, *_ = _run(ours, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    expected = _run(theirs, x.float(), dy.float())
    _assert_same([y.float(), dx.float()], expected[:2], rtol)


def test_drop_in_for_torch_sync_batch_norm():
    ours = SyncBatchNorm(5, eps=1e-3, momentum=0.2, affine=True, track_running_stats=True, process_group=None)
    theirs = torch.nn.SyncBatchNorm(5, eps=1e-3, momentum=0.2)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert repr(ours) == repr(theirs)
    ours.load_state_dict(theirs.state_dict())
    assert ours.process_group is None
    assert not isinstance(ours, torch.nn.SyncBatchNorm), \
        "DistributedDataParallel refuses torch.nn.SyncBatchNorm on CPU: bnsym's must not be one"


def test_convert_sync_batchnorm_replaces_every_batch_norm_and_shares_parameters():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4, momentum=None)),
                              torch.nn.SyncBatchNorm(4, affine=False))
    weight = net[1].weight
    net[1].running_mean.fill_(3.0)
    net.eval()
    converted = SyncBatchNorm.convert_sync_batchnorm(net, process_group="group")
    layers = [m for m in converted.modules() if isinstance(m, SyncBatchNorm)]
    assert len(layers) == 3
    assert not any(type(m) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm)
                   for m in converted.modules())
    assert converted[1].weight is weight and float(converted[1].running_mean[0]) == 3.0
    assert converted[2][1].momentum is None and not converted[3].affine
    assert all(m.process_group == "group" and not m.training for m in layers)
    single = SyncBatchNorm.convert_sync_batchnorm(torch.nn.BatchNorm1d(2))
    assert type(single) is SyncBatchNorm


def test_subclass_converts_to_itself():
    class Mine(SyncBatchNorm):
        pass

    assert type(Mine.convert_sync_batchnorm(torch.nn.BatchNorm2d(2))) is Mine


def test_an_empty_batch_gives_an_empty_output_and_leaves_the_statistics():
    layer = SyncBatchNorm(2, dtype=torch.float64)
    x = torch.zeros(0, 2, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    assert torch.equal(layer.running_mean, torch.zeros(2)) and torch.equal(layer.weight.grad, torch.zeros(2))


@pytest.mark.parametrize("shape, error, message", [
    ((3,), ValueError, "expected at least 2D input"),
    ((4, 2, 3), ValueError, "expected input with 3 channels"),
    ((1, 3), ValueError, "Expected more than 1 value per channel when training"),
], ids=["1-d", "channels", "one value"])
def test_bad_input(shape, error, message):
    with pytest.raises(error, match=message):
        SyncBatchNorm(3)(torch.randn(*shape))


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        SyncBatchNorm(3)(torch.ones(2, 3, dtype=torch.int64))


def test_package_exports():
    assert bnsym.torch.__all__ == ["SyncBatchNorm"]


def test_import_bnsym_torch_needs_neither_sympy_nor_hypothesis():
    import subprocess
    import sys

    code = "import sys, bnsym.torch; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                check=True).stdout.split())
    assert "torch" in loaded and not {"sympy", "hypothesis"} & loaded
