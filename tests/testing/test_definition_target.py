"""The target written from the definition (bnsym.testing.definition_target): for every layer, its forward,
backward, double backward and JVP (torch evaluating the layer's forward Program, autograd for the rest) agree with
bnsym's own NumPy kernels in float64; float16 is computed in float32; a made-up layer gets a working target with no
code of its own; bad arguments are named."""

import importlib
import inspect

import numpy as np
import pytest
import sympy

from bnsym.spec import BUILT_IN, LayerSpec, TrailingAxes, register, spec, unregister
from bnsym.spec.layers import CENTRED_REGIMES
from bnsym.symbolic.layers import LayerDeclaration, LayerSymbols
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, M
from bnsym.testing.definition_target import DefinitionTarget, definition_implementation
from bnsym.testing.implementation import TargetError
from bnsym.testing.protocols import protocol

RTOL = 1e-10
SHAPES = ((4, 6, 3), (2, 6, 2, 3))
#: The layers of x in, y out (a layer with field inputs and outputs, fused add + RMS norm, is tested in
#: tests/test_fused_add_rms_norm.py).
PLAIN = tuple(n for n in BUILT_IN if spec(n).plain)


def _cases():
    """(layer, shape, options) for each layer and shape: the grouping's smallest and largest example size."""
    for name in PLAIN:
        grouping = spec(name).grouping
        for shape in SHAPES:
            sizes = grouping.example_sizes(shape)
            for size in sorted({sizes[0], sizes[-1]}):
                yield pytest.param(name, shape, grouping.example_options(shape, size),
                                   id=f"{name}-{'x'.join(map(str, shape))}-size{size}")


def _close(actual, expected, what):
    """Agreement to RTOL relative to the array's magnitude (elementwise relative error means nothing where a
    gradient happens to be near zero)."""
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    scale = max(np.max(np.abs(expected)), 1e-300)
    error = np.max(np.abs(actual - expected)) / scale
    assert error <= RTOL, f"{what}: relative difference {error:.2e} from bnsym's NumPy kernels (allowed {RTOL})"


class _Inputs:
    """Random inputs of one case (never dy = ones), and bnsym's NumPy results for them."""

    def __init__(self, name, shape, options, seed=0, eps=1e-3):
        layer = spec(name)
        self.layer, self.options, self.eps = layer, options, eps
        self.module = importlib.import_module(f"bnsym.{name}")
        parameter_shape = layer.layout(shape, **options).parameter_shape
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=shape) * 2.0 + 0.5
        self.parameters = [rng.normal(size=parameter_shape) for _ in layer.parameters]
        self.dy = rng.normal(size=shape)
        self.cotangents = [rng.normal(size=shape)] + [rng.normal(size=parameter_shape) for _ in layer.parameters]
        self.tangents = [rng.normal(size=shape)] + [rng.normal(size=parameter_shape) for _ in layer.parameters]
        # The constants a layer's training forward reads (batch renormalisation's running mean and stddev, spread
        # so that r and d are clipped in some channels and not in others) and its scalar options at their defaults.
        statistics = layer.layout(shape, **options).statistics_shape
        self.running = [rng.normal(size=statistics) if r == "running_mean" else 10.0 ** rng.uniform(-0.5, 1.2,
                                                                                                   statistics)
                        for r in (layer.running_names if layer.reads_running else ())]
        self.scalars = layer.scalar_defaults
        self.constants = [*self.running, *self.scalars.values()]  # as the target takes them, after the options

    def call(self, method, *args, **keywords):
        return getattr(self.module, method)(*args, **keywords, **self.options, **self.scalars, backend="numpy")

    def reference(self):
        y, *saved = self.call("forward", self.x, *self.parameters, *self.running, eps=self.eps)
        grads = self.call("backward", self.dy, self.x, self.parameters[0], *saved, *self.running)
        second = self.call("double_backward", *self.cotangents, self.dy, self.x, self.parameters[0], *saved,
                           *self.running)
        jvp = self.call("jvp", self.x, *self.parameters, *self.tangents, *self.running, eps=self.eps)
        return y, grads, second, jvp


@pytest.mark.parametrize(("name", "shape", "options"), list(_cases()))
def test_the_definition_target_agrees_with_bnsyms_kernels_in_float64(name, shape, options):
    target = DefinitionTarget(name)
    inputs = _Inputs(name, shape, options)
    positional = [options[o] for o in target.option_arguments] + inputs.constants
    y, grads, second, (y_jvp, ty) = inputs.reference()
    _close(target.forward(inputs.x, *inputs.parameters, inputs.eps, *positional), y, f"{name} y")
    backward = target.backward(inputs.dy, inputs.x, *inputs.parameters, inputs.eps, *positional)
    assert len(backward) == len(grads), f"{name}: backward returned {len(backward)} gradients"
    for got, expected, what in zip(backward, grads, ("dx", "dgamma", "dbeta")):
        _close(got, expected, f"{name} {what}")
    double = target.double_backward(*inputs.cotangents, inputs.dy, inputs.x, *inputs.parameters, inputs.eps,
                                    *positional)
    for got, expected, what in zip(double, second, ("gx", "ggamma", "gdy")):
        _close(got, expected, f"{name} {what}")
    got_y, got_ty = target.jvp(inputs.x, *inputs.parameters, *inputs.tangents, inputs.eps, *positional)
    _close(got_y, y_jvp, f"{name} jvp y")
    _close(got_ty, ty, f"{name} jvp ty")


@pytest.mark.parametrize("name", [n for n in BUILT_IN if spec(n).grouping.channel_axis])
def test_a_channel_last_layout_is_an_option_fixed_at_construction(name):
    shape = (3, 2, 4, 6)  # channels last
    grouping = spec(name).grouping
    sizes = grouping.example_sizes((3, 6, 2, 4))
    options = {**grouping.example_options((3, 6, 2, 4), sizes[len(sizes) // 2]), "axis": -1}
    target = DefinitionTarget(name, axis=-1)
    inputs = _Inputs(name, shape, options, seed=3)
    positional = [options[o] for o in target.option_arguments] + inputs.constants
    y, grads, second, _ = inputs.reference()
    _close(target.forward(inputs.x, *inputs.parameters, inputs.eps, *positional), y, f"{name} channel-last y")
    backward = target.backward(inputs.dy, inputs.x, *inputs.parameters, inputs.eps, *positional)
    for got, expected, what in zip(backward, grads, ("dx", "dgamma", "dbeta")):
        _close(got, expected, f"{name} channel-last {what}")


@pytest.mark.parametrize("name", PLAIN)
def test_the_target_follows_the_checkers_protocol_of_each_layer(name):
    target = DefinitionTarget(name)
    for method in target.signatures:
        if method in protocol(name).signatures:
            assert target.signatures[method] == protocol(name).signatures[method], f"{name} {method}"
    implementation = definition_implementation(name)
    assert implementation.layer == name
    assert {"forward", "backward", "double_backward"} <= implementation.capabilities
    if spec(name).running_statistics:  # every method of the protocol: eval mode and the training step too
        assert implementation.capabilities == set(protocol(name).signatures), name


RUNNING = [name for name in BUILT_IN if spec(name).running_statistics]


@pytest.mark.parametrize("convention", ["torch", "keras", "haiku"])
@pytest.mark.parametrize("name", RUNNING)
def test_eval_mode_and_the_training_step_agree_with_bnsyms_kernels_in_float64(name, convention):
    """eval_forward, eval_backward, eval_double_backward and train_forward of the target against bnsym's
    inference, inference_backward, double_backward(training=False) and update_running_stats."""
    shape = (5, 4, 3)
    layer = spec(name)
    options = layer.grouping.example_options(shape, layer.grouping.example_sizes(shape)[-1])
    target = DefinitionTarget(name, convention=convention)
    inputs = _Inputs(name, shape, options, seed=7)
    positional = [options[o] for o in target.option_arguments]
    statistics = layer.layout(shape, **options).statistics_shape
    rng = np.random.default_rng(8)
    running = [rng.normal(size=statistics) if r == "running_mean" else 10.0 ** rng.uniform(-0.5, 1, statistics)
               for r in layer.running_names]
    eval_constants = [*positional, *running] if layer.reads_running else [*positional, *inputs.constants, *running]
    kernels = {"backend": "numpy", **options}
    y = inputs.module.inference(inputs.x, *inputs.parameters, *running, eps=inputs.eps, **kernels)
    _close(target.eval_forward(inputs.x, *inputs.parameters, inputs.eps, *eval_constants), y, f"{name} eval y")
    grads = inputs.module.inference_backward(inputs.dy, inputs.x, inputs.parameters[0], *running, eps=inputs.eps,
                                             **kernels)
    for got, expected, what in zip(target.eval_backward(inputs.dy, inputs.x, *inputs.parameters, inputs.eps,
                                                        *eval_constants), grads, ("dx", "dgamma", "dbeta")):
        _close(got, expected, f"{name} eval {what}")
    scale = 1 / running[1] if layer.reads_running else 1 / np.sqrt(running[1] + inputs.eps)
    second = inputs.module.double_backward(*inputs.cotangents, inputs.dy, inputs.x, inputs.parameters[0],
                                           running[0], scale, *inputs.running, training=False, **kernels,
                                           **inputs.scalars)
    got = target.eval_double_backward(*inputs.cotangents, inputs.dy, inputs.x, *inputs.parameters, inputs.eps,
                                      *eval_constants)
    for g, expected, what in zip(got, second, ("gx", "ggamma", "gdy")):
        _close(g, expected, f"{name} eval {what}")
    # The training step: batch renormalisation updates the running statistics its training forward reads; batch
    # norm takes them after its training arguments.
    step = [*positional, *inputs.constants] if layer.reads_running else [*positional, *inputs.constants, *running]
    state = inputs.running if layer.reads_running else running
    y, *new = target.train_forward(inputs.x, *inputs.parameters, inputs.eps, *step, 0.3, 2)
    y_ref, mean, _ = inputs.module.forward(inputs.x, *inputs.parameters, *inputs.running, eps=inputs.eps, **kernels,
                                           **inputs.scalars)
    _close(y, y_ref, f"{name} train_forward y")
    layout = layer.layout(shape, **options)
    var = inputs.x.reshape(layout.grouped).var(axis=layout.axes).reshape(statistics)
    update = inputs.module.update_running_stats
    accepts = inspect.signature(update).parameters.values()
    takes_eps = any(p.name == "eps" or p.kind is p.VAR_KEYWORD for p in accepts)  # a running stddev's update
    expected = update(*state, mean, var, layout.count, momentum=0.3, convention=convention, num_batches_tracked=3,
                      **({"eps": inputs.eps} if takes_eps else {}))
    for got, want, what in zip(new, expected, layer.running_names, strict=True):
        _close(got, want, f"{name} {convention} new {what}")


def test_fixing_an_option_the_protocol_passes_is_refused_for_the_checker():
    with pytest.raises(TargetError, match=r"takes \(x, gamma, beta, eps\), but the group_norm protocol passes "
                                          r"\(x, gamma, beta, eps, num_groups\)"):
        definition_implementation("group_norm", num_groups=2)


# ----- dtypes -----

@pytest.mark.parametrize("name", PLAIN)
def test_float16_is_computed_in_float32_and_rounded_once(name):
    shape = (4, 6, 3)
    grouping = spec(name).grouping
    options = grouping.example_options(shape, grouping.example_sizes(shape)[-1])
    target = DefinitionTarget(name)
    inputs = _Inputs(name, shape, options, seed=5, eps=1e-2)
    positional = [options[o] for o in target.option_arguments] + inputs.constants
    half = [a.astype(np.float16) for a in (inputs.x, *inputs.parameters)]
    single = [a.astype(np.float32) for a in half]  # the same values, exactly
    y16 = target.forward(*half[:1], *half[1:], inputs.eps, *positional)
    y32 = target.forward(*single[:1], *single[1:], inputs.eps, *positional)
    assert y16.dtype == np.float16 and y32.dtype == np.float32
    np.testing.assert_array_equal(y16, y32.astype(np.float16), err_msg=f"{name}: float16 not computed in float32")
    dy16 = inputs.dy.astype(np.float16)
    g16 = target.backward(dy16, *half[:1], *half[1:], inputs.eps, *positional)
    g32 = target.backward(dy16.astype(np.float32), *single[:1], *single[1:], inputs.eps, *positional)
    for a, b in zip(g16, g32):
        assert a.dtype == np.float16
        np.testing.assert_array_equal(a, b.astype(np.float16), err_msg=f"{name}: float16 gradients")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_and_float64_keep_their_dtype_and_their_accuracy(dtype):
    shape = (4, 6, 3)
    inputs = _Inputs("layer_norm", shape, {"axis": -1}, seed=6)
    target = DefinitionTarget("layer_norm")
    args = [a.astype(dtype) for a in (inputs.x, *inputs.parameters)]
    y = target.forward(*args, inputs.eps)
    reference, *_ = inputs.call("forward", *[a.astype(np.float64) for a in args], eps=inputs.eps)
    assert y.dtype == dtype
    tolerance = 50 * np.finfo(dtype).eps
    error = np.max(np.abs(y - reference)) / np.max(np.abs(reference))
    assert error < tolerance, f"{np.dtype(dtype).name}: relative error {error:.1e}, allowed {tolerance:.1e}"


# ----- a layer bnsym does not ship -----

def _tanh_centred(s: LayerSymbols) -> Program:
    """y = gamma * tanh((x - mean) * invstd) + beta: no kernel of bnsym computes this."""
    return Program([s.x, s.gamma, s.beta, s.eps], [
        Definition(s.mean, BatchSum(s.x) / M),
        Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
        Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)),
        Definition(s.y, s.gamma * sympy.tanh((s.x - s.mean) * s.invstd) + s.beta),
    ], [s.y])


@pytest.fixture
def soft_layer_norm():
    layer = register(LayerSpec("test_soft_layer_norm", "Soft layer norm", "soft layer norm", "centred",
                               TrailingAxes(), eps=1e-5, regimes=CENTRED_REGIMES, group="one row",
                               statistics_over="the trailing axes", parameters_are="the normalised shape"))
    try:
        yield LayerDeclaration(layer, _tanh_centred)
    finally:
        unregister(layer.name)


def test_a_made_up_layer_gets_a_forward_from_its_definition_and_autograd_gradients(soft_layer_norm):
    target = DefinitionTarget(soft_layer_norm)
    rng = np.random.default_rng(9)
    x, gamma, beta = rng.normal(size=(5, 2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    eps = 1e-2
    rows = x.reshape(5, -1)
    mean, var = rows.mean(axis=1, keepdims=True), rows.var(axis=1, keepdims=True)
    expected = gamma * np.tanh(((rows - mean) / np.sqrt(var + eps)).reshape(x.shape)) + beta
    y = target.forward(x, gamma, beta, eps)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12, err_msg="made-up layer's forward")
    # Gradients against central differences of the forward along random directions, for a random dy.
    dy, tx, tgamma = rng.normal(size=x.shape), rng.normal(size=x.shape), rng.normal(size=gamma.shape)
    dx, dgamma, dbeta = target.backward(dy, x, gamma, beta, eps)
    h = 1e-6
    slope = np.sum(dy * (target.forward(x + h * tx, gamma + h * tgamma, beta, eps)
                         - target.forward(x - h * tx, gamma - h * tgamma, beta, eps))) / (2 * h)
    assert abs(slope - (np.sum(dx * tx) + np.sum(dgamma * tgamma))) < 1e-7 * (1 + abs(slope)), "made-up backward"
    np.testing.assert_allclose(dbeta, dy.sum(axis=0), rtol=1e-12, err_msg="dbeta sums dy over the rows")
    _, ty = target.jvp(x, gamma, beta, tx, tgamma, np.zeros_like(beta), eps)
    assert abs(np.sum(dy * ty) - slope) < 1e-7 * (1 + abs(slope)), "made-up jvp against the same differences"


def test_a_layer_registered_by_name_gets_a_target_with_no_code_of_its_own():
    """A user's spec of a centred layer over trailing axes, registered under a new name: its target is layer
    norm's mathematics, found from the name alone."""
    layer = register(LayerSpec("test_centred_rows", "Centred rows", "centred rows", "centred", TrailingAxes(),
                               eps=1e-5, regimes=CENTRED_REGIMES, group="one row",
                               statistics_over="the trailing axes", parameters_are="the normalised shape"))
    try:
        target = DefinitionTarget(layer.name)
        inputs = _Inputs("layer_norm", (3, 4, 5), {"axis": (1, 2)}, seed=11)
        y, grads, _, _ = inputs.reference()
        _close(target.forward(inputs.x, *inputs.parameters, inputs.eps), y, "registered layer y")
        for got, expected, what in zip(target.backward(inputs.dy, inputs.x, *inputs.parameters, inputs.eps), grads,
                                       ("dx", "dgamma", "dbeta")):
            _close(got, expected, f"registered layer {what}")
    finally:
        unregister(layer.name)


# ----- bad arguments -----

def test_bad_arguments_are_named():
    target = DefinitionTarget("group_norm")
    x, gamma, beta = np.ones((2, 6, 3)), np.ones(6), np.zeros(6)
    with pytest.raises(ValueError, match=r"gamma must have shape \(6,\)"):
        target.forward(x, np.ones(4), beta, 1e-5, 2)
    with pytest.raises(ValueError, match="num_groups"):
        target.forward(x, gamma, beta, 1e-5, 4)
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype"):
        target.forward(x.astype(np.int64), gamma, beta, 1e-5, 2)
    with pytest.raises(ValueError, match="eps must be finite and greater than 0"):
        target.forward(x, gamma, beta, -1.0, 2)
    with pytest.raises(ValueError, match=r"dy must have the same shape as x"):
        target.backward(np.ones((2, 6)), x, gamma, beta, 1e-5, 2)
    with pytest.raises(TypeError, match=r"forward takes \(x, gamma, beta, eps, num_groups\), got 4 arguments"):
        target.forward(x, gamma, beta, 1e-5)
    with pytest.raises(TypeError, match="has no option momentum"):
        DefinitionTarget("layer_norm", momentum=0.1)
    with pytest.raises(ValueError, match="trailing normalised axes"):
        DefinitionTarget("layer_norm").forward(np.ones(3), np.ones((1, 3)), np.ones((1, 3)), 1e-5)
