"""check_batchnorm as a pytest user meets it: built-in names, a report instead of the library's source on
failure, and reports that describe their inputs right (no channels, one example)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from bnsym.testing import check_batchnorm
from bnsym.testing.strategies import Example

ROOT = Path(__file__).resolve().parents[2]


def test_check_batchnorm_accepts_the_built_in_names():
    report = check_batchnorm("torch", properties=["forward_reference"], max_examples=3)
    assert report.implementation == "torch.nn.BatchNorm*d" and report.passed == ["forward_reference"]


def test_a_failing_check_in_pytest_shows_the_report_not_the_library_source(tmp_path):
    test = tmp_path / "test_mine.py"
    test.write_text(textwrap.dedent("""
        from bnsym.testing import check_batchnorm
        from tests.testing.zoo import EpsMissing

        def test_mine():
            check_batchnorm(EpsMissing(), properties=["standardisation"], max_examples=20)
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HYPOTHESIS_PROFILE": "ci"})
    assert result.returncode == 1, result.stdout
    assert "FAIL  standardisation" in result.stdout
    assert "implementation = load(impl)" not in result.stdout, "pytest showed check_batchnorm's own source"


def test_an_input_without_channels_is_described_as_such():
    x = np.zeros((2, 0))
    example = Example(x, np.zeros(0), np.zeros(0), 1e-5, x, "well-conditioned")
    assert example.count == 2
    assert "no channels: C = 0" in example.describe()


def test_the_counterexample_line_names_gamma_and_beta_with_their_zeros():
    x = np.array([[1.0, 2.0], [3.0, 5.0]])
    example = Example(x, np.array([0.0, 1.5]), np.array([-1.0, 2.0]), 1e-3, x, "tiny batch")
    line = example.describe()
    assert "in [1, 5]" in line and "gamma [0, 1.5] (1 of 2 zero)" in line and "beta [-1, 2]" in line
