"""float64_arithmetic says what happened, and fails only the runs it concerns.

A float64 formula bug (eps outside the square root, sqrt(max(var, eps)), eps rounded to float32) is reported by the
properties that fail, with the finite-difference properties run, never as "float64 input is not computed in
float64". An implementation that computes float64 input in float32 is a note in a float32 (float16) run, which
exits 0, and a failure in a float64 run, which exits 1."""

import json

import numpy as np
import pytest

from bnsym.testing import CheckFailed, check_batchnorm, check_normalization
from bnsym.testing.arithmetic import nudged, shorter_arithmetic
from bnsym.tools.cli import main
from tests.testing import zoo, zoo_family
from tests.testing.test_zoo_family import ZOO as FAMILY_ZOO

ZOO = FAMILY_ZOO.with_name("zoo.py")
DIFFERENCES = {"forward_derivative", "backward_finite_differences"}


def test_shorter_arithmetic_tells_float32_values_from_a_float64_formula_bug():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 64))
    gamma = rng.normal(size=64)

    def exact(x):
        return gamma * (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)

    def eps_outside(x):  # float64 arithmetic, wrong formula
        return gamma * (x - x.mean(1, keepdims=True)) / (np.sqrt(x.var(1, keepdims=True)) + 1e-5)

    def statistics_in_float32(x):  # float32 x_hat, gamma applied in float64: not representable in float32
        x32 = x.astype(np.float32)
        x_hat = (x32 - x32.mean(1, keepdims=True)) / np.sqrt(x32.var(1, keepdims=True) + np.float32(1e-5))
        return gamma * x_hat.astype(np.float64)

    moved = nudged(x, np.random.default_rng(0))
    assert shorter_arithmetic(eps_outside(x), eps_outside(moved), exact(x), exact(moved)) == "", \
        "a float64 formula bug was taken for float32 arithmetic"
    cast = exact(x).astype(np.float32).astype(np.float64)
    assert "representable in float32" in shorter_arithmetic(cast, exact(moved).astype(np.float32), exact(x),
                                                            exact(moved)), "a float32 result cast back was missed"
    assert "did not move" in shorter_arithmetic(statistics_in_float32(x), statistics_in_float32(moved), exact(x),
                                                exact(moved)), "float32 statistics under float64 gamma were missed"
    with pytest.raises(ValueError, match="one shape"):
        shorter_arithmetic(exact(x), exact(x)[:2], exact(x), exact(x))


BATCH_NORM_FORMULA_BUGS = [zoo.EpsOutsideSqrt, zoo.MaxVarEps, zoo.EpsInFloat32]
FAMILY_FORMULA_BUGS = [zoo_family.LayerNormEpsOutsideSqrt, zoo_family.LayerNormMaxVarEps,
                       zoo_family.LayerNormEpsInFloat32]


@pytest.mark.parametrize("bug", BATCH_NORM_FORMULA_BUGS + FAMILY_FORMULA_BUGS, ids=lambda bug: bug.__name__)
def test_a_float64_formula_bug_is_reported_by_what_fails_with_the_finite_differences_run(bug):
    layer = "batch_norm" if bug in BATCH_NORM_FORMULA_BUGS else "layer_norm"
    with pytest.raises(CheckFailed) as info:
        check_normalization(bug(), layer=layer, dtype="float64", max_examples=20,
                            properties=["float64_arithmetic", "forward_reference", *sorted(DIFFERENCES)])
    report = info.value.report
    assert "forward_reference" in report.failed, f"{bug.__name__}'s wrong y was not reported:\n{report}"
    assert "float64_arithmetic" in report.passed, f"{bug.__name__} was taken for float32 arithmetic:\n{report}"
    assert not DIFFERENCES & set(report.skipped), f"the finite differences were skipped:\n{report}"
    assert "not computed in float64" not in str(report), str(report)


SHORTER = [("batch_norm", "Float32Always", ZOO), ("batch_norm", "StatisticsInFloat32", ZOO),
           ("layer_norm", "LayerNormInFloat32", FAMILY_ZOO), ("rms_norm", "RMSNormStatisticsInFloat32", FAMILY_ZOO)]


@pytest.mark.parametrize("layer, name, path", SHORTER, ids=[name for _, name, _ in SHORTER])
def test_float32_arithmetic_is_a_note_in_a_float32_run_and_a_failure_in_a_float64_run(layer, name, path, tmp_path,
                                                                                      capsys):
    selected = ["--property", "float64_arithmetic", "--property", "forward_reference", "--property",
                "forward_derivative"]
    common = ["check", f"{path}:{name}", "--layer", layer, "--max-examples", "10", "--save-dir", str(tmp_path)]
    status = main([*common, "--dtype", "float32", *selected, "--json", str(tmp_path / "float32.json")])
    out = capsys.readouterr().out
    assert status == 0, f"a float32 run of a right float32 computation exited {status}:\n{out}"
    assert "  NOTE  float64_arithmetic" in out and "float64 input is not computed in float64" in out, out
    result = json.loads((tmp_path / "float32.json").read_text())
    assert [note["name"] for note in result["notes"]] == ["float64_arithmetic"], result["notes"]
    statuses = {p["name"]: p["status"] for p in result["properties"]}
    assert statuses["float64_arithmetic"] == "noted" and statuses["forward_derivative"] == "skipped", statuses
    assert not list(tmp_path.glob("*.npz")), "a note saved a counterexample file, as if the run had failed"

    status = main([*common, "--dtype", "float64", *selected])
    out = capsys.readouterr().out
    assert status == 1, f"a float64 run of a float32 computation exited {status}:\n{out}"
    assert "  FAIL  " in out and "float64_arithmetic" in out and "NOTE" not in out, out


def test_check_batchnorm_returns_the_report_with_its_note():
    report = check_batchnorm(zoo.Float32Always(), dtype="float16", max_examples=5,
                             properties=["float64_arithmetic", "forward_reference"])
    assert report.noted == ["float64_arithmetic"] and report.exit_status == 0, str(report)
