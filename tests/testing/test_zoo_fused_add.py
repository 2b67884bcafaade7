"""The checker of fused residual add + RMS norm catches each planted bug of tests/testing/zoo_fused_add.py by the
properties named for it, through check_normalization and `bnsym check --layer fused_add_rms_norm` (exit 1, the
properties named in the report); the correct NumPy implementation passes in float16, float32 and float64, and so
does one that rounds h to x's dtype before normalising it (vLLM's order of operations); the properties that do not
apply to a layer with a field input and output (those that move x alone) do not run."""

import json
from pathlib import Path

import pytest

from bnsym.testing import CheckFailed, check_normalization, properties_of
from bnsym.tools.cli import main
from tests.budget import CORRECT_LAYER
from tests.testing.caught import assert_caught
from tests.testing.zoo_fused_add import BUGS, LAYER, FusedAddRMSNorm, RoundsHFirst

ZOO = Path(__file__).with_name("zoo_fused_add.py")


def test_every_bug_names_properties_of_the_layer():
    for bug in BUGS:
        assert bug.caught_by and set(bug.caught_by) <= set(properties_of(LAYER)), \
            f"{bug.name} names properties {LAYER} does not have"


def test_properties_that_move_x_alone_do_not_run():
    """Shifting, scaling or permuting x without the residual says nothing about y, which depends on h = x +
    residual; the properties that compare every input and output do run."""
    names = set(properties_of(LAYER))
    assert {"forward_reference", "backward_reference", "forward_derivative", "backward_finite_differences",
            "inputs_not_modified", "standardisation", "linearity_in_dy"} <= names
    assert not names & {"shift_invariance", "scale_covariance", "batch_permutation", "sample_independence",
                        "jacobian_symmetry", "dx_scales_with_gamma", "hessian_symmetry"}, names


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_planted_bug_is_caught_by_its_properties(bug):
    with pytest.raises(CheckFailed) as info:
        check_normalization(bug.impl(), layer=LAYER, dtype=bug.dtype, properties=list(bug.caught_by),
                            max_examples=20, order=bug.order)
    assert_caught(bug, info.value.report)


@pytest.mark.parametrize("bug", BUGS[:2], ids=lambda bug: bug.name)
def test_planted_bug_exits_1_on_the_command_line_naming_its_properties(bug, tmp_path, capsys):
    properties = [word for name in bug.caught_by for word in ("--property", name)]
    status = main(["check", f"{ZOO}:{bug.name}", "--layer", LAYER, "--dtype", bug.dtype, "--max-examples", "20",
                   "--save-dir", str(tmp_path), "--json", str(tmp_path / "result.json"), *properties])
    out = capsys.readouterr().out
    assert status == 1, out
    failed = [p["name"] for p in json.loads((tmp_path / "result.json").read_text())["properties"]
              if p["status"] == "failed"]
    assert set(bug.caught_by) <= set(failed), out
    saved = list(tmp_path.glob("*.npz"))
    assert saved, "no counterexample was saved"
    # The saved counterexample holds the residual and dh too, so it replays the failure.
    status = main(["check", f"{ZOO}:{bug.name}", "--layer", LAYER, "--replay", str(saved[0])])
    assert status == 1, capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("impl", [FusedAddRMSNorm, RoundsHFirst], ids=lambda impl: impl.__name__)
def test_correct_implementations_pass(impl, dtype):
    report = check_normalization(impl(), layer=LAYER, dtype=dtype, max_examples=CORRECT_LAYER)
    assert report.ok and not report.skipped, str(report)


def test_the_bug_classes_document_names_the_properties_that_catch_each_bug():
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "bug-classes.md").read_text()
    section = text[text.index("## Fused residual add + RMS norm"):]
    named = set(re.findall(r"`([a-z_0-9]+)`", section))
    for bug in BUGS:
        assert set(bug.caught_by) <= named, f"{bug.name}: {set(bug.caught_by) - named} missing from the document"


def test_order_2_checks_the_double_backward_of_every_input_and_output(capsys):
    """The double backward of the checker's protocol, double_backward(ggx, ggresidual, gggamma, dy, dh, x, residual,
    gamma, eps) -> (gx, gresidual, ggamma, gdy, gdh), against bnsym's reference and against central differences of
    the target's own backward (the torch target: autograd twice through the definition)."""
    status = main(["check", "torch", "--layer", LAYER, "--order", "2", "--dtype", "float64", "--max-examples",
                   str(CORRECT_LAYER), "--property", "double_backward_reference", "--property",
                   "double_backward_finite_differences"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "  PASS  double_backward_reference" in out and "  PASS  double_backward_finite_differences" in out, out
