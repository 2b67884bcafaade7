"""What `bnsym derive` shows: the derived equations and finite-difference checks of every layer's generated code."""

import pytest

from bnsym.symbolic.layers import LAYERS
from bnsym.tools.report import derivation_summary, finite_difference_checks


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


def test_a_shared_parameters_gradient_is_printed_with_its_sum_over_the_groups():
    """Layer norm's dgamma is dy*x_hat per group, summed over the rows that share gamma: printed bare, it reads as
    an elementwise gradient. Batch norm's (one group per parameter) stays as derived."""
    text = derivation_summary()
    sections = {name: text[text.index(f"{d.title} (derivations"):] for name, d in LAYERS.items()}
    layer_norm = sections["layer_norm"][:sections["layer_norm"].index("forward mode")]
    assert "dgamma = sum over the groups sharing gamma of (dy*x_hat)" in layer_norm, layer_norm
    assert "dbeta = sum over the groups sharing beta of (dy)" in layer_norm, layer_norm
    assert "\n    dgamma = dy*x_hat\n" not in text, "a shared parameter's gradient is printed without its sum"
    batch_norm = sections["batch_norm"][:sections["batch_norm"].index("forward mode")]
    assert "dgamma = BatchSum(dy*x_hat)" in batch_norm and "sum over the groups" not in batch_norm, batch_norm
