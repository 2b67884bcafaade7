"""Comparisons of a result with its reference that say what differed and by how much."""

import numpy as np


def assert_relatively_close(actual, expected, what, rtol=1e-12):
    """``actual`` has ``expected``'s shape and differs from it by at most ``rtol`` times its largest magnitude (one
    scale for the whole array, so that an element near zero is judged against the array's size, not its own)."""
    expected = np.asarray(expected)
    assert np.shape(actual) == expected.shape, f"{what}: shape {np.shape(actual)}, expected {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    error = float(np.max(np.abs(np.asarray(actual) - expected))) / scale
    assert error <= rtol, f"{what}: relative difference {error:.2e} from the reference (allowed {rtol:.0e})"
