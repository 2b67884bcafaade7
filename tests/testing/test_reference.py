"""The exact reference (mpmath on the derived expressions) agrees with the float64 generated code, and is exact
where float64 is not."""

import numpy as np
import pytest

from bnsym.testing import reference
from bnsym.testing.strategies import REGIMES, make_example


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("shape", [(2, 1), (3, 2), (1, 2, 4)], ids=str)
def test_exact_reference_matches_float64_reference(shape, regime):
    example = make_example(shape, regime, 1e-3, 11, "float64")
    y, dx, dgamma, dbeta = reference.exact(example)
    ref = reference.forward(example)
    dx64, dgamma64, dbeta64 = reference.backward(example)
    scale = np.abs(example.gamma).max() * ref.invstd.max() * np.abs(example.dy).max() + 1
    assert np.allclose(y, ref.y, rtol=1e-9, atol=1e-9 * (np.abs(ref.y).max() + 1))
    assert np.allclose(dx, dx64, rtol=0, atol=1e-9 * scale)
    assert np.allclose(dgamma, dgamma64, rtol=1e-9, atol=1e-9 * scale) and np.allclose(dbeta, dbeta64, rtol=1e-12)


def test_exact_reference_has_no_cancellation():
    """x = 1e8 + (0, 1): E[x^2] - E[x]^2 and even float64 centring lose digits; the exact value is +-1 (gamma 1)."""
    example = make_example((2, 1), "well-conditioned", 1e-5, 0, "float64")
    example = example.replace(x=np.array([[1e8], [1e8 + 1]]), gamma=np.ones(1), beta=np.zeros(1))
    y, _, _, _ = reference.exact(example)
    expected = 0.5 / np.sqrt(0.25 + 1e-5)
    np.testing.assert_allclose(y.ravel(), [-expected, expected], rtol=1e-15)


def test_exact_reference_refuses_large_groups():
    with pytest.raises(ValueError, match="M <= 4"):
        reference.exact(make_example((7, 1), "well-conditioned", 1e-3, 0))
