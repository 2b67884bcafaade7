"""A grouping declared with ``scalar_parameters=True``: each parameter is one value of shape (), shared by every
group, and its gradient sums over all of x, through the whole product.

The layout and the grouping's facts are checked for every grouping that takes the option; the layers of
tests/data/scalar_layers.py (a centred row norm and a group norm, each with one scalar gamma and beta) are generated
into packages of their own and run on every backend, against finite differences of their own forward and through
`bnsym check`. The README's ScaleNorm (an RMS layer with one scalar g) is walked through by
tests/test_readme_own_layer.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from bnsym.runtime.functions import functions
from bnsym.spec import ChannelGroups, Channels, SampleChannels, SampleTrailingAxes, TrailingAxes
from bnsym.tools.cli import main
from tests.budget import PLUMBING
from tests.declared import derived_layers

DECLARATIONS = Path(__file__).parent / "data" / "scalar_layers.py"
ROW, GROUPS = f"{DECLARATIONS}:SCALAR_ROW_NORM", f"{DECLARATIONS}:SCALAR_GROUP_NORM"
#: x's shape and the options of a call, per layer.
CALLS = {ROW: ((4, 3, 6), {"axis": (-2, -1)}), GROUPS: ((3, 6, 5), {"num_groups": 3})}


@pytest.mark.parametrize("grouping, shape, options, statistics", [
    (TrailingAxes, (2, 3, 4), {"axis": (-2, -1)}, (2,)),
    (Channels, (2, 3, 4), {"axis": 1}, (3,)),
    (ChannelGroups, (2, 6, 4), {"num_groups": 3}, (2, 3)),
    (SampleChannels, (2, 3, 4), {}, (2, 3))], ids=lambda v: getattr(v, "__name__", None))
def test_the_layout_has_scalar_parameters_whose_gradient_sums_over_every_axis(grouping, shape, options, statistics):
    plain, scalar = grouping().layout(shape, **options), grouping(scalar_parameters=True).layout(shape, **options)
    assert scalar.parameter_shape == () and scalar.parameter_broadcast == (1,) * len(scalar.grouped)
    assert scalar.parameter_axes == tuple(range(len(scalar.grouped))), "dgamma must sum over every axis of x"
    # The groups themselves are the grouping's: only the parameters moved.
    assert (scalar.axes, scalar.count, scalar.statistics_shape, scalar.grouped) == \
        (plain.axes, plain.count, plain.statistics_shape, plain.grouped)
    assert scalar.statistics_shape == statistics


def test_the_grouping_facts_follow_the_declared_placement():
    grouping = TrailingAxes(scalar_parameters=True)
    assert (grouping.per_element_parameters, grouping.shared_parameters, grouping.parameter_per_value) == \
        (False, True, False)
    assert grouping.example_sizes((2, 3, 4)) == (1,), "a scalar gamma names no axes: the protocol's is the last"
    assert grouping.protocol_options((2, 3, 4), ()) == {"axis": -1}
    with pytest.raises(ValueError, match="one row per sample"):
        SampleTrailingAxes(scalar_parameters=True)
    with pytest.raises(TypeError, match="scalar_parameters must be True or False"):
        TrailingAxes(scalar_parameters="yes")


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """Both layers, registered, with their kernels generated into packages on sys.path."""
    with derived_layers([ROW, GROUPS], tmp_path_factory.mktemp("scalar_layers")) as specs:
        yield specs


def _inputs(reference, seed=0):
    shape, options = CALLS[reference]
    rng = np.random.default_rng(seed)
    return rng, 3.0 + rng.normal(size=shape), rng.normal(size=shape), np.float64(1.7), np.float64(-0.4), options


@pytest.mark.parametrize("reference", [ROW, GROUPS], ids=["row norm", "group norm"])
def test_gradients_are_those_of_the_forward_with_one_gamma_and_one_beta(layers, reference):
    """<dx, u> + dgamma v + dbeta w against central differences of <dy, forward> along (u, v, w): dgamma and dbeta
    are the gradients of the one scalar each, summed over every group."""
    own = functions(layers[reference])
    rng, x, dy, gamma, beta, options = _inputs(reference)
    y, mean, invstd = own.forward(x, gamma, beta, **options, backend="numpy")
    dx, dgamma, dbeta = own.backward(dy, x, gamma, mean, invstd, **options, backend="numpy")
    assert y.shape == x.shape and np.shape(dgamma) == () and np.shape(dbeta) == ()

    def loss(x, gamma, beta):
        return np.sum(dy * own.forward(x, gamma, beta, **options, backend="numpy")[0])

    for _ in range(3):
        u, v, w, h = rng.normal(size=x.shape), rng.normal(), rng.normal(), 1e-6
        numeric = (loss(x + h * u, gamma + h * v, beta + h * w) - loss(x - h * u, gamma - h * v, beta - h * w)) / (
            2 * h)
        analytic = np.sum(dx * u) + float(dgamma) * v + float(dbeta) * w
        assert abs(analytic - numeric) <= 1e-6 * (1 + abs(numeric)), (analytic, numeric)
    with pytest.raises(ValueError, match=r"gamma must have shape \(\)"):
        own.forward(x, np.ones(x.shape[-1]), beta, **options)


@pytest.mark.parametrize("reference", [ROW, GROUPS], ids=["row norm", "group norm"])
def test_the_array_api_kernels_agree_with_numpy(layers, reference):
    torch = pytest.importorskip("torch")
    pytest.importorskip("array_api_compat")
    own = functions(layers[reference])
    _, x, dy, gamma, beta, options = _inputs(reference, 1)
    expected = own.backward(dy, x, gamma, *own.forward(x, gamma, beta, **options, backend="numpy")[1:], **options,
                            backend="numpy")
    t = {name: torch.from_numpy(np.asarray(value)) for name, value in (("x", x), ("dy", dy), ("g", gamma),
                                                                          ("b", beta))}
    _, mean, invstd = own.forward(t["x"], t["g"], t["b"], **options, backend="array_api")
    got = own.backward(t["dy"], t["x"], t["g"], mean, invstd, **options, backend="array_api")
    for name, a, b in zip(("dx", "dgamma", "dbeta"), got, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=1e-12, err_msg=name)


def test_the_compiled_kernels_agree_with_numpy(layers):
    pytest.importorskip("numba")
    own = functions(layers[ROW])
    _, x, dy, gamma, beta, options = _inputs(ROW, 2)
    for backend_result, numpy_result in zip(own.forward(x, gamma, beta, **options, backend="numba"),
                                            own.forward(x, gamma, beta, **options, backend="numpy")):
        np.testing.assert_allclose(backend_result, numpy_result, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reference", [ROW, GROUPS], ids=["row norm", "group norm"])
def test_the_checker_draws_scalar_parameters_and_bnsym_passes(layers, reference, tmp_path, capsys):
    from bnsym.testing import strategies

    spec = layers[reference]

    @settings(max_examples=10, derandomize=True, database=None, deadline=None)  # the same examples on every run
    @given(strategies.layer_examples(spec.name, dtype="float64"))
    def drawn(example):
        assert example.gamma.shape == () and example.beta.shape == (), example.describe()

    drawn()
    assert main(["check", "bnsym", "--layer", reference, "--max-examples", str(PLUMBING),
                 "--save-dir", str(tmp_path)]) == 0, capsys.readouterr().out


def test_the_torch_target_written_from_the_definition_passes(layers, tmp_path, capsys):
    """`bnsym check torch` of a layer torch has no function for evaluates its definition with autograd: with a
    scalar gamma and beta (and num_groups, an option the protocol passes) too."""
    pytest.importorskip("torch")
    assert main(["check", "torch", "--layer", GROUPS, "--dtype", "float32", "--max-examples", str(PLUMBING),
                 "--save-dir", str(tmp_path)]) == 0, capsys.readouterr().out
