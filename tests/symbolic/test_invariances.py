"""Invariances proved from a layer's declaration (bnsym.symbolic.invariances): the five layers get the sets their
mathematics gives, made-up layers (declared here, never seen by the module) get theirs, every False comes with a
counterexample, the prover refuses false identities, and what it proves holds in bnsym's NumPy kernels."""

import importlib

import numpy as np
import pytest
import sympy

from bnsym.spec import BUILT_IN, Channels, LayerSpec, TrailingAxes, register, spec, unregister
from bnsym.spec.layers import CENTRED_REGIMES, RMS_REGIMES
from bnsym.symbolic import invariances as inv
from bnsym.symbolic.layers import FORWARDS, Derivation, LayerDeclaration, LayerSymbols, derivation
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, M

CENTRED = {"shift", "scale", "dx_sums_to_zero", "dx_orthogonal_to_x"}
EXPECTED = {
    # gamma one value per channel, not shared: x can be recovered, and the Jacobian is symmetric.
    "batch_norm": CENTRED | {"identity_recovery", "jacobian_symmetric"},
    # gamma varies within a group: the Jacobian is diag(gamma) times a symmetric matrix; parameters are shared.
    "layer_norm": CENTRED,
    "group_norm": CENTRED,
    # one gamma per group, but shared by the samples: symmetric Jacobian, no recovery of x for every sample.
    "instance_norm": CENTRED | {"jacobian_symmetric"},
    # nothing is centred: only the scale claim and its derivative.
    "rms_norm": {"scale", "dx_orthogonal_to_x"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_textbook_layer_gets_the_invariances_of_its_mathematics(name):
    """The five textbook layers; a variant's own test file states its set (tests/test_gemma_rms_norm.py)."""
    found, expected = inv.invariances(derivation(name)), EXPECTED[name]
    assert found == expected, (f"{name}: proved {sorted(found)}, expected {sorted(expected)}; "
                               f"missing {sorted(expected - found)}, extra {sorted(found - expected)}")


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_false_answer_has_a_counterexample_or_a_reason(name):
    for invariance in inv.INVARIANCES:
        verdict = inv.verdict(name, invariance)
        if not verdict.proved:
            assert verdict.refuted_at or verdict.reason, f"{name} {invariance}: False with no counterexample"
            assert set(verdict.refuted_at) <= set(inv.SIZES)


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_jacobian_is_symmetric_for_every_layer_once_gamma_is_constant_over_a_group(name):
    assert inv.jacobian_symmetric(name, constant_parameters=True), f"{name}: J not symmetric with a scalar gamma"


def test_the_one_function_per_invariance_agrees_with_the_set():
    functions = {"shift": inv.shift_invariant, "scale": inv.scale_invariant, "dx_sums_to_zero": inv.dx_sums_to_zero,
                 "dx_orthogonal_to_x": inv.dx_orthogonal_to_x, "identity_recovery": inv.identity_recovery,
                 "jacobian_symmetric": inv.jacobian_symmetric}
    assert set(functions) == set(inv.INVARIANCES)
    for name in BUILT_IN:
        for invariance, function in functions.items():
            assert function(name) == (invariance in inv.invariances(name)), f"{function.__name__}({name})"


# ----- made-up layers: the module has never seen them -----

def _one_pass_centred(s: LayerSymbols) -> Program:
    """Centred, but the variance written E[x^2] - E[x]^2: the same mathematics as batch norm, other definitions."""
    return Program([s.x, s.gamma, s.beta, s.eps], [
        Definition(s.mean, BatchSum(s.x) / M),
        Definition(s.var, BatchSum(s.x**2) / M - s.mean**2),
        Definition(s.y, s.gamma * (s.x - s.mean) / sympy.sqrt(s.var + s.eps) + s.beta),
    ], [s.y])


def _tanh_centred(s: LayerSymbols) -> Program:
    """y = gamma tanh(x - mean) + beta: shift invariant, but no scale in sight."""
    return Program([s.x, s.gamma, s.beta, s.eps], [
        Definition(s.mean, BatchSum(s.x) / M),
        Definition(s.y, s.gamma * sympy.tanh(s.x - s.mean) + s.beta),
    ], [s.y])


def _rms_eps_outside(s: LayerSymbols) -> Program:
    """y = gamma x / (sqrt(mean(x^2)) + eps): scales by the root mean square, with eps outside the root, so
    y(a x; a eps) = y(x; eps) but the claim with a^2 eps fails; nothing is centred."""
    return Program([s.x, s.gamma, s.eps], [
        Definition(s.ms, BatchSum(s.x**2) / M),
        Definition(s.y, s.gamma * s.x / (sympy.sqrt(s.ms) + s.eps)),
    ], [s.y])


def _made_up_spec(name, statistic, grouping, regimes):
    return LayerSpec(name, name.replace("_", " "), name.replace("_", " "), statistic, grouping, eps=1e-5,
                     regimes=regimes, group="a test's group", statistics_over="a test's axes",
                     parameters_are="a test's parameters")


MADE_UP = {
    # Per-channel parameters, like batch norm: everything batch norm has.
    "test_one_pass_centred": (_one_pass_centred, "centred", Channels(), EXPECTED["batch_norm"]),
    # Shift invariance (and so dx sums to zero), nothing else: tanh is not scale invariant and J = diag(...) P.
    "test_tanh_centred": (_tanh_centred, "centred", TrailingAxes(), {"shift", "dx_sums_to_zero"}),
    # Not shift invariant, and not scale invariant in the stated form: the empty set.
    "test_rms_eps_outside": (_rms_eps_outside, "rms", TrailingAxes(), set()),
}


@pytest.fixture(params=sorted(MADE_UP))
def made_up(request):
    name = request.param
    forward, statistic, grouping, expected = MADE_UP[name]
    layer = register(_made_up_spec(name, statistic, grouping, CENTRED_REGIMES if statistic == "centred"
                                   else RMS_REGIMES))
    try:
        yield Derivation(LayerDeclaration(layer, forward)), expected
    finally:
        unregister(name)


def test_a_made_up_layer_gets_the_invariances_of_its_own_forward_pass(made_up):
    d, expected = made_up
    found = inv.invariances(d)
    assert found == expected, (f"{d.declaration.name}: proved {sorted(found)}, expected {sorted(expected)}")


def test_a_made_up_layer_that_is_not_shift_invariant_has_a_counterexample(made_up):
    d, expected = made_up
    if "shift" not in expected:
        assert not inv.shift_invariant(d) and inv.verdict(d, "shift").refuted_at, "no counterexample to shift"


def test_the_made_up_layers_are_registered_only_inside_the_test(made_up):
    d, _ = made_up
    assert spec(d.declaration.name) is d.declaration.spec


def test_no_made_up_layer_outlives_its_test():
    from bnsym.spec import SPECS

    assert not [name for name in SPECS if name.startswith("test_")], "a test left its made-up layer registered"


# ----- the prover is sound: it refuses what is false -----

def test_the_prover_refuses_scale_invariance_with_eps_held_fixed():
    """y(a x; eps) = y(x; eps) is false for eps > 0; only the a^2 eps form is an identity."""
    d = derivation("batch_norm")
    s = d.symbols
    a = sympy.Symbol("a", positive=True)
    y = d.training_forward.inline(s.y)
    assert not inv.vanishes(y.xreplace({s.x: a * s.x}) - y)
    assert inv.vanishes(y.xreplace({s.x: a * s.x, s.eps: a**2 * s.eps}) - y)


def test_vanishes_proves_only_identities():
    x, e = sympy.Symbol("x", real=True), sympy.Symbol("e", positive=True)
    assert inv.vanishes(sympy.sqrt(x**2 + e) ** 2 - x**2 - e)
    assert inv.vanishes(1 / sympy.sqrt(4 * (x**2 + e)) - 1 / (2 * sympy.sqrt(e + x**2)))
    assert not inv.vanishes(sympy.sqrt(x**2) - x), "sqrt(x^2) = x is false for negative x"
    assert not inv.vanishes(sympy.sqrt(x**2 + e) - x)


def test_verdict_names_what_it_does_not_know():
    with pytest.raises(ValueError, match="unknown invariance 'rotation'"):
        inv.verdict("batch_norm", "rotation")
    with pytest.raises(ValueError, match="constant_parameters applies to jacobian_symmetric only"):
        inv.verdict("batch_norm", "shift", constant_parameters=True)
    with pytest.raises(TypeError, match="got int"):
        inv.invariances(3)


# ----- what is proved holds in the kernels, and what is refuted fails there -----

def _call(name, x, eps, dy=None):
    """bnsym's NumPy forward (y) or backward (dx) of ``name`` on x with fixed random parameters."""
    layer = spec(name)
    size = layer.grouping.example_sizes(x.shape)
    options = layer.grouping.example_options(x.shape, size[len(size) // 2])
    shape = layer.layout(x.shape, **options).parameter_shape
    rng = np.random.default_rng(7)
    parameters = [rng.uniform(0.5, 2.0, shape) if p == "gamma" else rng.normal(size=shape) for p in layer.parameters]
    # Running statistics that the training forward reads (batch renormalisation's): fixed, per group.
    statistics = layer.layout(x.shape, **options).statistics_shape
    running = [rng.normal(size=statistics) if r == "running_mean" else rng.uniform(0.5, 2.0, statistics)
               for r in (layer.running_names if layer.reads_running else ())]
    module = importlib.import_module(f"bnsym.{name}")
    y, *saved = module.forward(x, *parameters, *running, eps=eps, **options, backend="numpy")
    if dy is None:
        return y
    return module.backward(dy, x, parameters[0], *saved, *running, **options, backend="numpy")[0]


#: The kernels are called with x alone: the layers of x in, y out.
PLAIN = tuple(n for n in BUILT_IN if spec(n).plain)


@pytest.mark.parametrize("name", PLAIN)
def test_the_kernels_have_exactly_the_proved_shift_and_scale_invariances(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5))
    eps = 0.1  # large, so that a claim that holds only at eps = 0 visibly fails
    y = _call(name, x, eps)
    shifted = np.max(np.abs(_call(name, x + 3.0, eps) - y))
    scaled = np.max(np.abs(_call(name, 2.5 * x, 2.5**2 * eps) - y))
    scaled_fixed_eps = np.max(np.abs(_call(name, 2.5 * x, eps) - y))
    if inv.shift_invariant(name):
        assert shifted < 1e-12, f"{name}: proved shift invariant, kernels moved by {shifted}"
    else:
        assert shifted > 1e-3, f"{name}: refuted shift invariance, but kernels moved only by {shifted}"
    if inv.scale_invariant(name):
        assert scaled < 1e-12, f"{name}: proved scale invariant, but y(a x; a^2 eps) - y(x; eps) = {scaled}"
    else:  # batch renormalisation: r and d read the running statistics, which do not scale with x
        assert scaled > 1e-3, f"{name}: refuted scale invariance, but y(a x; a^2 eps) - y(x; eps) = {scaled}"
    assert scaled_fixed_eps > 1e-3, f"{name}: y(a x; eps) = y(x; eps) although eps = {eps} is not scaled"


@pytest.mark.parametrize("name", PLAIN)
def test_the_kernels_gradients_have_exactly_the_proved_symmetry_and_zero_sum(name):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 5))
    u, v = rng.normal(size=x.shape), rng.normal(size=x.shape)
    dx_u, dx_v = _call(name, x, 1e-3, dy=u), _call(name, x, 1e-3, dy=v)
    layer = spec(name)
    size = layer.grouping.example_sizes(x.shape)
    layout = layer.layout(x.shape, **layer.grouping.example_options(x.shape, size[len(size) // 2]))
    group_sums = np.abs(layout.field(dx_u, np.float64).sum(axis=layout.axes)).max()
    asymmetry = abs(np.sum(u * dx_v) - np.sum(v * dx_u))
    if inv.dx_sums_to_zero(name):
        assert group_sums < 1e-10, f"{name}: proved sum(dx) = 0 per group, kernels give {group_sums}"
    else:
        assert group_sums > 1e-3, f"{name}: refuted sum(dx) = 0, but kernels give {group_sums}"
    if inv.jacobian_symmetric(name):
        assert asymmetry < 1e-10, f"{name}: proved <u, dx(v)> = <v, dx(u)>, kernels differ by {asymmetry}"
    else:
        assert asymmetry > 1e-3, f"{name}: refuted Jacobian symmetry, but kernels differ only by {asymmetry}"


def test_identity_recovery_holds_in_the_kernels_where_it_is_proved():
    name = next(n for n in BUILT_IN if inv.identity_recovery(n))
    layer = spec(name)
    x = np.random.default_rng(2).normal(size=(6, 3, 2))
    options = layer.grouping.example_options(x.shape, 0)
    layout = layer.layout(x.shape, **options)
    grouped = layout.field(x, np.float64)
    mean = grouped.mean(axis=layout.axes, keepdims=True)
    var = ((grouped - mean) ** 2).mean(axis=layout.axes, keepdims=True)
    gamma, beta = np.sqrt(var + 1e-3).reshape(layout.parameter_shape), mean.reshape(layout.parameter_shape)
    y, *_ = importlib.import_module(f"bnsym.{name}").forward(x, gamma, beta, eps=1e-3, **options, backend="numpy")
    np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12, err_msg=f"{name}: recovery proved, kernels miss it")


# ----- what the checker reads: the verdicts bnsym derive wrote into each generated package -----

@pytest.mark.parametrize("name", BUILT_IN)
def test_the_generated_invariance_data_is_a_fresh_proof(name):
    """bnsym/_generated/<name>.py records the verdicts (and the declaration's digest) that proving now gives: the
    checker's choice of properties (bnsym.testing.proved) rests on it. `bnsym derive --check` covers the same bytes;
    this says which claim drifted."""
    kernels = importlib.import_module(spec(name).kernels_module)
    fresh = inv.recorded(name)
    assert kernels.INVARIANCES == fresh, (
        f"{name}: generated {kernels.INVARIANCES}, proved now {fresh}; run `bnsym derive`")
    assert kernels.INVARIANCES_FROM == inv.fingerprint(name), f"{name}: proved from another declaration"
    assert set(fresh) == set(inv.RECORDED) and {n for n in inv.INVARIANCES if fresh[n]} == inv.invariances(name)


def _cubed_centred(s: LayerSymbols) -> Program:
    """y = gamma x_hat^3 + beta: centred and scaled like layer norm, but no gamma and beta give y = x back."""
    return Program([s.x, s.gamma, s.beta, s.eps], [
        Definition(s.mean, BatchSum(s.x) / M),
        Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
        Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)),
        Definition(s.x_hat, (s.x - s.mean) * s.invstd),
        Definition(s.y, s.gamma * s.x_hat**3 + s.beta),
    ], [s.y, s.mean, s.invstd])


def test_normalisation_undone_holds_for_every_layer_and_is_refuted_where_it_fails():
    """The claim behind the checker's identity_recovery property (equal groups, scale 1/s, beta = mean): every
    built-in layer whose y is x_hat at neutral parameters, whatever its scale (1 + gamma) or statistic; not batch
    renormalisation (y = r x_hat + d, r and d from the running statistics), nor a y that is cubic in x_hat."""
    plain = [n for n in BUILT_IN if spec(n).plain]  # x in, y out: fused add + RMS norm's y is h's, not x's
    wrong = [n for n in plain if inv.normalisation_undone(n) != inv.standardised(n)]
    assert not wrong, f"normalisation undone is not proved exactly for the standardised built-in layers: {wrong}"
    fields = [n for n in BUILT_IN if not spec(n).plain]
    assert not any(inv.normalisation_undone(n) for n in fields), "y = x proved for a layer that normalises h"
    assert sum(inv.standardised(n) for n in BUILT_IN) >= 7, "fewer standardised built-in layers than the textbook 7"
    layer = register(_made_up_spec("test_cubed_centred", "centred", TrailingAxes(), CENTRED_REGIMES))
    try:
        d = Derivation(LayerDeclaration(layer, _cubed_centred))
        assert inv.shift_invariant(d), "x_hat^3 is still shift invariant"
        assert not inv.normalisation_undone(d), "y = gamma x_hat^3 + beta is not x for gamma = 1/s, beta = mean"
        assert inv.recorded(d)[inv.UNDONE] is False
    finally:
        unregister("test_cubed_centred")


def test_the_fingerprint_changes_with_what_the_proofs_read_and_only_with_that():
    """INVARIANCES_FROM tells the checker that a generated package was proved from another declaration: the
    digest must differ when the forward pass or the placement of gamma differs, and agree for equal declarations."""
    def digest(forward, grouping, name="test_fingerprinted"):
        layer = register(_made_up_spec(name, "centred", grouping, CENTRED_REGIMES))
        try:
            return inv.fingerprint(Derivation(LayerDeclaration(layer, forward)))
        finally:
            unregister(name)

    reference = digest(_one_pass_centred, Channels())
    assert digest(_one_pass_centred, Channels(), "test_fingerprinted_again") == reference
    assert digest(_cubed_centred, Channels()) != reference, "another forward pass, the same digest"
    assert digest(_one_pass_centred, TrailingAxes()) != reference, "gamma per element or per group, the same digest"


def _eval_with_eps_twice(s: LayerSymbols) -> dict:
    """An eval mode that adds eps to a running variance which already holds it: y = gamma (x - running_mean) /
    sqrt(running_var + 2 eps) + beta, not the training forward on the batch's own mean and variance."""
    return {s.mean: s.running_mean, s.var: s.running_var,
            s.x_hat: (s.x - s.running_mean) / sympy.sqrt(s.running_var + 2 * s.eps)}


def test_eval_is_training_at_the_batchs_own_statistics_where_the_declaration_says_so():
    """The claim behind the checker's eval_is_training_at_batch_statistics: batch norm (eval mode frozen from the
    training forward) and batch renormalisation (declared eval mode; r = 1 and d = 0 at the batch's own statistics)
    have it; a layer without running statistics has no eval mode (a reason, not a counterexample); a declared eval
    mode that adds eps twice is refuted with a counterexample, and its digest differs from batch norm's own."""
    assert inv.eval_is_training_at_batch_statistics("batch_norm")
    assert inv.eval_is_training_at_batch_statistics("batch_renorm")
    for name in BUILT_IN:
        if not spec(name).running_statistics:
            assert not inv.eval_is_training_at_batch_statistics(name), name
    layer = register(LayerSpec("test_eps_twice", "eps twice", "eps twice", "centred", Channels(), eps=1e-5,
                               regimes=CENTRED_REGIMES, group="a channel", statistics_over="a test's axes",
                               parameters_are="one per channel", running_statistics=True))
    try:
        forward = FORWARDS["centred"]  # batch norm's training forward
        wrong = Derivation(LayerDeclaration(layer, forward, _eval_with_eps_twice))
        verdict = inv._eval_is_training_verdict(wrong)
        assert not verdict.proved and verdict.refuted_at, verdict
        assert not inv.eval_is_training_at_batch_statistics(wrong)
        right = Derivation(LayerDeclaration(layer, forward))
        assert inv.eval_is_training_at_batch_statistics(right)
        assert inv.fingerprint(wrong) != inv.fingerprint(right), "another eval mode, the same digest"
    finally:
        unregister("test_eps_twice")
