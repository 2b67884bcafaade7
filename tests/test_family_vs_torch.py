"""Layer, RMS, group and instance norm against PyTorch in float64, to 1e-10 relative, on 2-D to 5-D inputs.

Forward and backward against torch.nn.functional.{layer_norm, rms_norm, group_norm, instance_norm} with autograd;
the double backward against torch.autograd.grad(create_graph=True); forward mode against torch.func.jvp; the saved
statistics against PyTorch's native kernels. Every upstream gradient, cotangent and tangent is random (the gradient
of sum(y) is zero, so dy = ones would prove nothing). Channel-last cases run torch on the input with its channel
axis moved to 1.
"""

from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnsym
from tests.backends import VIAS

RTOL = 1e-10

# torch.func.jvp loads PyTorch's own forward-mode decompositions through torch.jit.script on first use, which
# PyTorch 2.13 deprecates; the warning is about PyTorch's internals, not about these tests.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@dataclass(frozen=True)
class Case:
    """One layer on one input shape: how to call bnsym and the matching PyTorch function."""

    layer: str  # the bnsym module
    shape: tuple[int, ...]
    options: dict = field(default_factory=dict)  # axis, num_groups
    eps: float = 1e-5

    via: object = None  # a backend variant of tests/backends.py; None: bnsym's default backend

    @property
    def module(self):
        return getattr(bnsym if self.via is None else self.via, self.layer)

    def on(self, via) -> "Case":
        """This case, run through the backend variant ``via``."""
        return replace(self, via=via)

    @property
    def centred(self) -> bool:
        return self.layer != "rms_norm"

    @property
    def parameter_shape(self) -> tuple[int, ...]:
        if self.layer in ("layer_norm", "rms_norm"):
            axis = self.options.get("axis", -1)
            k = len(axis) if isinstance(axis, tuple) else 1
            return self.shape[-k:]
        return (self.shape[self.options.get("axis", 1)],)

    @property
    def id(self) -> str:
        options = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.layer}-{'x'.join(map(str, self.shape))}-{options}-eps{self.eps:g}"

    def torch_forward(self, x, gamma, beta):
        """PyTorch's y for torch tensors (beta is ignored by RMS norm, which has none)."""
        if self.layer == "layer_norm":
            return F.layer_norm(x, self.parameter_shape, gamma, beta, eps=self.eps)
        if self.layer == "rms_norm":
            return F.rms_norm(x, self.parameter_shape, gamma, eps=self.eps)
        axis = self.options.get("axis", 1)
        x = x.movedim(axis, 1).contiguous()  # torch's forward-mode group norm refuses a channel-last view
        if self.layer == "group_norm":
            y = F.group_norm(x, self.options["num_groups"], gamma, beta, eps=self.eps)
        else:
            y = F.instance_norm(x, weight=gamma, bias=beta, eps=self.eps)
        return y.movedim(1, axis)

    # bnsym's verbs, with the layer's own argument lists

    def forward(self, x, gamma, beta):
        if self.centred:
            return self.module.forward(x, gamma, beta, eps=self.eps, **self.options)
        return self.module.forward(x, gamma, eps=self.eps, **self.options)

    def backward(self, dy, x, gamma, statistics):
        return self.module.backward(dy, x, gamma, *statistics, **self.options)

    def double_backward(self, ggx, gggamma, ggbeta, dy, x, gamma, statistics):
        if self.centred:
            return self.module.double_backward(ggx, gggamma, ggbeta, dy, x, gamma, *statistics, **self.options)
        return self.module.double_backward(ggx, gggamma, dy, x, gamma, *statistics, **self.options)

    def jvp(self, x, gamma, beta, tx, tgamma, tbeta):
        if self.centred:
            return self.module.jvp(x, gamma, beta, tx, tgamma, tbeta, eps=self.eps, **self.options)
        return self.module.jvp(x, gamma, tx, tgamma, eps=self.eps, **self.options)


CASES = [
    Case("layer_norm", (6, 5)),
    Case("layer_norm", (3, 4, 5), eps=0.1),
    Case("layer_norm", (2, 3, 4, 5), {"axis": (-2, -1)}, eps=1e-3),
    Case("layer_norm", (2, 2, 3, 4, 3), {"axis": (2, 3, 4)}),
    Case("rms_norm", (6, 5), eps=1e-6),
    Case("rms_norm", (3, 4, 5), eps=0.1),
    Case("rms_norm", (2, 3, 4, 5), {"axis": (-2, -1)}, eps=1e-3),
    Case("rms_norm", (2, 2, 3, 4, 3), {"axis": (-3, -2, -1)}),
    Case("group_norm", (4, 6), {"num_groups": 2}),
    Case("group_norm", (2, 6, 5), {"num_groups": 3}, eps=0.1),
    Case("group_norm", (2, 4, 3, 5), {"num_groups": 2}, eps=1e-3),
    Case("group_norm", (2, 6, 2, 3, 2), {"num_groups": 3}),
    Case("group_norm", (3, 4, 2, 3), {"num_groups": 1}),
    Case("group_norm", (3, 4, 2, 3), {"num_groups": 4}),
    Case("group_norm", (2, 3, 5, 6), {"num_groups": 3, "axis": -1}, eps=1e-3),
    Case("instance_norm", (2, 3, 5)),
    Case("instance_norm", (2, 3, 4, 5), eps=0.1),
    Case("instance_norm", (2, 2, 3, 2, 4), eps=1e-3),
    Case("instance_norm", (2, 4, 5, 3), {"axis": -1}),
]
IDS = [case.id for case in CASES]


def _inputs(case: Case, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.normal(0, 3), rng.uniform(0.3, 3), size=case.shape)
    gamma, beta = rng.normal(size=case.parameter_shape), rng.normal(size=case.parameter_shape)
    return rng, x, gamma, beta


def _close(actual, expected, what, scale=0.0):
    """max|actual - expected| <= RTOL * max(max|expected|, scale); ``scale`` is the size of the terms a cancelling
    result is computed from (dx is a difference of terms of size gamma * invstd * dy)."""
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, torch's is {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), scale, 1e-300)
    error = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert error <= RTOL, f"{what}: max error {error:.2e} relative to {scale:.2e} exceeds {RTOL:.0e}"


def _terms(gamma, statistics, dy):
    """An upper bound on the size of the terms of dx: max|gamma| * max|invstd| * max|dy|."""
    gamma = 1.0 if gamma is None else np.max(np.abs(gamma))
    return float(gamma * np.max(statistics[-1]) * np.max(np.abs(dy)))


def _tensors(*arrays, grad=False):
    return tuple(None if a is None else torch.tensor(a, requires_grad=grad) for a in arrays)


@pytest.mark.parametrize("via", VIAS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_backward_match_torch_autograd(case, via):
    case = case.on(via)
    rng, x, gamma, beta = _inputs(case, 0)
    dy = rng.normal(size=case.shape)
    xt, gt, bt = _tensors(x, gamma, beta, grad=True)
    yt = case.torch_forward(xt, gt, bt)
    yt.backward(torch.tensor(dy))
    y, *statistics = case.forward(x, gamma, beta)
    grads = case.backward(dy, x, gamma, statistics)
    _close(y, yt, f"{case.id}: y")
    _close(grads[0], xt.grad, f"{case.id}: dx", scale=_terms(gamma, statistics, dy))
    _close(grads[1], gt.grad, f"{case.id}: dgamma")
    if case.centred:
        _close(grads[2], bt.grad, f"{case.id}: dbeta")
    assert len(grads) == (3 if case.centred else 2)


@pytest.mark.parametrize("via", VIAS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_double_backward_matches_autograd_with_create_graph(case, via):
    case = case.on(via)
    rng, x, gamma, beta = _inputs(case, 1)
    dy, ggx = rng.normal(size=case.shape), rng.normal(size=case.shape)
    gggamma, ggbeta = rng.normal(size=gamma.shape), rng.normal(size=beta.shape)
    xt, gt, bt, dyt = _tensors(x, gamma, beta, dy, grad=True)
    yt = case.torch_forward(xt, gt, bt)
    if case.centred:
        dx, dgamma, dbeta = torch.autograd.grad(yt, (xt, gt, bt), dyt, create_graph=True)
        loss = (dx * torch.tensor(ggx)).sum() + (dgamma * torch.tensor(gggamma)).sum() + (
            dbeta * torch.tensor(ggbeta)).sum()
    else:
        dx, dgamma = torch.autograd.grad(yt, (xt, gt), dyt, create_graph=True)
        loss = (dx * torch.tensor(ggx)).sum() + (dgamma * torch.tensor(gggamma)).sum()
    gx_ref, ggamma_ref, gdy_ref = torch.autograd.grad(loss, (xt, gt, dyt))
    _, *statistics = case.forward(x, gamma, beta)
    gx, ggamma, gdy = case.double_backward(ggx, gggamma, ggbeta, dy, x, gamma, statistics)
    _close(gx, gx_ref, f"{case.id}: gx")
    _close(ggamma, ggamma_ref, f"{case.id}: ggamma")
    _close(gdy, gdy_ref, f"{case.id}: gdy")


@pytest.mark.parametrize("via", VIAS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jvp_matches_torch_func_jvp(case, via):
    case = case.on(via)
    rng, x, gamma, beta = _inputs(case, 2)
    tx, tgamma, tbeta = rng.normal(size=case.shape), rng.normal(size=gamma.shape), rng.normal(size=beta.shape)
    y_ref, ty_ref = torch.func.jvp(case.torch_forward, _tensors(x, gamma, beta), _tensors(tx, tgamma, tbeta))
    y, ty = case.jvp(x, gamma, beta, tx, tgamma, tbeta)
    _close(y, y_ref, f"{case.id}: jvp y")
    _close(ty, ty_ref, f"{case.id}: jvp ty")


NO_AFFINE = [CASES[1], CASES[5], CASES[9], CASES[14], CASES[16]]


@pytest.mark.parametrize("via", VIAS, ids=str)
@pytest.mark.parametrize("case", NO_AFFINE, ids=[case.id for case in NO_AFFINE])
def test_no_affine_part_matches_torch_with_no_weight_and_bias(case, via):
    case = case.on(via)
    """gamma = beta = None is PyTorch's weight = bias = None; the gradient and second-order gradient for gamma come
    back as None, and the derivatives with respect to x are those of the layer without an affine part."""
    rng, x, _, _ = _inputs(case, 3)
    dy, ggx = rng.normal(size=case.shape), rng.normal(size=case.shape)
    xt, dyt = _tensors(x, dy, grad=True)
    yt = case.torch_forward(xt, None, None)
    (dx_ref,) = torch.autograd.grad(yt, xt, dyt, create_graph=True)
    gx_ref, gdy_ref = torch.autograd.grad((dx_ref * torch.tensor(ggx)).sum(), (xt, dyt))
    y, *statistics = case.forward(x, None, None)
    dx, dgamma, *rest = case.backward(dy, x, None, statistics)
    gx, ggamma, gdy = case.double_backward(ggx, None, None, dy, x, None, statistics)
    _close(y, yt, f"{case.id}: y without gamma and beta")
    _close(dx, dx_ref, f"{case.id}: dx without gamma and beta", scale=_terms(None, statistics, dy))
    assert dgamma is None, f"{case.id}: dgamma is {dgamma!r} without a gamma"
    _close(gx, gx_ref, f"{case.id}: gx without gamma and beta")
    _close(gdy, gdy_ref, f"{case.id}: gdy without gamma and beta")
    assert ggamma is None, f"{case.id}: ggamma is {ggamma!r} without a gamma"
    _, ty = case.jvp(x, None, None, ggx, None, None)
    _, ty_ref = torch.func.jvp(lambda a: case.torch_forward(a, None, None), _tensors(x), _tensors(ggx))
    _close(ty, ty_ref, f"{case.id}: jvp ty without gamma and beta")


@pytest.mark.parametrize("shape, axis", [((4, 3, 5), -1), ((2, 3, 4, 5), (-2, -1))])
def test_layer_norm_statistics_match_native_layer_norm(shape, axis):
    rng = np.random.default_rng(4)
    x = rng.normal(5, 2, size=shape)
    k = len(axis) if isinstance(axis, tuple) else 1
    _, mean, invstd = bnsym.layer_norm.forward(x, None, None, eps=1e-3, axis=axis)
    _, mean_ref, rstd_ref = torch.ops.aten.native_layer_norm(torch.tensor(x), list(shape[-k:]), None, None, 1e-3)
    _close(mean, mean_ref.reshape(shape[:-k]), "layer norm mean")
    _close(invstd, rstd_ref.reshape(shape[:-k]), "layer norm invstd")


def test_rms_norm_statistics_match_fused_rms_norm():
    x = np.random.default_rng(5).normal(1, 2, size=(4, 3, 5))
    _, invrms = bnsym.rms_norm.forward(x, None, eps=1e-3)
    _, rstd_ref = torch.ops.aten._fused_rms_norm(torch.tensor(x), [5], None, 1e-3)
    _close(invrms, rstd_ref.reshape(4, 3), "rms norm invrms")


@pytest.mark.parametrize("axis", [1, -1], ids=["NCHW", "NHWC"])
def test_group_norm_statistics_match_native_group_norm(axis):
    rng = np.random.default_rng(6)
    x = rng.normal(5, 2, size=(3, 6, 4, 5))
    _, mean, invstd = bnsym.group_norm.forward(np.moveaxis(x, 1, axis), None, None, 3, eps=1e-3, axis=axis)
    _, mean_ref, rstd_ref = torch.ops.aten.native_group_norm(torch.tensor(x), None, None, 3, 6, 20, 3, 1e-3)
    _close(mean, mean_ref, "group norm mean")
    _close(invstd, rstd_ref, "group norm invstd")


def test_instance_norm_statistics_are_batch_norm_statistics_per_sample_and_channel():
    """PyTorch computes instance norm as batch norm of x seen as (1, N*C, *spatial); its saved statistics are
    bnsym's (N, C) statistics, flattened."""
    x = np.random.default_rng(7).normal(5, 2, size=(3, 4, 2, 5))
    _, mean, invstd = bnsym.instance_norm.forward(x, None, None, eps=1e-3)
    _, mean_ref, rstd_ref = torch.ops.aten.native_batch_norm(torch.tensor(x).reshape(1, 12, 2, 5), None, None, None,
                                                             None, True, 0.1, 1e-3)
    _close(mean, mean_ref.reshape(3, 4), "instance norm mean")
    _close(invstd, rstd_ref.reshape(3, 4), "instance norm invstd")
