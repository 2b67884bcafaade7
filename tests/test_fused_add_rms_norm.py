"""Fused residual add + RMS norm (bnsym/layers/fused_add_rms_norm.py), a layer that is one declaration file: its
public module, its derivatives (dy and dh in; dx, dresidual, dgamma out) against torch autograd of the unfused
composition, its backends against each other, and `bnsym check torch --layer fused_add_rms_norm` in every dtype.

The definition (vLLM's and FlashInfer's ``fused_add_rms_norm``, Liger-Kernel's ``LigerFusedAddRMSNorm``):
h = x + residual, y = gamma * h * invrms, invrms = 1 / sqrt(mean(h^2) + eps) over the trailing axes; h is the new
residual stream and has a gradient of its own.
"""

import importlib
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest

import bnsym
from bnsym.spec import BUILT_IN, spec
from bnsym.symbolic.brute_force import Elements, difference_is_zero, instantiate, jacobian_vector_product
from bnsym.symbolic.layers import derivation
from bnsym.testing.definition_target import DefinitionTarget
from bnsym.tools.cli import main
from tests.budget import CORRECT_LAYER
from tests.compare import assert_relatively_close

torch = pytest.importorskip("torch")

NAME = "fused_add_rms_norm"
#: (x's shape, the normalised axes): the last axis, as every fused kernel normalises, and two trailing axes.
CASES = (((4, 3, 16), -1), ((2, 3, 4, 5), (-2, -1)))


def _composition(x, residual, gamma, eps, axis):
    """(y, h) from the unfused definition, with torch ops (autograd differentiates it)."""
    dims = (axis,) if isinstance(axis, int) else axis
    h = x + residual
    return gamma * h * torch.rsqrt(h.pow(2).mean(dim=dims, keepdim=True) + eps), h


def _inputs(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    k = 1 if isinstance(axis, int) else len(axis)
    x = rng.normal(size=shape) * 2.0 + 0.5
    residual = rng.normal(size=shape) * 3.0 - 0.5
    gamma = rng.normal(size=shape[-k:])
    return rng, x, residual, gamma


# ----- the public module -----

def test_it_is_a_built_in_layer_served_as_a_module_of_bnsym():
    assert NAME in BUILT_IN
    assert not (Path(bnsym.__file__).parent / f"{NAME}.py").exists(), "the layer needs no hand-written module"
    module = importlib.import_module(f"bnsym.{NAME}")
    assert module.__all__ == ["backward", "double_backward", "forward", "jvp"]
    for verb in module.__all__:
        assert getattr(module, verb).__doc__, f"bnsym.{NAME}.{verb} has no docstring"


def test_its_functions_take_the_residual_after_x_and_the_backward_reads_h():
    """forward(x, residual, gamma) -> (y, h, invrms); backward(dy, dh, h, gamma, invrms) -> (dx, dresidual,
    dgamma), as Liger's backward reads the saved sum h, not x and residual."""
    signatures = {verb: list(inspect.signature(getattr(bnsym.fused_add_rms_norm, verb)).parameters)
                  for verb in ("forward", "backward", "double_backward", "jvp")}
    assert signatures["forward"] == ["x", "residual", "gamma", "eps", "axis", "backend"]
    assert signatures["backward"] == ["dy", "dh", "h", "gamma", "invrms", "axis", "backend"]
    assert signatures["double_backward"] == ["ggx", "ggresidual", "gggamma", "dy", "dh", "h", "gamma", "invrms",
                                             "axis", "backend"]
    assert signatures["jvp"] == ["x", "residual", "gamma", "tx", "tresidual", "tgamma", "eps", "axis", "backend"]
    assert inspect.signature(bnsym.fused_add_rms_norm.forward).parameters["eps"].default == spec(NAME).eps


def test_arguments_are_checked_and_named():
    x = np.ones((2, 4))
    with pytest.raises(ValueError, match="residual must have the same shape as x"):
        bnsym.fused_add_rms_norm.forward(x, np.ones((2, 3)), np.ones(4))
    with pytest.raises(ValueError, match="dh must have the same shape as x"):
        bnsym.fused_add_rms_norm.backward(x, np.ones(3), x, np.ones(4), np.ones(2))
    with pytest.raises(TypeError, match="fused_add_rms_norm.forward.*residual"):
        bnsym.fused_add_rms_norm.forward(x)


# ----- derivatives against torch autograd of the composition, float64 -----

@pytest.mark.parametrize(("shape", "axis"), CASES, ids=str)
def test_forward_backward_double_backward_and_jvp_match_autograd_of_the_composition(shape, axis):
    rng, x, residual, gamma = _inputs(shape, axis)
    eps = 1e-3
    dy, dh, ggx, ggr, tx, tr = (rng.normal(size=shape) for _ in range(6))
    gggamma, tgamma = rng.normal(size=gamma.shape), rng.normal(size=gamma.shape)
    module = bnsym.fused_add_rms_norm

    y, h, invrms = module.forward(x, residual, gamma, eps=eps, axis=axis, backend="numpy")
    xt, rt, gt, dyt, dht = (torch.tensor(a, requires_grad=True) for a in (x, residual, gamma, dy, dh))
    yt, ht = _composition(xt, rt, gt, eps, axis)
    assert_relatively_close(y, yt.detach().numpy(), "y")
    assert_relatively_close(h, ht.detach().numpy(), "h")

    dx, dresidual, dgamma = module.backward(dy, dh, h, gamma, invrms, axis=axis, backend="numpy")
    dxt, drt, dgt = torch.autograd.grad((yt, ht), (xt, rt, gt), (dyt, dht), create_graph=True)
    assert_relatively_close(dx, dxt.detach().numpy(), "dx")
    assert_relatively_close(dresidual, drt.detach().numpy(), "dresidual")
    assert_relatively_close(dgamma, dgt.detach().numpy(), "dgamma")
    without_dh = module.backward(dy, np.zeros(shape), h, gamma, invrms, axis=axis, backend="numpy")[0]
    assert_relatively_close(dx - without_dh, dh,
                            "dx(dh) - dx(0): the residual stream's gradient passes straight through")

    second = module.double_backward(ggx, ggr, gggamma, dy, dh, h, gamma, invrms, axis=axis, backend="numpy")
    total = (dxt * torch.tensor(ggx)).sum() + (drt * torch.tensor(ggr)).sum() + (dgt * torch.tensor(gggamma)).sum()
    expected = torch.autograd.grad(total, (xt, rt, gt, dyt, dht), allow_unused=True)
    for got, want, what in zip(second, expected, ("gx", "gresidual", "ggamma", "gdy", "gdh")):
        assert_relatively_close(got, np.zeros(got.shape) if want is None else want.detach().numpy(), what)

    y_jvp, h_jvp, ty, th = module.jvp(x, residual, gamma, tx, tr, tgamma, eps=eps, axis=axis, backend="numpy")
    with warnings.catch_warnings():  # torch's forward mode loads its decompositions with torch.jit.script, deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        (yj, hj), (tyt, tht) = _jvp_of_the_composition(x, residual, gamma, tx, tr, tgamma, eps, axis)
    assert_relatively_close(y_jvp, yj.numpy(), "jvp y")
    assert_relatively_close(h_jvp, hj.numpy(), "jvp h")
    assert_relatively_close(ty, tyt.numpy(), "ty")
    assert_relatively_close(th, tht.numpy(), "th")


def _jvp_of_the_composition(x, residual, gamma, tx, tr, tgamma, eps, axis):
    return torch.func.jvp(lambda a, b, g: _composition(a, b, g, eps, axis),
                          (torch.tensor(x), torch.tensor(residual), torch.tensor(gamma)),
                          (torch.tensor(tx), torch.tensor(tr), torch.tensor(tgamma)))


@pytest.mark.parametrize("backend", ["numba", "array_api"])
def test_every_backend_agrees_with_the_numpy_kernels(backend):
    shape, axis = CASES[0]
    rng, x, residual, gamma = _inputs(shape, axis, seed=2)
    dy, dh = rng.normal(size=shape), rng.normal(size=shape)
    module = bnsym.fused_add_rms_norm
    for dtype in (np.float32, np.float64):
        args = [a.astype(dtype) for a in (x, residual, gamma)]
        expected = module.forward(*args, axis=axis, backend="numpy")
        got = module.forward(*args, axis=axis, backend=backend)
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        for a, b, what in zip(got, expected, ("y", "h", "invrms")):
            assert_relatively_close(np.asarray(a), b, f"{backend} {np.dtype(dtype).name} {what}", rtol)
        y, h, invrms = expected
        grads = [a.astype(dtype) for a in (dy, dh)]
        expected = module.backward(*grads, h, args[2], invrms, axis=axis, backend="numpy")
        got = module.backward(*grads, h, args[2], invrms, axis=axis, backend=backend)
        for a, b, what in zip(got, expected, ("dx", "dresidual", "dgamma")):
            assert_relatively_close(np.asarray(a), b, f"{backend} {np.dtype(dtype).name} {what}", rtol)


def test_the_definition_target_agrees_with_bnsyms_kernels_in_float64():
    """The built-in torch target (the definition evaluated with torch, autograd for the gradients) in the checker's
    protocol: forward(x, residual, gamma, eps) -> (y, h); backward(dy, dh, x, residual, gamma, eps)."""
    shape, axis = CASES[1]
    rng, x, residual, gamma = _inputs(shape, axis, seed=4)
    dy, dh = rng.normal(size=shape), rng.normal(size=shape)
    target = DefinitionTarget(NAME)
    y, h, invrms = bnsym.fused_add_rms_norm.forward(x, residual, gamma, eps=1e-3, axis=axis, backend="numpy")
    for got, expected, what in zip(target.forward(x, residual, gamma, 1e-3), (y, h), ("y", "h")):
        assert_relatively_close(got, expected, what, 1e-10)
    expected = bnsym.fused_add_rms_norm.backward(dy, dh, h, gamma, invrms, axis=axis, backend="numpy")
    got = target.backward(dy, dh, x, residual, gamma, 1e-3)
    for a, b, what in zip(got, expected, ("dx", "dresidual", "dgamma")):
        assert_relatively_close(a, b, what, 1e-10)


# ----- the derivation against brute force -----

def test_the_brute_force_cross_check_sees_a_dx_without_the_residual_streams_gradient():
    """The cross-check of tests/symbolic/test_family_cross_check.py (which this layer passes at M = 1 to 5) can fail
    on an upstream gradient of a field output: dx without dh differs from the full Jacobian's at M = 2."""
    layer = derivation(NAME)
    program, closed = layer.backward
    dx = program.outputs[0]
    wrong = closed[dx].xreplace({layer.symbols.field("dh"): 0})
    assert wrong != closed[dx], f"dx does not use dh: {closed[dx]}"
    elements = Elements(2)
    forward = layer.training_forward
    outputs = [instantiate(o, elements, i, forward) for o in layer.field_outputs for i in range(2)]
    upstream = [v for d in layer.upstream for v in elements[d]]
    brute = jacobian_vector_product(outputs, elements[layer.symbols.x], upstream)
    assert difference_is_zero(instantiate(closed[dx], elements, 0, forward), brute[0])
    assert not difference_is_zero(instantiate(wrong, elements, 0, forward), brute[0])


# ----- the checker -----

@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_bnsym_check_torch_exits_0_in_every_dtype(dtype, capsys):
    status = main(["check", "torch", "--layer", NAME, "--dtype", dtype, "--max-examples", str(CORRECT_LAYER)])
    out = capsys.readouterr().out
    assert status == 0, out
    for name in ("forward_reference", "backward_reference", "backward_finite_differences"):
        assert f"  PASS  {name}" in out, f"{name} did not run:\n{out}"
