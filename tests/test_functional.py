"""Contracts of the public functions that do not need a reference: the public surface, dtypes, shapes, layouts."""

import numpy as np
import pytest

import bnsym


def test_public_surface_is_pinned():
    assert bnsym.__all__ == ["batch_norm", "batch_norm_backward", "batch_norm_double_backward", "batch_norm_forward",
                             "batch_norm_inference", "batch_norm_inference_backward", "batch_norm_jvp", "group_norm",
                             "instance_norm", "layer_norm", "rms_norm", "update_running_stats"], (
        "the public surface changed: update this test and the README")
    assert bnsym.__all__ == sorted(bnsym.__all__), "__all__ must stay alphabetised"


@pytest.mark.parametrize("layer, verbs", [
    ("batch_norm", ["backward", "double_backward", "forward", "inference", "inference_backward", "jvp"]),
    ("layer_norm", ["backward", "double_backward", "forward", "jvp"]),
    ("rms_norm", ["backward", "double_backward", "forward", "jvp"]),
    ("group_norm", ["backward", "double_backward", "forward", "jvp"]),
    ("instance_norm", ["backward", "double_backward", "forward", "jvp"]),
])
def test_each_layer_module_offers_its_verbs(layer, verbs):
    module = getattr(bnsym, layer)
    assert module.__name__ == f"bnsym.{layer}", f"bnsym.{layer} is {module!r}, not the public module"
    assert module.__all__ == verbs, f"bnsym.{layer} offers {module.__all__}: update this test and the README"
    for verb in verbs:
        assert callable(getattr(module, verb)) and getattr(module, verb).__doc__, f"bnsym.{layer}.{verb}"


def test_batch_norm_module_is_the_top_level_functions():
    """bnsym.batch_norm's verbs are the top-level batch_norm_* functions themselves, not copies; so is its
    update_running_stats."""
    for verb in bnsym.batch_norm.__all__:
        assert getattr(bnsym.batch_norm, verb) is getattr(bnsym, f"batch_norm_{verb}"), verb
    assert bnsym.batch_norm.update_running_stats is bnsym.update_running_stats


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_are_preserved(dtype):
    """Outputs keep the input's dtype; the saved statistics are in the dtype of the arithmetic (float32 for
    float16)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 4)).astype(dtype)
    gamma, beta = rng.normal(size=3).astype(dtype), rng.normal(size=3).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    y, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnsym.batch_norm_backward(dy, x, gamma, mean, invstd)
    saved = np.float32 if dtype == np.float16 else dtype
    for name, value, shape, expected in [("y", y, x.shape, dtype), ("mean", mean, (3,), saved),
                                         ("invstd", invstd, (3,), saved), ("dx", dx, x.shape, dtype),
                                         ("dgamma", dgamma, (3,), dtype), ("dbeta", dbeta, (3,), dtype)]:
        assert value.dtype == expected, f"{name} came back as {value.dtype}, expected {np.dtype(expected)}"
        assert value.shape == shape, f"{name} has shape {value.shape}, expected {shape}"


def test_float16_forward_then_backward_keeps_its_accuracy():
    """The saved statistics of a float16 forward, fed to the backward, give float16-accurate gradients: rounded to
    float16, a mean near 300 loses its fraction, and dgamma and sum(dx) = 0 lose their accuracy."""
    rng = np.random.default_rng(5)
    x = (300 + rng.normal(size=(256, 2))).astype(np.float16)
    dy = rng.normal(size=x.shape).astype(np.float16)
    gamma, beta = np.ones(2, np.float16), np.zeros(2, np.float16)
    _, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnsym.batch_norm_backward(dy, x, gamma, mean, invstd)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    _, mean64, invstd64 = bnsym.batch_norm_forward(x64, np.ones(2), np.zeros(2))
    dx64, dgamma64, _ = bnsym.batch_norm_backward(dy64, x64, np.ones(2), mean64, invstd64)
    # dgamma = sum(dy * x_hat) with |x_hat| ~ 1: float16 rounding allows about 1e-3 of ||dy||.
    error = np.max(np.abs(dgamma.astype(np.float64) - dgamma64) / np.sqrt(np.sum(dy64**2, axis=0)))
    assert error < 2e-3, f"float16 dgamma is off by {error:.1e} of ||dy|| (float64 {dgamma64}, got {dgamma})"
    drift = np.max(np.abs(np.sum(dx.astype(np.float64), axis=0)))
    assert drift < 0.05, f"sum(dx) is {drift:.3g}, not 0: the backward used a rounded mean"


def test_float16_is_computed_in_float32():
    """abs(x) ~ 300 overflows a float16 sum of squares (65504); computed in float32 it is finite and accurate."""
    rng = np.random.default_rng(1)
    x64 = 300 + 30 * rng.normal(size=(64, 2))
    x16 = x64.astype(np.float16)
    y, _, _ = bnsym.batch_norm_forward(x16, np.ones(2, np.float16), np.zeros(2, np.float16))
    assert np.all(np.isfinite(y)), "float16 batch norm overflowed"
    reference, _, _ = bnsym.batch_norm_forward(x16.astype(np.float64), np.ones(2), np.zeros(2))
    assert np.max(np.abs(y.astype(np.float64) - reference)) < 4e-3


def test_nhwc_equals_transposed_nchw():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4, 5))
    gamma, beta, dy = rng.normal(size=3), rng.normal(size=3), rng.normal(size=x.shape)
    nchw = bnsym.batch_norm_forward(x, gamma, beta, axis=1)
    nhwc = bnsym.batch_norm_forward(np.moveaxis(x, 1, -1), gamma, beta, axis=-1)
    np.testing.assert_allclose(np.moveaxis(nhwc[0], -1, 1), nchw[0], rtol=1e-13, atol=1e-13)
    back = bnsym.batch_norm_backward(dy, x, gamma, *nchw[1:], axis=1)
    back_nhwc = bnsym.batch_norm_backward(np.moveaxis(dy, 1, -1), np.moveaxis(x, 1, -1), gamma, *nhwc[1:], axis=-1)
    np.testing.assert_allclose(np.moveaxis(back_nhwc[0], -1, 1), back[0], rtol=1e-12, atol=1e-13)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(3)
    x, gamma, beta, dy = rng.normal(size=(5, 2)), rng.normal(size=2), rng.normal(size=2), rng.normal(size=(5, 2))
    copies = [a.copy() for a in (x, gamma, beta, dy)]
    y, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta)
    bnsym.batch_norm_backward(dy, x, gamma, mean, invstd)
    for original, copy in zip((x, gamma, beta, dy), copies):
        np.testing.assert_array_equal(original, copy)


def test_constant_channel_gives_beta_without_nan():
    x = np.full((6, 2), 1234.5)
    y, _, invstd = bnsym.batch_norm_forward(x, np.array([2.0, -1.0]), np.array([0.5, 3.0]), eps=1e-5)
    np.testing.assert_array_equal(y, np.broadcast_to([0.5, 3.0], (6, 2)))
    assert np.all(np.isfinite(invstd))


@pytest.mark.parametrize("layer", ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm"])
def test_each_runtime_layer_agrees_with_its_derivation_on_running_statistics(layer):
    """The runtime's declaration (``_LAYER`` of the public module) keeps running statistics exactly when the symbolic
    declaration does, and then the generated module has the eval-mode and running-statistics kernels it calls."""
    from bnsym.runtime.backends import numpy_kernels
    from bnsym.symbolic.layers import LAYERS

    runtime = getattr(bnsym, layer)._LAYER
    assert runtime.name == layer
    keeps = LAYERS[layer].running_statistics
    assert runtime.running_statistics == keeps, (
        f"bnsym.{layer} declares running_statistics={runtime.running_statistics}, its derivation {keeps}")
    signatures = numpy_kernels(runtime.spec.kernels_module).SIGNATURES
    eval_kernels = {f"{layer}_inference", f"{layer}_inference_backward", f"{layer}_inference_double_backward"}
    assert eval_kernels <= set(signatures) if keeps else not eval_kernels & set(signatures)
    assert any(name.startswith("running_stats_") for name in signatures) == keeps


def test_a_layer_without_running_statistics_has_no_eval_mode():
    x = np.random.default_rng(3).normal(size=(4, 3, 5))
    with pytest.raises(ValueError, match="keeps no running statistics"):
        bnsym.layer_norm._LAYER.run("forward", dict(x=x, gamma=None, beta=None), eps=1e-5, axis=-1, training=False)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_batch_norm_on_empty_input(backend):
    """Eval mode takes an empty batch (nothing to normalise, parameter gradients zero); training refuses a batch of
    no values per channel and takes x with no channel (empty results)."""
    rm, rv, gamma = np.zeros(3), np.ones(3), np.ones(3)
    empty = np.ones((0, 3))
    assert bnsym.batch_norm_inference(empty, gamma, None, rm, rv, backend=backend).shape == (0, 3)
    dx, dgamma, dbeta = bnsym.batch_norm_inference_backward(empty, empty, gamma, rm, rv, backend=backend)
    assert dx.shape == (0, 3)
    np.testing.assert_array_equal(dgamma, np.zeros(3), err_msg="the sum over no values must be zero")
    np.testing.assert_array_equal(dbeta, np.zeros(3), err_msg="the sum over no values must be zero")
    with pytest.raises(ValueError, match=r"no values to normalise.*\(0, 3\)"):
        bnsym.batch_norm_forward(empty, None, None, backend=backend)
    y, mean, invstd = bnsym.batch_norm_forward(np.ones((4, 0)), None, None, backend=backend)
    assert y.shape == (4, 0) and mean.shape == invstd.shape == (0,)
