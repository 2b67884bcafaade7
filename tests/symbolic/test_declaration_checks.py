"""A declared forward pass is checked before anything is derived from it (bnsym.symbolic.checks): each mistake a
declaration can make gets a DeclarationError that names the layer and says what is wrong, from derivation() and from
``bnsym derive FILE.py:NAME``; the built-in layers pass every check."""

import textwrap

import pytest
import sympy

from bnsym.spec import BUILT_IN, LayerSpec, TrailingAxes, register, unregister
from bnsym.spec.layers import RMS_REGIMES
from bnsym.symbolic.checks import DeclarationError
from bnsym.symbolic.layers import LayerSymbols, derivation
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, M
from bnsym.tools.cli import main


def _rms_steps(s: LayerSymbols, x_hat=None):
    return [Definition(s.ms, BatchSum(s.x**2) / M), Definition(s.invrms, 1 / sympy.sqrt(s.ms + s.eps)),
            Definition(s.x_hat, s.x * s.invrms if x_hat is None else x_hat)]


def _scale_by_one_plus_gamma(s):
    """Gemma's forward pass, declared without saying that gamma = 0 means no scale."""
    return Program([s.x, s.gamma, s.eps], _rms_steps(s) + [Definition(s.y, (1 + s.gamma) * s.x_hat)], [s.y, s.invrms])


def _takes_beta(s):
    return Program([s.x, s.gamma, s.beta, s.eps], _rms_steps(s) + [Definition(s.y, s.gamma * s.x_hat + s.beta)],
                   [s.y, s.invrms])


def _gamma_one_value_per_group(s):
    gamma = sympy.Symbol("gamma", real=True)  # the grouping (trailing axes) places gamma per element
    return Program([s.x, gamma, s.eps], _rms_steps(s) + [Definition(s.y, gamma * s.x_hat)], [s.y, s.invrms])


def _statistic_independent_of_x(s):
    return Program([s.x, s.gamma, s.eps], [Definition(s.invrms, 1 / sympy.sqrt(s.eps)),
                                           Definition(s.x_hat, s.x * s.invrms), Definition(s.y, s.gamma * s.x_hat)],
                   [s.y, s.invrms])


def _y_without_gamma(s):
    return Program([s.x, s.gamma, s.eps], _rms_steps(s) + [Definition(s.y, s.x_hat)], [s.y, s.invrms])


def _unused_mean(s):
    return Program([s.x, s.gamma, s.eps], [Definition(s.mean, BatchSum(s.x) / M)] + _rms_steps(s)
                   + [Definition(s.y, s.gamma * s.x_hat)], [s.y, s.invrms])


def _returns_y_only(s):
    return Program([s.x, s.gamma, s.eps], _rms_steps(s) + [Definition(s.y, s.gamma * s.x_hat)], [s.y])


def _no_x_hat(s):
    return Program([s.x, s.gamma, s.eps], _rms_steps(s)[:2] + [Definition(s.y, s.gamma * s.x * s.invrms)],
                   [s.y, s.invrms])


def _x_hat_twice_too_large(s):
    return Program([s.x, s.gamma, s.eps], _rms_steps(s, x_hat=2 * s.x * s.invrms)
                   + [Definition(s.y, s.gamma * s.x_hat / 2)], [s.y, s.invrms])


def _not_a_program(s):
    return [s.y, s.invrms]


MISTAKES = {
    "a parameter whose placement is not declared": (_takes_beta, "takes beta, a parameter whose placement"),
    "a parameter placed otherwise than the grouping says": (_gamma_one_value_per_group,
                                                            "takes gamma as one value per group, but the grouping"),
    "an output that does not depend on the inputs": (_statistic_independent_of_x,
                                                     "the output invrms does not depend on the input x"),
    "y independent of a parameter": (_y_without_gamma, "y does not depend on the parameter gamma"),
    "a statistic that is never used": (_unused_mean, r"defines mean, which no output uses"),
    "outputs other than (y, *saved)": (_returns_y_only, r"returns \(y\), but the specification says its forward "
                                                        r"returns \(y, invrms\)"),
    "no x_hat": (_no_x_hat, "does not define x_hat"),
    "an x_hat that is not the normalised input": (_x_hat_twice_too_large, r"x = x_hat/invrms does not follow"),
    "a neutral value that is not neutral": (_scale_by_one_plus_gamma, r"with gamma = 1 \(what None stands for\) "
                                                                      "y is not x_hat"),
    "not a Program": (_not_a_program, "must return a bnsym.symbolic.program.Program, got list"),
}


def _spec(name, forward, **fields):
    return LayerSpec(name, "Test layer", "test layer", "rms", TrailingAxes(), eps=1e-6, regimes=RMS_REGIMES,
                     group="a row", statistics_over="the last axis", parameters_are="the normalised shape",
                     forward=forward, **fields)


@pytest.fixture
def registered():
    names = []

    def add(layer):
        names.append(register(layer).name)
        return layer

    yield add
    for name in names:
        unregister(name)


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_mistake_in_a_declaration_is_refused_with_what_is_wrong(registered, mistake):
    forward, message = MISTAKES[mistake]
    registered(_spec("test_declared", forward))
    with pytest.raises(DeclarationError, match="test_declared: the forward pass .*" + message):
        derivation("test_declared")


def test_the_same_forward_with_its_neutral_value_declared_is_derived(registered):
    """The neutral-value check can pass: with neutral={'gamma': 0}, Gemma's forward is a valid declaration."""
    registered(_spec("test_declared", _scale_by_one_plus_gamma, neutral={"gamma": 0}))
    program, closed = derivation("test_declared").backward
    assert [str(name) for name in program.outputs] == ["dx", "dgamma"]


def test_a_forward_named_by_module_and_function_is_found_and_a_missing_one_is_refused(registered):
    registered(_spec("test_named", "bnsym.layers.gemma_rms_norm:forward", neutral={"gamma": 0}))
    assert derivation("test_named").declaration.forward_source == "bnsym.layers.gemma_rms_norm.forward"
    registered(_spec("test_missing", "bnsym.layers.gemma_rms_norm:no_such_forward"))
    with pytest.raises(DeclarationError, match="test_missing: its forward pass .* cannot be found"):
        derivation("test_missing")


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_declaration_passes_the_checks(name):
    d = derivation(name)
    assert d.checked_forward is d.training_forward


_FILE = '''
import sympy

from bnsym.spec import LayerSpec, TrailingAxes
from bnsym.spec.layers import RMS_REGIMES


def forward(s):
    from bnsym.symbolic.program import Definition, Program
    from bnsym.symbolic.reduction import BatchSum, M

    return Program([s.x, s.gamma, s.eps], [
        Definition(s.ms, BatchSum(s.x**2) / M), Definition(s.invrms, 1 / sympy.sqrt(s.ms + s.eps)),
        Definition(s.x_hat, s.x * s.invrms), Definition(s.y, (1 + s.gamma) * s.x_hat)], [s.y, s.invrms])


OFFSET_RMS = LayerSpec("test_offset_rms", "Offset RMS normalisation", "offset RMS norm", "rms", TrailingAxes(),
                       eps=1e-6, regimes=RMS_REGIMES, group="a row", statistics_over="the trailing axes",
                       parameters_are="the normalised shape", kernels_package="offset_kernels",
                       forward=forward{neutral})
'''


def test_bnsym_derive_refuses_a_declaration_file_with_a_mistake_before_writing_anything(tmp_path, capsys):
    declaration = tmp_path / "offset_rms.py"
    declaration.write_text(textwrap.dedent(_FILE.format(neutral="")))
    out = tmp_path / "offset_kernels"
    try:
        assert main(["derive", f"{declaration}:OFFSET_RMS", "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert "bnsym derive: test_offset_rms: the forward pass offset_rms.py:forward" in error, error
        assert "LayerSpec.neutral" in error and not out.exists()
    finally:
        unregister("test_offset_rms")


def test_a_declaration_file_with_its_neutral_value_derives_and_names_its_forward_by_file(tmp_path):
    """The forward pass of a file loaded by path is named by the file's name in generated text, never its path."""
    declaration = tmp_path / "offset_rms.py"
    declaration.write_text(textwrap.dedent(_FILE.format(neutral=', neutral={"gamma": 0}')))
    from bnsym.spec.loading import load

    try:
        load(f"{declaration}:OFFSET_RMS")
        assert derivation("test_offset_rms").declaration.forward_source == "offset_rms.py:forward"
    finally:
        unregister("test_offset_rms")


# ----- field inputs and outputs (LayerSpec.field_inputs, field_outputs, normalises) -----

def _scaled_sum(s):
    """A made-up layer with a field input and a field output: u = x + 2 skip, normalised and returned."""
    return Program([s.x, s.skip, s.gamma, s.eps],
                   [Definition(s.u, s.x + 2 * s.skip), Definition(s.ms, BatchSum(s.u**2) / M),
                    Definition(s.invrms, 1 / sympy.sqrt(s.ms + s.eps)), Definition(s.x_hat, s.u * s.invrms),
                    Definition(s.y, s.gamma * s.x_hat)], [s.y, s.u, s.invrms])


def _field_output_ignores_skip(s):
    return Program([s.x, s.skip, s.gamma, s.eps],
                   [Definition(s.u, s.x + 0 * s.skip), Definition(s.ms, BatchSum(s.u**2) / M),
                    Definition(s.invrms, 1 / sympy.sqrt(s.ms + s.eps)), Definition(s.x_hat, s.u * s.invrms),
                    Definition(s.y, s.gamma * s.x_hat)], [s.y, s.u, s.invrms])


_FIELDS = {"field_inputs": ("skip",), "field_outputs": ("u",), "normalises": "u"}


def test_a_declaration_with_a_field_input_and_output_gets_a_gradient_for_each_input_from_each_upstream(registered):
    """The backward takes an upstream gradient per field output (dy, du) and returns one per field input and
    parameter (dx, dskip = 2 dx, dgamma), in the vocabulary of the normalised field u."""
    registered(_spec("test_fields", _scaled_sum, **_FIELDS))
    layer = derivation("test_fields")
    program, closed = layer.backward
    assert [str(name) for name in program.outputs] == ["dx", "dskip", "dgamma"]
    dx, dskip, _ = program.outputs
    assert sympy.simplify(closed[dskip] - 2 * closed[dx]) == 0, (closed[dx], closed[dskip])
    assert layer.symbols.field("du") in closed[dx].free_symbols, f"dx ignores the upstream gradient du: {closed[dx]}"
    assert not closed[dx].has(layer.symbols.x), f"dx is not written in x_hat: {closed[dx]}"


@pytest.mark.parametrize(("fields", "message"), [
    ({"field_inputs": ("gamma",)}, "the field names gamma are taken"),
    ({"field_outputs": ("u", "u")}, "the field names u are taken"),
    ({"field_outputs": ("u",), "normalises": "v"}, "normalises must be 'x' or one of field_outputs"),
    ({"field_inputs": "skip"}, "field_inputs must be a tuple of names"),
])
def test_field_names_that_cannot_work_are_refused_by_the_specification(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _spec("test_fields", _scaled_sum, **fields)


def test_a_field_output_that_does_not_depend_on_a_field_input_is_refused(registered):
    registered(_spec("test_fields", _field_output_ignores_skip, **_FIELDS))
    with pytest.raises(DeclarationError, match="the output y does not depend on the input skip"):
        derivation("test_fields")


# ----- mistakes found while deriving -----

def _beta_inside_the_scale(s):
    """A centred layer whose y is gamma * (x_hat + beta): valid forward, but dgamma = sum(dy (x_hat + beta)) needs
    beta, which no backward kernel takes."""
    return Program([s.x, s.gamma, s.beta, s.eps], [
        Definition(s.mean, BatchSum(s.x) / M), Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
        Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)), Definition(s.x_hat, (s.x - s.mean) * s.invstd),
        Definition(s.y, s.gamma * (s.x_hat + s.beta))], [s.y, s.mean, s.invstd])


def test_a_gradient_that_needs_beta_is_refused_naming_the_layer_and_the_fix(registered):
    """Deriving it used to fail deep in the engine ("definition of dgamma uses beta before it is defined"); a
    DeclarationError names the layer, the gradient and how to write y (`bnsym derive` prints it and exits 2)."""
    from bnsym.spec.layers import CENTRED_REGIMES

    layer = registered(LayerSpec("test_beta_inside", "Test layer", "test layer", "centred", TrailingAxes(), eps=1e-6,
                                 regimes=CENTRED_REGIMES, group="a row", statistics_over="the last axis",
                                 parameters_are="the normalised shape", forward=_beta_inside_the_scale))
    with pytest.raises(DeclarationError, match=r"test_beta_inside: the gradient dgamma depends on beta, .* "
                                               r"y = \(scale\) \* x_hat \+ beta"):
        _ = derivation(layer.name).double_backward
