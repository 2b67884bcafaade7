"""Batch renormalisation's zoo (tests/testing/zoo_batch_renorm.py): the correct NumPy implementation passes every
property of the layer, the torch target from its definition passes in every dtype (test_variant_targets.py), and
each planted bug is caught by the properties named for it."""

from pathlib import Path

import pytest

from bnsym.testing import CheckFailed, check_normalization
from bnsym.tools.cli import main
from tests.testing.zoo_batch_renorm import BUGS, TwoPassRenorm


def test_the_correct_two_pass_passes_every_property_with_its_running_statistics():
    report = check_normalization(TwoPassRenorm(), layer="batch_renorm", dtype="float64", max_examples=10,
                                 convention="keras")
    assert not report.failed, str(report)
    assert "running_stats_read_and_updated" in report.passed, str(report)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_correct_two_pass_passes_the_eval_mode_properties(dtype):
    """Eval mode (y = gamma (x - running_mean) / running_std + beta) is checked by the same properties as batch
    norm's, against the layer's derived eval mode: forward, backward, finite differences, sample independence."""
    report = check_normalization(TwoPassRenorm(), layer="batch_renorm", dtype=dtype, max_examples=10, mode="eval")
    assert not report.failed, str(report)
    expected = {"eval_shapes_and_dtypes", "eval_forward_reference", "eval_backward_reference",
                "eval_leaves_running_stats_unchanged", "eval_sample_independence",
                "eval_is_training_at_batch_statistics"}
    if dtype == "float64":
        expected.add("eval_backward_finite_differences")
    assert expected <= set(report.passed), str(report)


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_planted_bug_is_caught_by_its_properties(bug):
    with pytest.raises(CheckFailed) as info:
        check_normalization(bug.impl(), layer="batch_renorm", dtype="float64", properties=list(bug.caught_by),
                            max_examples=20, convention=bug.convention, mode=bug.mode)
    missed = set(bug.caught_by) - set(info.value.report.failed)
    assert not missed, f"{bug.name} was not caught by {sorted(missed)}:\n{info.value.report}"


def test_a_planted_bug_exits_1_on_the_command_line_and_its_counterexample_replays_with_its_running_statistics(
        tmp_path, capsys):
    """The command line names the property, and the saved counterexample keeps the running statistics and scalar
    options it was drawn with: replayed, the bug fails again and the correct implementation passes."""
    zoo = str(Path(__file__).with_name("zoo_batch_renorm.py"))
    status = main(["check", f"{zoo}:RClippedFromZero", "--layer", "batch_renorm", "--max-examples", "20",
                   "--property", "forward_reference", "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1 and "  FAIL  forward_reference" in out and "running_std [" in out, out
    (saved,) = tmp_path.glob("*.npz")
    assert main(["check", f"{zoo}:RClippedFromZero", "--replay", str(saved)]) == 1
    assert main(["check", f"{zoo}:TwoPassRenorm", "--replay", str(saved)]) == 0
