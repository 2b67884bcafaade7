"""Field inputs and outputs on a declaration bnsym has never seen (tests/data/skip_layer_norm.py: a centred layer
norm of u = x - skip, returning y and u): derived and generated into a package of its own, its public functions
agree with autograd of the composition, and `bnsym check` passes bnsym's own functions and the torch target written
from its definition, with the properties written for every input and output."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bnsym.runtime.functions import functions
from bnsym.spec import unregister
from bnsym.spec.loading import load
from bnsym.testing import properties_of
from bnsym.tools.cli import main
from tests.budget import PLUMBING

torch = pytest.importorskip("torch")

DECLARATION = Path(__file__).parent / "data" / "skip_layer_norm.py"
REFERENCE = f"{DECLARATION}:SKIP_LAYER_NORM"


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    """The declared layer, registered, with its kernels generated into ``skip_layer_norm_kernels`` on sys.path."""
    root = tmp_path_factory.mktemp("field_layer")
    spec = load(REFERENCE)
    assert main(["derive", REFERENCE, "--out", str(root / spec.kernels_package)]) == 0
    sys.path.insert(0, str(root))
    try:
        yield spec
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith(spec.kernels_package)]:
            del sys.modules[name]
        unregister(spec.name)
        shutil.rmtree(root, ignore_errors=True)


def test_its_functions_agree_with_autograd_of_the_composition(layer):
    rng = np.random.default_rng(0)
    shape = (3, 4, 6)
    x, skip, dy, du = (rng.normal(size=shape) for _ in range(4))
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    own = functions(layer)
    y, u, mean, invstd = own.forward(x, skip, gamma, beta, eps=1e-3, backend="numpy")
    dx, dskip, dgamma, dbeta = own.backward(dy, du, u, gamma, mean, invstd, backend="numpy")

    xt, st, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, skip, gamma, beta))
    ut = xt - st
    yt = gt * torch.nn.functional.layer_norm(ut, (6,), eps=1e-3) + bt
    expected = torch.autograd.grad((yt, ut), (xt, st, gt, bt), (torch.tensor(dy), torch.tensor(du)))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(u, ut.detach().numpy(), rtol=1e-12)
    for got, want, name in zip((dx, dskip, dgamma, dbeta), expected, ("dx", "dskip", "dgamma", "dbeta")):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)
    np.testing.assert_allclose(dskip, -dx, rtol=1e-12, err_msg="u = x - skip, so dskip = -dx")


def test_the_properties_run_are_those_written_for_every_input_and_output(layer):
    names = set(properties_of(layer.name))
    assert {"forward_reference", "backward_reference", "backward_finite_differences"} <= names
    assert not names & {"shift_invariance", "dx_sums_to_zero", "identity_recovery"}, names


@pytest.mark.parametrize("target", ["bnsym", "torch"])
def test_bnsym_check_passes_bnsyms_functions_and_the_torch_target(layer, target, capsys):
    status = main(["check", target, "--layer", REFERENCE, "--dtype", "float32", "--max-examples", str(PLUMBING)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "  PASS  backward_finite_differences" in out, out
