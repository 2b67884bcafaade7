"""Inference, running statistics, double backward and forward mode against PyTorch, float64, to 1e-10 relative."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tests.backends import VIAS

RTOL = 1e-10
MODULES = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}


def _close(actual, expected, what):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    error = float(np.max(np.abs(actual - expected))) / scale
    assert error <= RTOL, f"{what}: max error {error:.2e} relative to max|torch| = {scale:.2e} exceeds {RTOL:.0e}"


@st.composite
def cases(draw):
    """An NCHW-style problem (channel axis 1) with 2 to 5 dimensions and at least 3 values per channel."""
    ndim = draw(st.integers(2, 5))
    shape = [draw(st.integers(3, 5))] + [draw(st.integers(1, 4)) for _ in range(ndim - 1)]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.normal(0, 2), rng.uniform(0.5, 2), size=shape)
    channels = shape[1]
    return dict(x=x, gamma=rng.normal(size=channels), beta=rng.normal(size=channels),
                running_mean=rng.normal(size=channels), running_var=rng.uniform(0.2, 3, size=channels),
                dy=rng.normal(size=shape), eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])), rng=rng)


def _module(case, momentum=0.1, training=True):
    x = case["x"]
    module = MODULES[x.ndim](x.shape[1], eps=case["eps"], momentum=momentum).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor(case["gamma"]))
        module.bias.copy_(torch.tensor(case["beta"]))
        module.running_mean.copy_(torch.tensor(case["running_mean"]))
        module.running_var.copy_(torch.tensor(case["running_var"]))
    return module.train(training)


@pytest.mark.parametrize("via", VIAS, ids=str)
@given(cases())
def test_inference_and_its_backward_match_an_eval_mode_module(via, case):
    module = _module(case, training=False)
    xt = torch.tensor(case["x"], requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(case["dy"]))
    args = (case["gamma"], case["running_mean"], case["running_var"])
    y = via.batch_norm_inference(case["x"], case["gamma"], case["beta"], *args[1:], eps=case["eps"])
    dx, dgamma, dbeta = via.batch_norm_inference_backward(case["dy"], case["x"], *args, eps=case["eps"])
    _close(y, yt, "eval y")
    _close(dx, xt.grad, "eval dx")
    _close(dgamma, module.weight.grad, "eval dgamma")
    _close(dbeta, module.bias.grad, "eval dbeta")


@pytest.mark.parametrize("via", VIAS, ids=str)
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
@given(case=cases())
def test_torch_convention_matches_the_module_buffers(via, case, momentum):
    module = _module(case, momentum=momentum)
    module(torch.tensor(case["x"]))
    _, mean, invstd = via.batch_norm_forward(case["x"], case["gamma"], case["beta"], eps=case["eps"])
    var = invstd**-2.0 - case["eps"]
    count = case["x"].size // case["x"].shape[1]
    new_mean, new_var = via.update_running_stats(case["running_mean"], case["running_var"], mean, var, count,
                                                   momentum=momentum, convention="torch")
    _close(new_mean, module.running_mean, f"torch running_mean, momentum {momentum}")
    _close(new_var, module.running_var, f"torch running_var, momentum {momentum}")


@pytest.mark.parametrize("via", VIAS, ids=str)
def test_cumulative_average_matches_momentum_none_over_several_batches(via):
    rng = np.random.default_rng(3)
    module = torch.nn.BatchNorm2d(3, momentum=None).double().train()
    running_mean, running_var = np.zeros(3), np.ones(3)
    for batch in range(1, 5):
        x = rng.normal(batch, 1 + batch, size=(4, 3, 2, 3))
        module(torch.tensor(x))
        _, mean, invstd = via.batch_norm_forward(x, np.ones(3), np.zeros(3))
        running_mean, running_var = via.update_running_stats(
            running_mean, running_var, mean, invstd**-2.0 - 1e-5, 24, momentum=None, convention="cumulative",
            num_batches_tracked=batch)
        _close(running_mean, module.running_mean, f"cumulative mean after {batch} batches")
        _close(running_var, module.running_var, f"cumulative var after {batch} batches")


@pytest.mark.parametrize("via", VIAS, ids=str)
def test_flax_and_keras_conventions_match_flax_linen_batch_norm(via):
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(4)
    x = rng.normal(2, 3, size=(6, 5, 3))  # NWC: flax normalises the last axis
    layer = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=jax.numpy.float64,
                         param_dtype=jax.numpy.float64)
    variables = layer.init(jax.random.PRNGKey(0), x)
    running = {"mean": rng.normal(size=3), "var": rng.uniform(0.5, 2, size=3)}
    variables = {"params": variables["params"], "batch_stats": running}
    _, updated = layer.apply(variables, x, mutable=["batch_stats"])
    _, mean, invstd = via.batch_norm_forward(x, np.ones(3), np.zeros(3), axis=-1)
    for convention in ("flax", "keras"):
        new_mean, new_var = via.update_running_stats(running["mean"], running["var"], mean, invstd**-2.0 - 1e-5,
                                                       30, momentum=0.9, convention=convention)
        _close(new_mean, np.asarray(updated["batch_stats"]["mean"]), f"{convention} running mean")
        _close(new_var, np.asarray(updated["batch_stats"]["var"]), f"{convention} running var")


@pytest.mark.parametrize("via", VIAS, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@given(case=cases())
def test_double_backward_matches_autograd_with_create_graph(via, case, training):
    rng = case["rng"]
    x, gamma, eps = case["x"], case["gamma"], case["eps"]
    channels = x.shape[1]
    ggx, gggamma, ggbeta = rng.normal(size=x.shape), rng.normal(size=channels), rng.normal(size=channels)
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(case["beta"], requires_grad=True)
    dyt = torch.tensor(case["dy"], requires_grad=True)
    rm, rv = (None, None) if training else (torch.tensor(case["running_mean"]), torch.tensor(case["running_var"]))
    yt = F.batch_norm(xt, rm, rv, gt, bt, training=training, eps=eps)
    dx, dgamma, dbeta = torch.autograd.grad(yt, (xt, gt, bt), dyt, create_graph=True)
    loss = ((dx * torch.tensor(ggx)).sum() + (dgamma * torch.tensor(gggamma)).sum()
            + (dbeta * torch.tensor(ggbeta)).sum())
    gx_ref, ggamma_ref, gdy_ref = torch.autograd.grad(loss, (xt, gt, dyt), allow_unused=True)
    if training:
        _, mean, invstd = via.batch_norm_forward(x, gamma, case["beta"], eps=eps)
    else:
        mean, invstd = case["running_mean"], 1 / np.sqrt(case["running_var"] + eps)
    gx, ggamma, gdy = via.batch_norm_double_backward(ggx, gggamma, ggbeta, case["dy"], x, gamma, mean, invstd,
                                                       training=training)
    mode = "train" if training else "eval"
    _close(gx, gx_ref, f"{mode} gx")
    _close(ggamma, ggamma_ref, f"{mode} ggamma")
    _close(gdy, gdy_ref, f"{mode} gdy")


@pytest.mark.parametrize("via", VIAS, ids=str)
@given(cases())
def test_jvp_matches_torch_func_jvp(via, case):
    rng = case["rng"]
    x, gamma, beta, eps = case["x"], case["gamma"], case["beta"], case["eps"]
    tx, tgamma, tbeta = rng.normal(size=x.shape), rng.normal(size=gamma.shape), rng.normal(size=beta.shape)
    primals = tuple(torch.tensor(a) for a in (x, gamma, beta))
    tangents = tuple(torch.tensor(a) for a in (tx, tgamma, tbeta))
    y_ref, ty_ref = torch.func.jvp(lambda a, g, b: F.batch_norm(a, None, None, g, b, training=True, eps=eps),
                                   primals, tangents)
    y, ty = via.batch_norm_jvp(x, gamma, beta, tx, tgamma, tbeta, eps=eps)
    _close(y, y_ref, "jvp y")
    _close(ty, ty_ref, "jvp ty")


@pytest.mark.parametrize("via", VIAS, ids=str)
def test_update_running_stats_leaves_its_inputs_untouched(via):
    arrays = [np.array([0.5, -1.0]), np.array([1.0, 2.0]), np.array([0.1, 0.2]), np.array([3.0, 4.0])]
    copies = [a.copy() for a in arrays]
    via.update_running_stats(*arrays, 8, convention="torch")
    for original, copy in zip(arrays, copies):
        np.testing.assert_array_equal(original, copy)
