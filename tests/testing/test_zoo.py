"""The checker is tested as hard as the code: every planted bug is caught, by the properties named for it, and the
correct implementations pass in float32 and float64 (float16 too: it is how the float16 bug is exposed)."""

import numpy as np
import pytest

from bnsym.testing import PROPERTIES, CheckFailed, check_batchnorm
from tests import budget
from tests.testing.caught import assert_caught
from tests.testing.known_defects import assert_only_torch_float16_eps_failures
from tests.testing.zoo import BUGS, CORRECT, ForwardOnly

BUG_CLASSES = {  # bug classes that concern training forward/backward: each needs a planted bug
    "variance as E[x^2] - E[x]^2", "slightly negative variance -> NaN", "float16 sum of squares overflows",
    "eps outside the sqrt", "sqrt(max(var, eps))", "eps missing", "unbiased variance used to normalise",
    "statistics over the wrong axes (per sample)", "statistics over the wrong axes (NHWC vs NCHW)",
    "dx missing the mean term", "dx missing the variance term", "dgamma computed from x",
    "dgamma computed from x - mean", "gamma missing from dx", "gamma applied twice", "gradients not linear in dy",
    "one value per channel", "float64 input silently computed in float32",
    "float64 gradients returned for float32 input",
}


def test_fused_form_with_one_value_per_channel_is_no_false_alarm():
    """The fused x * k + (beta - mean * k) returns beta with an error of about u |x gamma| / sqrt(eps) when M = 1;
    the bound of one_value_per_channel is derived like the others and allows it (float32 failed here once)."""
    from tests.testing.zoo import FusedForm

    x = np.array([[3000.0, -2500.0]], np.float32)
    y = FusedForm().forward(x, np.array([1.7, -2.1], np.float32), np.array([0.3, 1.2], np.float32), 1e-5)
    assert not np.array_equal(y, np.array([[0.3, 1.2]], np.float32)), "the example no longer shows the rounding"
    check_batchnorm(FusedForm(), dtype="float32", properties=["one_value_per_channel"], max_examples=100)


def test_an_implementation_computing_in_float32_gets_one_note_in_a_float32_run():
    """Keras on its JAX and torch backends computes in float32 whatever it is given: in a float32 run its float32
    gradients are right, so the run passes, and the report notes once that float64 is not computed in float64
    instead of failing the finite-difference properties."""
    from tests.testing.zoo import Float32Always

    report = check_batchnorm(Float32Always(), dtype="float32", max_examples=20)
    assert report.noted == ["float64_arithmetic"] and not report.failed, str(report)
    skipped = {r.name: r.reason for r in report.results if r.status == "skipped"}
    assert set(skipped) == {"forward_derivative", "backward_finite_differences"}
    assert all("float64_arithmetic" in reason for reason in skipped.values())
    assert "float64 input is not computed in float64" in str(report)


def test_zoo_covers_every_bug_class():
    assert len(BUGS) >= 15
    assert BUG_CLASSES <= {bug.bug_class for bug in BUGS}, BUG_CLASSES - {bug.bug_class for bug in BUGS}
    for bug in BUGS:
        assert set(bug.caught_by) <= set(PROPERTIES), f"{bug.name} names unknown properties"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_planted_bug_is_caught_by_its_properties(bug):
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(bug.impl(), dtype=bug.dtype, properties=list(bug.caught_by))
    assert_caught(bug, info.value.report)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_implementation_passes(name, dtype):
    try:
        report = check_batchnorm(CORRECT[name](), dtype=dtype,
                                 max_examples=budget.CORRECT_FLOAT16 if dtype == "float16" else budget.CORRECT)
    except CheckFailed as failure:
        if (name, dtype) != ("torch", "float16"):
            raise
        assert_only_torch_float16_eps_failures(failure.report, "batch_norm")  # PyTorch rounds eps to float16
        return
    assert not report.skipped, f"{name} offers forward and backward, yet {report.skipped} were skipped"


def test_forward_only_implementation_runs_forward_properties_and_skips_the_rest():
    report = check_batchnorm(ForwardOnly(), dtype="float32", max_examples=10)
    assert "forward_derivative" in report.passed
    assert "backward_reference" in report.skipped
    skipped = [r for r in report.results if r.status == "skipped"]
    assert all("needs backward" in r.reason for r in skipped), [r.reason for r in skipped]
