"""What `bnsym derive` shows: the derived equations and finite-difference checks of every layer's generated code."""

import pytest

from bnsym.report import derivation_summary, finite_difference_checks
from bnsym.symbolic.layers import LAYERS


@pytest.mark.parametrize("name", LAYERS)
def test_generated_derivatives_agree_with_finite_differences(name):
    errors = finite_difference_checks(name, seed=3)
    assert set(errors) == {"backward", "jvp", "double backward"}
    for what, error in errors.items():
        assert error < 1e-6, f"the generated {name} {what} is off by {error:.1e} relative to central differences"


def test_summary_shows_the_equations_and_the_checks():
    text = derivation_summary()
    assert "dx = gamma*invstd*(dy - x_hat*BatchSum(dy*x_hat)/M - BatchSum(dy)/M)" in text
    for name, declaration in LAYERS.items():
        assert f"{declaration.title} (derivations/{name}.md" in text
    assert "MISMATCH" not in text and text.count(" ok") == 3 * len(LAYERS), text
