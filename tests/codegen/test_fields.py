"""The generic rewriting of bnsym.codegen.fields: exact regrouping only, centred differences kept whole."""

import sympy

from bnsym.codegen.fields import coefficient_form, common_factor, inline_field_steps
from bnsym.symbolic.reduction import BatchSum, Field

x, dy = Field("x", real=True), Field("dy", real=True)
a, b, mean = sympy.symbols("a b mean", real=True)


def test_coefficient_form_keeps_a_centred_difference_whole():
    expr = a * dy + b * (x - mean) + a * b
    atoms = {}
    form = coefficient_form(expr, atoms, {"x", "dy", "a", "b", "mean"})
    assert list(atoms) == [x - mean], "x - mean must be one atom, never b*x - b*mean"
    centred = atoms[x - mean]
    assert dict(form.terms) == {dy: a, centred: b}
    assert form.constant == a * b
    total = sum(c * m for m, c in form.terms) + form.constant
    assert sympy.expand(total.xreplace({centred: x - mean}) - expr) == 0


def test_terms_with_the_same_monomial_are_grouped():
    form = coefficient_form(a * dy + b * dy + a, {}, {"x", "dy", "a", "b"})
    assert form.terms == ((dy, a + b),)


def test_field_steps_are_inlined_and_reductions_pull_their_scalars_out():
    x_hat = Field("x_hat", real=True)
    steps = [(x_hat, a * (x - mean))]
    scalars, outputs = inline_field_steps(steps, [(b, BatchSum(dy * x_hat))])
    assert scalars == []
    assert outputs == [(b, a * BatchSum(dy * (x - mean)))]


def test_common_factor_takes_the_smallest_power():
    assert common_factor([a * b, -a**3 * b / 7, a**2]) == a
    assert common_factor([a, b]) == 1
