"""Gemma's RMS norm (bnsym/layers/gemma_rms_norm.py), a layer that is one declaration file: its public module, its
derivatives against torch autograd through the definition, its backends against each other, its float16 against
Hugging Face's order of operations, and the invariances its declaration proves.

The definition (Hugging Face ``GemmaRMSNorm``): y = (1 + gamma) * x * invrms, invrms = 1 / sqrt(mean(x^2) + eps),
the mean over the normalised (trailing) axes, eps 1e-6 by default, gamma = 0 meaning no scale.
"""

import importlib
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest

import bnsym
from bnsym.spec import BUILT_IN, spec
from tests.compare import assert_relatively_close

torch = pytest.importorskip("torch")

NAME = "gemma_rms_norm"
#: (x's shape, the normalised axes): the last axis, as Hugging Face normalises, and two trailing axes.
CASES = (((4, 3, 16), -1), ((2, 3, 4, 5), (-2, -1)))


def _definition(x, gamma, eps, axis):
    """y from the definition, with torch ops (autograd differentiates it)."""
    dims = (axis,) if isinstance(axis, int) else axis
    invrms = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)
    return (1.0 + gamma) * x * invrms


def _inputs(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 if isinstance(axis, int) else len(axis)
    parameter_shape = shape[-k:]
    x = rng.normal(size=shape) * 2.0 + 0.5
    gamma = rng.normal(size=parameter_shape) * 0.5  # Gemma's weights start at 0 and stay near it
    return rng, x, gamma, parameter_shape


# ----- the public module -----

def test_it_is_a_built_in_layer_served_as_a_module_of_bnsym():
    assert NAME in BUILT_IN
    assert not (Path(bnsym.__file__).parent / f"{NAME}.py").exists(), "the layer needs no hand-written module"
    module = importlib.import_module(f"bnsym.{NAME}")
    assert module is bnsym.gemma_rms_norm and module.__name__ == f"bnsym.{NAME}"
    assert module.__all__ == ["backward", "double_backward", "forward", "jvp"]
    for verb in module.__all__:
        assert getattr(module, verb).__doc__, f"bnsym.{NAME}.{verb} has no docstring"


@pytest.mark.parametrize("verb", ["forward", "backward", "double_backward", "jvp"])
def test_its_functions_take_rms_norms_arguments_with_gemmas_eps(verb):
    """Same parameters, same order, same defaults as bnsym.rms_norm, whose layer it varies (eps 1e-6 in both)."""
    served = inspect.signature(getattr(bnsym.gemma_rms_norm, verb))
    written = inspect.signature(getattr(bnsym.rms_norm, verb))
    assert [(p.name, p.kind, p.default) for p in served.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in written.parameters.values()], f"{verb}{served} vs {verb}{written}"
    if "eps" in served.parameters:
        assert served.parameters["eps"].default == spec(NAME).eps == 1e-6


def test_arguments_are_checked_and_named():
    x = np.ones((2, 4))
    with pytest.raises(ValueError, match="gamma"):
        bnsym.gemma_rms_norm.forward(x, np.ones(3))
    with pytest.raises(TypeError, match="gemma_rms_norm.forward.*gamma"):
        bnsym.gemma_rms_norm.forward(x)
    with pytest.raises(TypeError, match="unexpected keyword argument 'beta'"):
        bnsym.gemma_rms_norm.forward(x, None, beta=None)


def test_no_gamma_means_gamma_zero_and_no_gradient_for_it():
    """gamma=None is Gemma's initial weight, zeros: a scale of 1 (the spec's neutral value), not gamma = 1."""
    rng, x, _, parameter_shape = _inputs((5, 8), -1)
    dy = rng.normal(size=x.shape)
    y, invrms = bnsym.gemma_rms_norm.forward(x, None, backend="numpy")
    y0, invrms0 = bnsym.gemma_rms_norm.forward(x, np.zeros(parameter_shape), backend="numpy")
    np.testing.assert_array_equal(y, y0, err_msg="gamma=None is not gamma = 0")
    np.testing.assert_allclose(y, x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6), rtol=1e-13)
    dx, dgamma = bnsym.gemma_rms_norm.backward(dy, x, None, invrms, backend="numpy")
    dx0, _ = bnsym.gemma_rms_norm.backward(dy, x, np.zeros(parameter_shape), invrms0, backend="numpy")
    assert dgamma is None
    np.testing.assert_array_equal(dx, dx0)


# ----- derivatives against torch autograd through the definition, float64 -----

@pytest.mark.parametrize(("shape", "axis"), CASES, ids=str)
def test_forward_backward_double_backward_and_jvp_match_autograd_of_the_definition(shape, axis):
    rng, x, gamma, parameter_shape = _inputs(shape, axis)
    eps = 1e-3
    dy, ggx, tx = (rng.normal(size=shape) for _ in range(3))
    gggamma, tgamma = rng.normal(size=parameter_shape), rng.normal(size=parameter_shape)
    module = bnsym.gemma_rms_norm

    y, invrms = module.forward(x, gamma, eps=eps, axis=axis, backend="numpy")
    xt, gt, dyt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, dy))
    yt = _definition(xt, gt, eps, axis)
    assert_relatively_close(y, yt.detach().numpy(), "y")

    dx, dgamma = module.backward(dy, x, gamma, invrms, axis=axis, backend="numpy")
    dxt, dgt = torch.autograd.grad(yt, (xt, gt), dyt, create_graph=True)
    assert_relatively_close(dx, dxt.detach().numpy(), "dx")
    assert_relatively_close(dgamma, dgt.detach().numpy(), "dgamma")

    gx, ggamma, gdy = module.double_backward(ggx, gggamma, dy, x, gamma, invrms, axis=axis, backend="numpy")
    total = (dxt * torch.tensor(ggx)).sum() + (dgt * torch.tensor(gggamma)).sum()
    gxt, ggt, gdyt = torch.autograd.grad(total, (xt, gt, dyt))
    for got, expected, what in ((gx, gxt, "gx"), (ggamma, ggt, "ggamma"), (gdy, gdyt, "gdy")):
        assert_relatively_close(got, expected.numpy(), what)

    y_jvp, ty = module.jvp(x, gamma, tx, tgamma, eps=eps, axis=axis, backend="numpy")
    with warnings.catch_warnings():  # torch's forward mode warns about its own use of torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        _, tyt = torch.func.jvp(lambda a, b: _definition(a, b, eps, axis), (torch.tensor(x), torch.tensor(gamma)),
                                (torch.tensor(tx), torch.tensor(tgamma)))
    assert_relatively_close(y_jvp, y, "jvp y")
    assert_relatively_close(ty, tyt.numpy(), "ty")


def test_the_definition_target_of_its_declaration_agrees_with_the_kernels():
    """bnsym.testing.definition_target evaluates the declared Program with torch: the kernels derived from the same
    declaration agree with its autograd gradients."""
    from bnsym.testing.definition_target import DefinitionTarget

    rng, x, gamma, _ = _inputs((3, 2, 7), -1, seed=4)
    dy = rng.normal(size=x.shape)
    target = DefinitionTarget(NAME)
    assert_relatively_close(target.forward(x, gamma, 1e-2), bnsym.gemma_rms_norm.forward(x, gamma, eps=1e-2)[0], "y")
    _, invrms = bnsym.gemma_rms_norm.forward(x, gamma, eps=1e-2, backend="numpy")
    for got, expected, what in zip(target.backward(dy, x, gamma, 1e-2),
                                   bnsym.gemma_rms_norm.backward(dy, x, gamma, invrms, backend="numpy"),
                                   ("dx", "dgamma")):
        assert_relatively_close(got, expected, what)


# ----- the backends -----

def _all_verbs(module, x, gamma, rng, backend, convert=lambda a: a):
    shape, parameter_shape = x.shape, gamma.shape
    dy, ggx, tx = (rng.normal(size=shape).astype(x.dtype) for _ in range(3))
    gggamma, tgamma = (rng.normal(size=parameter_shape).astype(x.dtype) for _ in range(2))
    c = convert
    y, invrms = module.forward(c(x), c(gamma), eps=1e-4, backend=backend)
    results = {"y": y, "invrms": invrms}
    results.update(zip(("dx", "dgamma"), module.backward(c(dy), c(x), c(gamma), invrms, backend=backend)))
    results.update(zip(("gx", "ggamma", "gdy"), module.double_backward(c(ggx), c(gggamma), c(dy), c(x), c(gamma),
                                                                     invrms, backend=backend)))
    results["ty"] = module.jvp(c(x), c(gamma), c(tx), c(tgamma), eps=1e-4, backend=backend)[1]
    return {name: np.asarray(value) if not hasattr(value, "numpy") else value.numpy() for name, value in
            results.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["numba", "array_api"])
def test_every_backend_agrees_with_the_numpy_kernels(backend, dtype):
    if backend == "numba":
        pytest.importorskip("numba")
        convert = lambda a: a  # noqa: E731
    else:
        pytest.importorskip("array_api_compat")
        convert = torch.from_numpy
    rng = np.random.default_rng(6)
    x, gamma = rng.normal(size=(6, 33)).astype(dtype), (0.3 * rng.normal(size=33)).astype(dtype)
    expected = _all_verbs(bnsym.gemma_rms_norm, x, gamma, np.random.default_rng(7), "numpy")
    got = _all_verbs(bnsym.gemma_rms_norm, x, gamma, np.random.default_rng(7), backend, convert)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for name in expected:
        assert got[name].dtype == expected[name].dtype, f"{backend} {name}: dtype {got[name].dtype}"
        assert_relatively_close(got[name], expected[name], f"{backend} {name} ({np.dtype(dtype).name})", rtol)


# ----- float16: Gemma's order of operations -----

def test_float16_is_computed_in_float32_and_rounded_once_as_hugging_face_does():
    """Hugging Face upcasts x to float32, multiplies by 1 + weight in float32 and casts y back once; bnsym computes
    float16 in float32 too, so y differs from it by at most one float16 rounding step (the sums' order)."""
    rng = np.random.default_rng(8)
    x = (rng.normal(size=(64, 96)) * 3.0).astype(np.float16)
    gamma = (rng.normal(size=96) * 0.5).astype(np.float16)
    y, invrms = bnsym.gemma_rms_norm.forward(x, gamma, backend="numpy")
    assert y.dtype == np.float16 and invrms.dtype == np.float32
    xt = torch.from_numpy(x)
    expected = (_definition(xt.float(), torch.from_numpy(gamma).float(), 1e-6, -1)).to(torch.float16).numpy()
    steps = np.abs(y.astype(np.float32) - expected.astype(np.float32)) / np.spacing(np.abs(expected))
    assert np.max(steps) <= 1, f"y is {np.max(steps)} float16 steps from Hugging Face's order of operations"
    llama_order = (_definition(xt.float(), torch.zeros(96), 1e-6, -1).to(torch.float16)
                   * (1.0 + torch.from_numpy(gamma))).numpy()
    assert np.any(llama_order != expected), "the check above cannot tell Gemma's rounding from Llama's"


# ----- what its declaration proves -----

def test_its_declaration_proves_scale_invariance_and_not_shift_invariance():
    from bnsym.symbolic import invariances as inv

    assert inv.invariances(NAME) == {"scale", "dx_orthogonal_to_x"}
    assert inv.verdict(NAME, "shift").refuted_at, "no counterexample to shift invariance"
    assert inv.jacobian_symmetric(NAME, constant_parameters=True)
