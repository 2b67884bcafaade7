"""Contracts of the layer modules that need no framework: dtypes and shapes, float16 accuracy, inputs left alone,
the public argument lists against the generated kernels' SIGNATURES, and the docstring examples."""

import doctest
import importlib
import inspect

import numpy as np
import pytest

import bnsym

LAYERS = ["layer_norm", "rms_norm", "group_norm", "instance_norm"]
# x's shape, the options, the parameter shape and the statistics shape of each layer in these tests
SETUPS = {
    "layer_norm": ((4, 3, 5), {}, (5,), (4, 3)),
    "rms_norm": ((4, 3, 5), {"axis": (-2, -1)}, (3, 5), (4,)),
    "group_norm": ((2, 6, 3, 2), {"num_groups": 3}, (6,), (2, 3)),
    "instance_norm": ((2, 3, 4, 2), {"axis": -1}, (2,), (2, 2)),
}


def _calls(layer, dtype, seed=0):
    """The four verbs of ``layer`` on random float arrays of ``dtype``: ``(name, function, args, kwargs)``."""
    shape, options, parameter_shape, statistics_shape = SETUPS[layer]
    rng = np.random.default_rng(seed)
    x, dy, ggx = (rng.normal(2, 1.5, size=shape).astype(dtype) for _ in range(3))
    gamma, beta, gg1, gg2 = (rng.normal(size=parameter_shape).astype(dtype) for _ in range(4))
    module = getattr(bnsym, layer)
    if layer == "rms_norm":
        _, invrms = module.forward(x, gamma, **options)
        return [("forward", module.forward, (x, gamma), options),
                ("backward", module.backward, (dy, x, gamma, invrms), options),
                ("double_backward", module.double_backward, (ggx, gg1, dy, x, gamma, invrms), options),
                ("jvp", module.jvp, (x, gamma, ggx, gg1), options)]
    _, mean, invstd = module.forward(x, gamma, beta, **options)
    return [("forward", module.forward, (x, gamma, beta), options),
            ("backward", module.backward, (dy, x, gamma, mean, invstd), options),
            ("double_backward", module.double_backward, (ggx, gg1, gg2, dy, x, gamma, mean, invstd), options),
            ("jvp", module.jvp, (x, gamma, beta, ggx, gg1, gg2), options)]


# The shape of each result, by its name in the kernels' signatures: "x", "parameter" or "statistics".
RESULT_SHAPES = {"y": "x", "dx": "x", "gx": "x", "gdy": "x", "ty": "x", "mean": "statistics", "invstd": "statistics",
                 "invrms": "statistics", "dgamma": "parameter", "dbeta": "parameter", "ggamma": "parameter"}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layer", LAYERS)
def test_dtypes_and_shapes_of_every_result(layer, dtype):
    """Results keep x's dtype, except the saved statistics, which stay in the dtype of the arithmetic (float32 for
    float16 input); each has the shape of x, of a parameter or of the statistics."""
    shape, _, parameter_shape, statistics_shape = SETUPS[layer]
    generated = importlib.import_module(f"bnsym._generated.{layer}")
    shapes = {"x": shape, "parameter": parameter_shape, "statistics": statistics_shape}
    saved = np.float32 if dtype == np.float16 else dtype
    for verb, function, args, kwargs in _calls(layer, dtype):
        _, names = generated.SIGNATURES[f"{layer}_{verb}"]
        results = function(*args, **kwargs)
        assert len(results) == len(names), f"{layer}.{verb} returned {len(results)} results, not {names}"
        for name, value in zip(names, results):
            kind = RESULT_SHAPES[name]
            expected = saved if kind == "statistics" else dtype
            assert value.dtype == expected, f"{layer}.{verb}: {name} is {value.dtype}, expected {np.dtype(expected)}"
            assert value.shape == shapes[kind], f"{layer}.{verb}: {name} has shape {value.shape}, not {shapes[kind]}"
            assert np.all(np.isfinite(value)), f"{layer}.{verb}: {name} is not finite"


@pytest.mark.parametrize("layer", LAYERS)
def test_no_input_is_modified(layer):
    for verb, function, args, kwargs in _calls(layer, np.float64, seed=1):
        copies = [a.copy() for a in args]
        function(*args, **kwargs)
        for position, (before, after) in enumerate(zip(copies, args)):
            np.testing.assert_array_equal(after, before, err_msg=f"{layer}.{verb} changed its argument {position}")


@pytest.mark.parametrize("layer", ["layer_norm", "group_norm", "instance_norm"])
def test_float16_forward_then_backward_keeps_its_accuracy(layer):
    """The float32 statistics of a float16 forward, fed to the backward, keep the per-group sums of dx at zero
    (as the float64 layer has them): rounded to float16, a mean near 300 would lose its fraction."""
    shape, options, parameter_shape, _ = SETUPS[layer]
    rng = np.random.default_rng(5)
    x = (300 + rng.normal(size=shape)).astype(np.float16)
    dy = rng.normal(size=shape).astype(np.float16)
    gamma, beta = np.ones(parameter_shape, np.float16), np.zeros(parameter_shape, np.float16)
    module = getattr(bnsym, layer)
    _, mean, invstd = module.forward(x, gamma, beta, **options)
    dx, _, _ = module.backward(dy, x, gamma, mean, invstd, **options)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    _, mean64, invstd64 = module.forward(x64, gamma.astype(np.float64), beta.astype(np.float64), **options)
    dx64, _, _ = module.backward(dy64, x64, gamma.astype(np.float64), mean64, invstd64, **options)
    error = np.max(np.abs(dx.astype(np.float64) - dx64)) / np.max(np.abs(dx64))
    assert error < 5e-3, f"float16 dx is off by {error:.1e} of max|dx| against float64"
    np.testing.assert_allclose(mean, mean64, rtol=1e-6, err_msg="the float16 mean was not computed in float32")


@pytest.mark.parametrize("layer", LAYERS)
def test_public_arguments_are_the_kernels_in_the_same_order(layer):
    """Each public verb takes the arrays its generated kernel takes, in the kernel's order, then the layer's options
    (eps, axis, num_groups, backend): the kernels' SIGNATURES are the one list of arguments."""
    generated = importlib.import_module(f"bnsym._generated.{layer}")
    module = getattr(bnsym, layer)
    for verb in module.__all__:
        inputs, _ = generated.SIGNATURES[f"{layer}_{verb}"]
        public = [p for p in inspect.signature(getattr(module, verb)).parameters
                  if p not in ("axis", "num_groups", "backend")]
        assert public == [name for name in inputs if name != "reducer"], (
            f"bnsym.{layer}.{verb}{inspect.signature(getattr(module, verb))} against the kernel's {inputs}")


@pytest.mark.parametrize("layer", LAYERS)
def test_docstring_examples(layer):
    module = getattr(bnsym, layer)
    failures, tried = doctest.testmod(module, verbose=False)
    assert tried > 0, f"bnsym.{layer} has no docstring example"
    assert failures == 0, f"{failures} docstring example(s) of bnsym.{layer} failed (see the output above)"


@pytest.mark.parametrize("layer", LAYERS)
def test_an_empty_batch_gives_empty_results_and_zero_parameter_gradients(layer):
    """N = 0 (as PyTorch allows): no groups, so empty outputs and statistics, and parameter gradients that sum
    over nothing."""
    shape, options, parameter_shape, statistics_shape = SETUPS[layer]
    x = np.ones((0,) + shape[1:])
    gamma = np.ones(parameter_shape)
    module = getattr(bnsym, layer)
    if layer == "rms_norm":
        y, invrms = module.forward(x, gamma, **options)
        dx, dgamma = module.backward(x, x, gamma, invrms, **options)
        statistics, gradients = [invrms], [dgamma]
    else:
        y, mean, invstd = module.forward(x, gamma, np.zeros(parameter_shape), **options)
        dx, dgamma, dbeta = module.backward(x, x, gamma, mean, invstd, **options)
        statistics, gradients = [mean, invstd], [dgamma, dbeta]
    assert y.shape == dx.shape == x.shape
    for value in statistics:
        assert value.shape == (0,) + statistics_shape[1:], f"{layer}: statistics of shape {value.shape}"
    for value in gradients:
        np.testing.assert_array_equal(value, np.zeros(parameter_shape), err_msg=f"{layer}: parameter gradient")
