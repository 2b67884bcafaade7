"""Each difference between PyTorch's, Flax's and bnsym's normalisation layers that docs/conventions.md states,
checked against the frameworks themselves (in the order of the document)."""

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnsym
from bnsym.conventions import CONVENTIONS

from .test_family_vs_flax import _value_and_vjp

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")

DOC = Path(__file__).resolve().parent.parent / "docs" / "conventions.md"


@pytest.fixture(autouse=True)
def float64_jax():
    jax.config.update("jax_enable_x64", True)


def _relative(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))


def _flax(layer, x, params=None):
    """Flax's y, and the layer's parameters (its own, or ``params``)."""
    variables = layer.init(jax.random.PRNGKey(0), x)
    if params is not None:
        variables = {"params": {k: jax.numpy.asarray(v) for k, v in params.items()}}
    return np.asarray(jax.jit(layer.apply)(variables, x)), variables.get("params", {})


def _flax_gradients(layer, x, params, dy):
    """Flax's y and the vjp of dy with respect to (x, params): ``(y, dx, dparams)``."""
    return _value_and_vjp(layer, x, {k: jax.numpy.asarray(v) for k, v in params.items()}, dy)


def _float64(cls, **options):
    return cls(dtype=jax.numpy.float64, param_dtype=jax.numpy.float64, **options)


# -- Batch norm: running statistics and defaults ------------------------------------------------------------------


def _section(heading):
    return DOC.read_text().split(heading, 1)[1].split("\n## ", 1)[0]


def _table_rows(section, width):
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == width and not set(cells[0]) <= {"-"}:
            rows.append(cells)
    return rows[1:]  # without the header


def test_running_statistics_table_is_bnsyms_conventions():
    rows = _table_rows(_section("## Batch norm: running statistics and defaults"), 5)
    assert {row[0] for row in rows} == set(CONVENTIONS), f"the document's conventions are {[r[0] for r in rows]}"
    weights = {("new", False): "momentum", ("old", False): "1 - momentum", (None, False): "1/n after n batches",
               ("old", True): "(1 - momentum) / (1 - momentum^n)"}
    for name, _, momentum, weight, variance in rows:
        convention = CONVENTIONS[name]
        assert momentum == str(convention.default_momentum), f"{name}: default momentum {momentum}"
        assert weight == weights[convention.momentum_weighs, convention.debiased], f"{name}: the weight is {weight}"
        assert variance == ("unbiased" if convention.unbiased else "biased"), f"{name}: {variance} variance"


def test_batch_norm_defaults_of_the_frameworks():
    module = torch.nn.BatchNorm2d(3)
    assert module.momentum == CONVENTIONS["torch"].default_momentum and module.eps == 1e-5
    assert _flax_default(nn.BatchNorm, "momentum") == CONVENTIONS["flax"].default_momentum
    assert _flax_default(nn.BatchNorm) == 1e-5
    assert _default(bnsym.batch_norm_forward) == 1e-5
    assert _default(bnsym.batch_norm_forward, "axis") == 1 and _flax_default(nn.BatchNorm, "axis") == -1


def test_batch_norm_with_one_value_per_channel():
    x = np.random.default_rng(11).normal(size=(1, 3))
    message = "Expected more than 1 value per channel when training"
    with pytest.raises(ValueError, match=message):
        F.batch_norm(torch.tensor(x), None, None, training=True)
    with pytest.raises(ValueError, match=message):
        bnsym.batch_norm_forward(x, np.ones(3), np.zeros(3))
    bias = np.array([0.5, -1.0, 2.0])
    layer = _float64(nn.BatchNorm, use_running_average=False)
    variables = layer.init(jax.random.PRNGKey(0), x)
    variables = {"params": {"scale": np.ones(3), "bias": bias}, "batch_stats": variables["batch_stats"]}
    y, _ = layer.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(y), bias[None], err_msg="Flax's BatchNorm no longer returns the bias")


# -- Default eps ------------------------------------------------------------------------------------------------


def _documented_defaults():
    """The rows of the table under "## Default eps": {layer: (bnsym, PyTorch, Flax)}."""
    rows = _table_rows(_section("## Default eps"), 4)
    return {row[0]: tuple(None if c == "None" else float(c) for c in row[1:]) for row in rows}


def _default(function, name="eps"):
    return inspect.signature(function).parameters[name].default


def _flax_default(cls, name="epsilon"):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def test_default_eps_table():
    actual = {
        "batch norm": (_default(bnsym.batch_norm_forward), (_default(F.batch_norm), torch.nn.BatchNorm2d(3).eps),
                       _flax_default(nn.BatchNorm)),
        "layer norm": (_default(bnsym.layer_norm.forward), (_default(F.layer_norm), torch.nn.LayerNorm(3).eps),
                       _flax_default(nn.LayerNorm)),
        "RMS norm": (_default(bnsym.rms_norm.forward), (_default(F.rms_norm), torch.nn.RMSNorm(3).eps),
                     _flax_default(nn.RMSNorm)),
        "group norm": (_default(bnsym.group_norm.forward), (_default(F.group_norm), torch.nn.GroupNorm(1, 3).eps),
                       _flax_default(nn.GroupNorm)),
        "instance norm": (_default(bnsym.instance_norm.forward),
                          (_default(F.instance_norm), torch.nn.InstanceNorm2d(3).eps), _flax_default(nn.InstanceNorm)),
    }
    documented = _documented_defaults()
    assert set(documented) == set(actual), f"docs/conventions.md's table has rows {sorted(documented)}"
    for layer, (ours, (function, module), flax) in actual.items():
        assert function == module, f"PyTorch's {layer} function and module disagree: {function} and {module}"
        assert documented[layer] == (ours, function, flax), (
            f"{layer}: the document says (bnsym, PyTorch, Flax) = {documented[layer]}, they are "
            f"{(ours, function, flax)}")


# -- RMS norm: PyTorch's eps=None ---------------------------------------------------------------------------------


def _small_rows(dtype, scale):
    return (scale * np.random.default_rng(0).normal(size=(4, 64))).astype(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_rms_norm_eps_none_is_the_machine_epsilon_of_the_compute_dtype(dtype):
    x = torch.tensor(_small_rows(np.float64, 3e-4)).to(dtype)  # mean(x^2) ~ 1e-7: eps shows
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    default = F.rms_norm(x, (64,))
    assert torch.equal(default, F.rms_norm(x, (64,), eps=torch.finfo(compute).eps)), (
        f"{dtype}: PyTorch's eps=None is not finfo({compute}).eps")
    if dtype != compute:
        documented = F.rms_norm(x, (64,), eps=torch.finfo(dtype).eps)
        assert _relative(documented.double(), default.double()) > 0.1, (
            f"{dtype}: finfo(x.dtype).eps, as PyTorch documents, gives the same result: update docs/conventions.md")


@pytest.mark.parametrize("dtype, rtol", [(np.float16, 2e-3), (np.float32, 1e-6), (np.float64, 1e-10)])
def test_bnsym_reproduces_torch_rms_norm_eps_none(dtype, rtol):
    x = _small_rows(dtype, 3e-4)
    eps = np.finfo(np.float64 if dtype == np.float64 else np.float32).eps
    y, _ = bnsym.rms_norm.forward(x, None, eps=eps)
    error = _relative(y, F.rms_norm(torch.tensor(x), (64,)).numpy())
    assert error <= rtol, f"{np.dtype(dtype).name}: bnsym with eps={eps:.3g} is off PyTorch's eps=None by {error:.1e}"


def test_rms_norm_eps_default_matters_for_small_rows():
    """For rows whose root mean square is 1e-3, bnsym's (and Flax's) default eps of 1e-6 shrinks y by about 1.4
    against PyTorch's default."""
    x = np.random.default_rng(1).normal(size=(4, 4096))
    x *= 1e-3 / np.sqrt(np.mean(x**2, axis=-1, keepdims=True))
    y, _ = bnsym.rms_norm.forward(x, None)
    ratio = F.rms_norm(torch.tensor(x), (4096,)).numpy() / y
    assert np.allclose(ratio, np.sqrt(2), rtol=1e-6), f"PyTorch's y / bnsym's y is {ratio.min()} .. {ratio.max()}"
    flax_y, _ = _flax(_float64(nn.RMSNorm, use_scale=False), x)
    assert _relative(y, flax_y) <= 1e-10, "bnsym's default eps is not Flax's"


# -- Flax's use_fast_variance -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, offset, low, high, centred", [
    (np.float64, 1e3, 1e-10, 1e-9, 1e-12),
    (np.float64, 1e5, 2e-7, 2e-5, 1e-10),
    (np.float32, 1e2, 1e-4, 1e-2, 1e-5),
])
def test_flax_fast_variance_loses_digits_at_a_large_offset(dtype, offset, low, high, centred):
    """Relative to bnsym's float64 layer norm of the same values: Flax's default is off by an amount within
    [low, high] (docs/conventions.md gives the order), with use_fast_variance=False by at most ``centred``."""
    x = (offset + np.random.default_rng(2).normal(size=(8, 256))).astype(dtype)
    reference, _, _ = bnsym.layer_norm.forward(x.astype(np.float64), None, None, eps=1e-5)
    errors = {}
    for fast in (True, False):
        layer = nn.LayerNorm(epsilon=1e-5, use_fast_variance=fast, use_scale=False, use_bias=False, dtype=dtype,
                             param_dtype=dtype)
        errors[fast] = _relative(_flax(layer, x)[0], reference)
    assert low <= errors[True] <= high, f"use_fast_variance=True is off by {errors[True]:.1e}, not in [{low}, {high}]"
    assert errors[False] <= centred, f"use_fast_variance=False is off by {errors[False]:.1e} > {centred}"


def test_flax_fast_variance_is_the_default():
    for cls in (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm, nn.BatchNorm):
        assert _flax_default(cls, "use_fast_variance") is True, f"Flax's {cls.__name__} changed its default"


def test_flax_group_norm_fast_variance_too():
    x = 1e5 + np.random.default_rng(3).normal(size=(2, 5, 6))
    y, _, _ = bnsym.group_norm.forward(x, None, None, 3, eps=1e-6, axis=-1)
    fast, _ = _flax(_float64(nn.GroupNorm, num_groups=3, use_scale=False, use_bias=False), x)
    two_pass, _ = _flax(_float64(nn.GroupNorm, num_groups=3, use_scale=False, use_bias=False,
                                    use_fast_variance=False), x)
    assert _relative(fast, y) > 1e-8, "Flax's default GroupNorm no longer computes E[x^2] - E[x]^2"
    assert _relative(two_pass, y) <= 1e-10


# -- Where eps goes -----------------------------------------------------------------------------------------------


def test_eps_goes_under_the_square_root_in_every_framework():
    """With the variance 400 times smaller than eps, where 1/sqrt(var + eps) and 1/(std + eps) are far apart, every
    framework agrees with bnsym to 1e-10 for every layer."""
    rng = np.random.default_rng(4)
    x, eps = 3 + 0.05 * rng.normal(size=(2, 6, 5)), 1.0
    xt, xl = torch.tensor(x), np.moveaxis(x, 1, -1)  # channels first for PyTorch, last for Flax
    cases = {
        "layer norm": (bnsym.layer_norm.forward(x, None, None, eps=eps)[0], F.layer_norm(xt, (5,), eps=eps),
                       _flax(_float64(nn.LayerNorm, epsilon=eps, use_fast_variance=False), x)[0]),
        "RMS norm": (bnsym.rms_norm.forward(x, None, eps=eps)[0], F.rms_norm(xt, (5,), eps=eps),
                     _flax(_float64(nn.RMSNorm, epsilon=eps), x)[0]),
        "group norm": (bnsym.group_norm.forward(x, None, None, 3, eps=eps)[0], F.group_norm(xt, 3, eps=eps),
                       np.moveaxis(_flax(_float64(nn.GroupNorm, num_groups=3, epsilon=eps, use_fast_variance=False),
                                         xl)[0], -1, 1)),
        "instance norm": (bnsym.instance_norm.forward(x, None, None, eps=eps)[0], F.instance_norm(xt, eps=eps),
                          np.moveaxis(_flax(_float64(nn.InstanceNorm, epsilon=eps, use_fast_variance=False), xl)[0],
                                      -1, 1)),
    }
    for layer, (ours, torch_y, flax_y) in cases.items():
        assert _relative(ours, torch_y.numpy()) <= 1e-10, f"{layer}: PyTorch puts eps elsewhere"
        assert _relative(ours, flax_y) <= 1e-10, f"{layer}: Flax puts eps elsewhere"


def test_group_norm_groups_are_contiguous_channels_in_both_frameworks():
    """Group norm with G groups is layer norm of each sample's blocks of C/G consecutive channels."""
    x = np.random.default_rng(5).normal(size=(2, 6, 4)) * np.arange(1, 7)[:, None]  # channels differ in scale
    blocks = torch.tensor(x.reshape(2, 3, 8))
    expected = F.layer_norm(blocks, (8,)).reshape(2, 6, 4).numpy()
    assert _relative(F.group_norm(torch.tensor(x), 3).numpy(), expected) <= 1e-12, "PyTorch's groups are not blocks"
    xl = np.moveaxis(x, 1, -1)  # (N, L, C) for Flax
    grouped = xl.reshape(2, 4, 3, 2).transpose(0, 2, 1, 3).reshape(2, 3, 8)
    normalised, _ = _flax(_float64(nn.LayerNorm, use_scale=False, use_bias=False, epsilon=1e-6,
                                      use_fast_variance=False), grouped)
    expected = normalised.reshape(2, 3, 4, 2).transpose(0, 2, 1, 3).reshape(2, 4, 6)
    flax_y, _ = _flax(_float64(nn.GroupNorm, num_groups=3, use_scale=False, use_bias=False,
                                  use_fast_variance=False), xl)
    assert _relative(flax_y, expected) <= 1e-12, "Flax's groups are not blocks of consecutive channels"


# -- Layouts and parameter shapes ---------------------------------------------------------------------------------


def test_group_and_instance_norm_layouts():
    """PyTorch takes channels first and Flax channels last; bnsym takes either, with the same numbers. Flax's
    GroupNorm defaults to 32 groups."""
    x = np.random.default_rng(6).normal(size=(2, 4, 3, 5))  # NCHW
    xl = np.moveaxis(x, 1, -1)
    first, _, _ = bnsym.group_norm.forward(x, None, None, 2, eps=1e-6, axis=1)
    last, _, _ = bnsym.group_norm.forward(xl, None, None, 2, eps=1e-6, axis=-1)
    assert _relative(first, F.group_norm(torch.tensor(x), 2, eps=1e-6).numpy()) <= 1e-10
    flax_y, _ = _flax(_float64(nn.GroupNorm, num_groups=2, use_fast_variance=False), xl)
    assert _relative(last, flax_y) <= 1e-10
    assert _flax_default(nn.GroupNorm, "num_groups") == 32
    assert "num_groups" not in inspect.signature(F.group_norm).parameters or \
        _default(F.group_norm, "num_groups") is inspect.Parameter.empty
    assert _default(bnsym.group_norm.forward, "num_groups") is inspect.Parameter.empty


def test_flax_layer_norm_scale_lives_on_the_last_axis_by_default():
    """flax.linen.LayerNorm(reduction_axes=(-2, -1)) has a scale of shape (D,): bnsym with that scale broadcast
    to the normalised shape gives Flax's y, and bnsym's dgamma summed over its first axis is Flax's gradient."""
    rng = np.random.default_rng(7)
    x, dy = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    layer = _float64(nn.LayerNorm, reduction_axes=(-2, -1), epsilon=1e-5, use_fast_variance=False)
    _, params = _flax(layer, x)
    assert params["scale"].shape == (5,), f"Flax's scale has shape {params['scale'].shape}"
    scale, bias = rng.normal(size=5), rng.normal(size=5)
    y_ref, (dx_ref, grads) = _flax_gradients(layer, x, {"scale": scale, "bias": bias}, dy)
    gamma, beta = np.broadcast_to(scale, (4, 5)), np.broadcast_to(bias, (4, 5))
    y, mean, invstd = bnsym.layer_norm.forward(x, gamma, beta, eps=1e-5, axis=(-2, -1))
    dx, dgamma, dbeta = bnsym.layer_norm.backward(dy, x, gamma, mean, invstd, axis=(-2, -1))
    assert _relative(y, y_ref) <= 1e-10
    assert _relative(dx, dx_ref) <= 1e-10
    assert _relative(dgamma.sum(axis=0), grads["scale"]) <= 1e-10, "Flax's dscale is not dgamma summed over axis -2"
    assert _relative(dbeta.sum(axis=0), grads["bias"]) <= 1e-10


# -- No affine part -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"elementwise_affine": False}, {"bias": False}], ids=["no-affine", "no-bias"])
def test_torch_layer_norm_without_weight_or_bias(options):
    rng = np.random.default_rng(8)
    x, dy = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    module = torch.nn.LayerNorm(5, **options).double()
    assert module.bias is None, f"nn.LayerNorm({options}) has a bias"
    gamma = None
    if module.weight is not None:
        gamma = rng.normal(size=5)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(gamma))
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy))
    y, mean, invstd = bnsym.layer_norm.forward(x, gamma, None)
    dx, dgamma, dbeta = bnsym.layer_norm.backward(dy, x, gamma, mean, invstd)
    assert _relative(y, yt.detach().numpy()) <= 1e-10
    assert _relative(dx, xt.grad.numpy()) <= 1e-10
    if gamma is None:
        assert dgamma is None, "dgamma for a gamma that is None"
    else:
        assert _relative(dgamma, module.weight.grad.numpy()) <= 1e-10
    assert dbeta is not None and dbeta.shape == (5,), "backward always returns dbeta"


@pytest.mark.parametrize("use_scale, use_bias", [(False, False), (True, False), (False, True)])
def test_flax_layer_norm_use_scale_and_use_bias(use_scale, use_bias):
    rng = np.random.default_rng(9)
    x, dy = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    layer = _float64(nn.LayerNorm, use_scale=use_scale, use_bias=use_bias, use_fast_variance=False, epsilon=1e-5)
    params = {}
    if use_scale:
        params["scale"] = rng.normal(size=5)
    if use_bias:
        params["bias"] = rng.normal(size=5)
    y_ref, (dx_ref, grads) = _flax_gradients(layer, x, params, dy)
    gamma, beta = params.get("scale"), params.get("bias")
    y, mean, invstd = bnsym.layer_norm.forward(x, gamma, beta)
    dx, dgamma, _ = bnsym.layer_norm.backward(dy, x, gamma, mean, invstd)
    assert _relative(y, y_ref) <= 1e-10
    assert _relative(dx, dx_ref) <= 1e-10
    assert (dgamma is None) == (not use_scale)
    if use_scale:
        assert _relative(dgamma, grads["scale"]) <= 1e-10


def test_instance_norm_affine_defaults():
    module = torch.nn.InstanceNorm2d(3)
    assert module.weight is None and module.bias is None, "PyTorch's InstanceNorm2d has an affine part by default"
    _, params = _flax(_float64(nn.InstanceNorm), np.ones((2, 4, 3)))
    assert set(params) == {"scale", "bias"}, f"Flax's InstanceNorm has {set(params)} by default"


# -- Instance norm with one spatial position ----------------------------------------------------------------------


def test_instance_norm_with_one_spatial_position():
    x = np.random.default_rng(10).normal(size=(2, 3, 1))
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training") as torch_error:
        F.instance_norm(torch.tensor(x))
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training") as ours:
        bnsym.instance_norm.forward(x, None, None)
    assert str(ours.value).split(" (")[0] == str(torch_error.value).split(", got")[0], (
        f"bnsym says {ours.value}, PyTorch {torch_error.value}")
    bias = np.array([0.5, -1.0, 2.0])
    y, _ = _flax(_float64(nn.InstanceNorm), np.moveaxis(x, 1, -1), {"scale": np.ones(3), "bias": bias})
    np.testing.assert_array_equal(y, np.broadcast_to(bias, (2, 1, 3)), err_msg="Flax no longer returns the bias")
