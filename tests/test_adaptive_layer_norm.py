"""Adaptive layer norm (bnsym/layers/adaptive_layer_norm.py, DiT's adaLN), a layer that is one declaration file: its
public module, its per-sample parameters, its derivatives against torch autograd through the definition, its
backends against each other, and the invariances its declaration proves.

The definition (DiT's ``modulate(norm(x), shift, scale)``): y = LN(x) * (1 + gamma) + beta, LN without affine
parameters over the trailing normalised axes (eps 1e-6 by default), x of shape (N, ..., D), gamma (DiT's scale) and
beta (DiT's shift) of shape (N, D), broadcast over the middle axes; gamma = beta = 0 means no modulation.
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

NAME = "adaptive_layer_norm"
#: (x's shape, the normalised axes): DiT's (N, T, D) over the last axis, (N, D) with nothing shared, and two
#: normalised axes after two middle ones.
CASES = (((4, 3, 16), -1), ((5, 8), -1), ((2, 3, 2, 4, 5), (-2, -1)))


def _middle(x_ndim, k):
    return tuple(range(1, x_ndim - k))


def _definition(x, gamma, beta, eps, axis):
    """y from the definition, with torch ops (autograd differentiates it): DiT's modulate after a plain LN."""
    dims = (axis,) if isinstance(axis, int) else axis
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
    normalised = (x - mean) / torch.sqrt(var + eps)
    view = (x.shape[0],) + (1,) * (x.ndim - 1 - len(dims)) + tuple(x.shape[-len(dims):])
    return normalised * (1 + gamma.reshape(view)) + beta.reshape(view)


def _inputs(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 if isinstance(axis, int) else len(axis)
    parameter_shape = (shape[0],) + shape[-k:]
    x = rng.normal(size=shape) * 2.0 + 0.5
    gamma = rng.normal(size=parameter_shape) * 0.5
    beta = rng.normal(size=parameter_shape)
    return rng, x, gamma, beta, parameter_shape


# ----- the public module -----

def test_it_is_a_built_in_layer_served_as_a_module_of_bnsym():
    assert NAME in BUILT_IN
    assert not (Path(bnsym.__file__).parent / f"{NAME}.py").exists(), "the layer needs no hand-written module"
    module = importlib.import_module(f"bnsym.{NAME}")
    assert module is bnsym.adaptive_layer_norm and module.__name__ == f"bnsym.{NAME}"
    assert module.__all__ == ["backward", "double_backward", "forward", "jvp"]


@pytest.mark.parametrize("verb", ["forward", "backward", "double_backward", "jvp"])
def test_its_functions_take_layer_norms_arguments_with_dits_eps(verb):
    """The arguments of bnsym.layer_norm, whose layer it modulates; eps defaults to DiT's 1e-6."""
    served = inspect.signature(getattr(bnsym.adaptive_layer_norm, verb))
    written = inspect.signature(getattr(bnsym.layer_norm, verb))
    assert [(p.name, p.kind) for p in served.parameters.values()] == \
        [(p.name, p.kind) for p in written.parameters.values()], f"{verb}{served} vs {verb}{written}"
    if "eps" in served.parameters:
        assert served.parameters["eps"].default == spec(NAME).eps == 1e-6


def test_the_parameters_are_one_row_per_sample_and_bad_shapes_are_refused():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"gamma must have shape \(2, 4\), one row per sample"):
        bnsym.adaptive_layer_norm.forward(x, np.ones(4), None)  # layer norm's (D,) weight is not a per-sample one
    with pytest.raises(ValueError, match=r"beta must have shape \(2, 4\)"):
        bnsym.adaptive_layer_norm.forward(x, None, np.ones((3, 4)))
    with pytest.raises(ValueError, match="batch axis 0"):
        bnsym.adaptive_layer_norm.forward(x, None, None, axis=(0, 1, 2))
    with pytest.raises(ValueError, match="x"):
        bnsym.adaptive_layer_norm.forward(np.ones(4), None, None)  # no batch axis


def test_no_scale_and_no_shift_mean_zero_and_no_gradient_for_them():
    """gamma=None and beta=None are DiT's adaLN-Zero start: no modulation, y the normalised input."""
    rng, x, _, _, parameter_shape = _inputs((3, 4, 8), -1)
    dy = rng.normal(size=x.shape)
    module = bnsym.adaptive_layer_norm
    y, mean, invstd = module.forward(x, None, None, backend="numpy")
    y0, mean0, invstd0 = module.forward(x, np.zeros(parameter_shape), np.zeros(parameter_shape), backend="numpy")
    np.testing.assert_array_equal(y, y0, err_msg="gamma=None, beta=None is not gamma = beta = 0")
    centred = x - x.mean(axis=-1, keepdims=True)
    expected = centred / np.sqrt(np.mean(centred**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    dx, dgamma, dbeta = module.backward(dy, x, None, mean, invstd, backend="numpy")
    dx0, _, _ = module.backward(dy, x, np.zeros(parameter_shape), mean0, invstd0, backend="numpy")
    assert dgamma is None, "gamma=None came back with a gradient"
    # backward does not take beta (as layer norm's does not): dbeta = per-sample sum of dy, whether beta exists or not
    np.testing.assert_allclose(dbeta, dy.sum(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(dx, dx0)


def test_the_parameter_gradients_are_per_sample_summed_over_the_tokens_only():
    """dbeta[n] = sum over sample n's tokens of dy, dgamma[n] = the same of dy * x_hat: not summed over the batch
    (as a layer norm's would be)."""
    rng, x, gamma, beta, _ = _inputs((3, 5, 8), -1, seed=2)
    dy = rng.normal(size=x.shape)
    y, mean, invstd = bnsym.adaptive_layer_norm.forward(x, gamma, beta, backend="numpy")
    _, dgamma, dbeta = bnsym.adaptive_layer_norm.backward(dy, x, gamma, mean, invstd, backend="numpy")
    x_hat = (x - mean[..., None]) * invstd[..., None]
    assert_relatively_close(dbeta, dy.sum(axis=1), "dbeta")
    assert_relatively_close(dgamma, (dy * x_hat).sum(axis=1), "dgamma")


# ----- derivatives against torch autograd through the definition, float64 -----

@pytest.mark.parametrize(("shape", "axis"), CASES, ids=str)
def test_forward_backward_double_backward_and_jvp_match_autograd_of_the_definition(shape, axis):
    rng, x, gamma, beta, parameter_shape = _inputs(shape, axis)
    eps = 1e-3
    dy, ggx, tx = (rng.normal(size=shape) for _ in range(3))
    gggamma, ggbeta, tgamma, tbeta = (rng.normal(size=parameter_shape) for _ in range(4))
    module = bnsym.adaptive_layer_norm

    y, mean, invstd = module.forward(x, gamma, beta, eps=eps, axis=axis, backend="numpy")
    xt, gt, bt, dyt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta, dy))
    yt = _definition(xt, gt, bt, eps, axis)
    assert_relatively_close(y, yt.detach().numpy(), "y")

    dx, dgamma, dbeta = module.backward(dy, x, gamma, mean, invstd, axis=axis, backend="numpy")
    dxt, dgt, dbt = torch.autograd.grad(yt, (xt, gt, bt), dyt, create_graph=True)
    for got, expected, what in ((dx, dxt, "dx"), (dgamma, dgt, "dgamma"), (dbeta, dbt, "dbeta")):
        assert_relatively_close(got, expected.detach().numpy(), what)

    gx, ggamma, gdy = module.double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd, axis=axis,
                                             backend="numpy")
    total = sum((d * torch.tensor(c)).sum() for d, c in ((dxt, ggx), (dgt, gggamma), (dbt, ggbeta)))
    gxt, ggt, gdyt = torch.autograd.grad(total, (xt, gt, dyt))
    for got, expected, what in ((gx, gxt, "gx"), (ggamma, ggt, "ggamma"), (gdy, gdyt, "gdy")):
        assert_relatively_close(got, expected.numpy(), what)

    y_jvp, ty = module.jvp(x, gamma, beta, tx, tgamma, tbeta, eps=eps, axis=axis, backend="numpy")
    with warnings.catch_warnings():  # torch's forward mode warns about its own use of torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        _, tyt = torch.func.jvp(lambda a, b, c: _definition(a, b, c, eps, axis),
                                tuple(torch.tensor(a) for a in (x, gamma, beta)),
                                tuple(torch.tensor(a) for a in (tx, tgamma, tbeta)))
    assert_relatively_close(y_jvp, y, "jvp y")
    assert_relatively_close(ty, tyt.numpy(), "ty")


@pytest.mark.parametrize(("shape", "axis"), CASES, ids=str)
def test_the_definition_target_of_its_declaration_agrees_with_the_kernels(shape, axis):
    """bnsym.testing.definition_target evaluates the declared Program with torch, reading the normalised axes from
    the per-sample gamma's shape: the kernels derived from the same declaration agree with it."""
    from bnsym.testing.definition_target import DefinitionTarget

    rng, x, gamma, beta, parameter_shape = _inputs(shape, axis, seed=4)
    dy, ggx = rng.normal(size=shape), rng.normal(size=shape)
    gggamma, ggbeta = rng.normal(size=parameter_shape), rng.normal(size=parameter_shape)
    module, target, eps = bnsym.adaptive_layer_norm, DefinitionTarget(NAME), 1e-2
    y, mean, invstd = module.forward(x, gamma, beta, eps=eps, axis=axis, backend="numpy")
    assert_relatively_close(target.forward(x, gamma, beta, eps), y, "y")
    for got, expected, what in zip(target.backward(dy, x, gamma, beta, eps),
                                   module.backward(dy, x, gamma, mean, invstd, axis=axis, backend="numpy"),
                                   ("dx", "dgamma", "dbeta")):
        assert_relatively_close(got, expected, what)
    for got, expected, what in zip(target.double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps),
                                   module.double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd,
                                                          axis=axis, backend="numpy"),
                                   ("gx", "ggamma", "gdy")):
        assert_relatively_close(got, expected, what)


# ----- the backends -----

def _all_verbs(module, x, gamma, beta, rng, backend, convert=lambda a: a):
    shape, parameter_shape = x.shape, gamma.shape
    dy, ggx, tx = (rng.normal(size=shape).astype(x.dtype) for _ in range(3))
    gggamma, ggbeta, tgamma, tbeta = (rng.normal(size=parameter_shape).astype(x.dtype) for _ in range(4))
    c = convert
    y, mean, invstd = module.forward(c(x), c(gamma), c(beta), eps=1e-4, backend=backend)
    results = {"y": y, "mean": mean, "invstd": invstd}
    results.update(zip(("dx", "dgamma", "dbeta"),
                       module.backward(c(dy), c(x), c(gamma), mean, invstd, backend=backend)))
    results.update(zip(("gx", "ggamma", "gdy"),
                       module.double_backward(c(ggx), c(gggamma), c(ggbeta), c(dy), c(x), c(gamma), mean, invstd,
                                              backend=backend)))
    results["ty"] = module.jvp(c(x), c(gamma), c(beta), c(tx), c(tgamma), c(tbeta), eps=1e-4, backend=backend)[1]
    return {name: np.asarray(value) if not hasattr(value, "numpy") else value.numpy() for name, value in
            results.items()}


def _backend_problem(shape, dtype):
    """x, gamma, beta for x of ``shape``."""
    rng = np.random.default_rng(6)
    parameter_shape = (shape[0], shape[-1])
    x = (rng.normal(size=shape) + 3.0).astype(dtype)
    gamma, beta = ((0.3 * rng.normal(size=parameter_shape)).astype(dtype) for _ in range(2))
    return x, gamma, beta


class _NoFallback:
    """Stands in for the NumPy kernels of the compiled module: a call means its loops did not run."""

    def __getattr__(self, name):
        def refuse(*args):
            raise AssertionError(f"{name} ran the NumPy kernel: the compiled loops did not cover this call")
        return refuse


# (N, D); (N, T, D); and more tokens per sample than one float32 partial of a parameter gradient takes (BLOCK = 64):
# the compiled loops then add the sample's partials in float64.
@pytest.mark.parametrize("shape", [(6, 33), (3, 4, 33), (2, 130, 33)], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ["numba", "array_api"])
def test_every_backend_agrees_with_the_numpy_kernels(monkeypatch, backend, dtype, shape):
    """The compiled loops (the generated module's NumPy fallback made to fail, so they must run) and the array-API
    kernels give the NumPy kernels' results."""
    if backend == "numba":
        pytest.importorskip("numba")
        convert = lambda a: a  # noqa: E731
        from bnsym._generated import adaptive_layer_norm_numba as compiled

        expected = _all_verbs(bnsym.adaptive_layer_norm, *_backend_problem(shape, dtype), np.random.default_rng(7),
                              "numpy")
        monkeypatch.setattr(compiled, "numpy_kernels", _NoFallback())
    else:
        pytest.importorskip("array_api_compat")
        convert = torch.from_numpy
        expected = _all_verbs(bnsym.adaptive_layer_norm, *_backend_problem(shape, dtype), np.random.default_rng(7),
                              "numpy")
    got = _all_verbs(bnsym.adaptive_layer_norm, *_backend_problem(shape, dtype), np.random.default_rng(7), backend,
                     convert)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for name in expected:
        assert got[name].dtype == expected[name].dtype, f"{backend} {name}: dtype {got[name].dtype}"
        assert_relatively_close(got[name], expected[name], f"{backend} {name} ({np.dtype(dtype).name})", rtol)


def test_the_compiled_backend_runs_loops_over_the_sample_rows_for_every_function():
    """No kernel of the generated module hands over to the NumPy kernel, and every public function runs compiled
    loops on (N, T, D) input (listed as `bnsym compile` lists them: recorded, not compiled). Their layout takes a
    parameter row per sample, R = T groups each (P = N), where layer norm's layout, whose block partials would grow
    with the square of N, still refuses it."""
    pytest.importorskip("numba")
    from bnsym._generated import adaptive_layer_norm as numpy_kernels
    from bnsym._generated import adaptive_layer_norm_numba as compiled
    from bnsym.runtime.fused import GroupLocalLayout, SampleLocalLayout
    from bnsym.runtime.reduce import Reducer
    from bnsym.tools import precompile

    verbs = ("forward", "backward", "double_backward", "jvp")
    for verb in verbs:
        name = f"{NAME}_{verb}"
        assert getattr(compiled, name) is not getattr(numpy_kernels, name), f"{name} runs the NumPy kernel"
    ran = {kernel.dispatcher.py_func.__name__ for kernel in precompile.kernels([NAME], ["float32"])}
    assert ran == {f"_{NAME}_{verb}" for verb in verbs}, f"the public functions run the loops {sorted(ran)}"

    for shape, rows in (((64, 32), 64), ((4, 16, 32), 4)):
        x = np.zeros(shape)
        layout = spec(NAME).layout(x.shape)
        reducer = Reducer(layout.axes, layout.count, layout.parameter_axes)
        gamma = np.zeros(layout.parameter_broadcast)
        assert GroupLocalLayout.of(reducer, [x], [], [gamma]) is None, f"{shape}: layer norm's layout took it"
        found = SampleLocalLayout.of(reducer, [x], [], [gamma])
        assert found is not None and (found.P, found.Q, found.groups) == (rows, 32, x.size // 32), \
            f"{shape}: {found}"
    empty = np.zeros((3, 0, 32))  # no iteration would zero a gradient's row: the NumPy kernel's
    layout = spec(NAME).layout(empty.shape)
    reducer = Reducer(layout.axes, layout.count, layout.parameter_axes)
    assert SampleLocalLayout.of(reducer, [empty], [], [np.zeros(layout.parameter_broadcast)]) is None
    x = np.zeros((64, 32))
    plain = spec("layer_norm").layout(x.shape)
    reducer = Reducer(plain.axes, plain.count, plain.parameter_axes)
    assert GroupLocalLayout.of(reducer, [x], [], [np.zeros(plain.parameter_broadcast)]) is not None


# ----- what its declaration proves -----

def test_its_declaration_proves_layer_norms_invariances_but_not_identity_recovery():
    """Modulation by (1 + gamma) and beta after the normalisation keeps y invariant to a shift and a scale of a row,
    and dx sums to zero and is orthogonal to x_hat; gamma = sqrt(var + eps), beta = mean gives 1 + gamma, not x."""
    from bnsym.symbolic import invariances as inv

    assert inv.invariances(NAME) == {"shift", "scale", "dx_sums_to_zero", "dx_orthogonal_to_x"}
    assert not inv.identity_recovery(NAME)
    assert inv.jacobian_symmetric(NAME, constant_parameters=True)
