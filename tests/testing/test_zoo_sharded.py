"""The sharded check catches every planted SyncBN bug by name and passes correct data-parallel batch norms in float32
and float64; the strategies split batches the way the bugs need; reports say what was skipped and why."""

import numpy as np
import pytest
from hypothesis import given, settings

from bnsym.testing.sharded import (
    SHARDED,
    ShardedCheckFailed,
    check_sharded,
    sharded_examples,
)
from bnsym.tools.cli import main
from tests.testing.zoo_sharded import BUGS, CORRECT, EqualShardsOnly, Unavailable

SYNCBN_BUG_CLASSES = {  # the rows of docs/bug-classes.md on data-parallel batch norm
    "unweighted mean of per-worker means", "mean of per-worker variances", "local count in Bessel's correction",
    "backward without the all-reduce of sum(dy) and sum(dy * xhat)", "gamma/beta gradients reduced twice",
}
SHARDS = 3


def test_zoo_covers_the_syncbn_bug_classes():
    assert SYNCBN_BUG_CLASSES <= {bug.bug_class for bug in BUGS}
    for bug in BUGS:
        assert set(bug.caught_by) <= set(SHARDED), f"{bug.name} names unknown properties"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_sharded_bug_is_caught_by_its_properties(bug):
    with pytest.raises(ShardedCheckFailed) as info:
        check_sharded(bug.impl(), shards=SHARDS, properties=list(bug.caught_by), convention=bug.convention,
                      max_examples=40)
    report = info.value.report
    missed = set(bug.caught_by) - set(report.failed)
    assert not missed, f"{bug.name} ({bug.bug_class}) was not caught by {sorted(missed)}:\n{report}"
    for result in report.results:
        assert result.counterexample is not None, f"{result.name} failed without a counterexample"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_sharded_bug_exits_1_naming_the_property(bug, tmp_path, capsys):
    options = ["--convention", bug.convention] if bug.convention else []
    code = main(["check", f"tests/testing/zoo_sharded.py:{bug.impl.__name__}", "--shards", str(SHARDS),
                 "--max-examples", "30", "--save-dir", str(tmp_path), "--property", bug.caught_by[0], *options])
    out = capsys.readouterr().out
    assert code == 1, f"{bug.name}: exit {code}\n{out}"
    assert f"FAIL  {bug.caught_by[0]}" in out, out
    saved = list(tmp_path.glob("*.npz"))
    assert len(saved) == 1, out
    code = main(["check", f"tests/testing/zoo_sharded.py:{bug.impl.__name__}", "--shards", str(SHARDS),
                 "--replay", str(saved[0])])
    assert code == 1, f"{bug.name}: the saved counterexample does not fail again\n{capsys.readouterr().out}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_sharded_implementation_passes(name, dtype):
    report = check_sharded(CORRECT[name](), shards=SHARDS, dtype=dtype, convention="torch", max_examples=40)
    assert not report.skipped and len(report.passed) == len(SHARDED), str(report)


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_any_number_of_shards(shards):
    check_sharded(CORRECT["two_rounds"](), shards=shards, max_examples=15)


def test_cumulative_average_with_the_global_count():
    check_sharded(CORRECT["two_rounds"](), shards=SHARDS, convention="cumulative", max_examples=20,
                  properties="sharded_running_statistics")


def test_a_convention_the_implementation_does_not_follow_fails():
    with pytest.raises(ShardedCheckFailed):
        check_sharded(CORRECT["two_rounds"](), shards=SHARDS, convention="flax", max_examples=20,
                      properties="sharded_running_statistics")


def test_an_implementation_of_equal_shards_gets_equal_shards():
    report = check_sharded(EqualShardsOnly(), shards=SHARDS, max_examples=20)
    assert "equal shards" in str(report)


def test_an_unavailable_implementation_is_skipped_with_its_reason():
    """Nothing checked is not a pass: check_sharded raises, and the report says why each property was skipped."""
    with pytest.raises(ShardedCheckFailed) as raised:
        check_sharded(Unavailable(), shards=SHARDS, max_examples=5)
    report = raised.value.report
    assert report.passed == [] and report.failed == [] and report.exit_status == 5
    assert "nothing was checked" in str(report)
    assert {r.reason for r in report.results} == {"needs a GPU (this is a test)"}


def test_running_statistics_need_a_convention():
    report = check_sharded(CORRECT["two_rounds"](), shards=SHARDS, max_examples=5)
    assert "sharded_running_statistics" not in report.passed + report.skipped
    with pytest.raises(ShardedCheckFailed) as raised:  # named alone without a convention: nothing is checked
        check_sharded(CORRECT["two_rounds"](), shards=SHARDS, max_examples=5,
                      properties=["sharded_running_statistics"])
    assert raised.value.report.skipped == ["sharded_running_statistics"]


@settings(max_examples=200)
@given(sharded_examples(shards=SHARDS))
def test_sharded_examples_split_the_whole_batch(ex):
    assert len(ex.sizes) == SHARDS and min(ex.sizes) >= 0
    assert sum(ex.sizes) == ex.example.x.shape[0]
    assert ex.example.count >= 2
    parts = ex.split(ex.example.x)
    np.testing.assert_array_equal(np.concatenate(parts), ex.example.x)


def test_sharded_examples_include_single_sample_and_empty_shards_and_different_means():
    seen = {"empty": False, "single": False, "different means": False}

    @settings(max_examples=300, database=None)
    @given(sharded_examples(shards=SHARDS))
    def look(ex):
        seen["empty"] |= 0 in ex.sizes
        seen["single"] |= 1 in ex.sizes
        seen["different means"] |= ex.example.regime == "shards with different means"

    look()
    assert all(seen.values()), seen


@settings(max_examples=50)
@given(sharded_examples(shards=SHARDS, equal_shards=True))
def test_equal_shards_are_equal(ex):
    assert len(set(ex.sizes)) == 1 and ex.sizes[0] >= 1


def test_sharded_property_names_need_shards(capsys):
    assert main(["check", "tests/testing/zoo_sharded.py:TwoRounds", "--property", "sharded_forward_reference"]) == 2
    assert "runs with --shards" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "eval"], "training forward and backward"),
    (["--order", "2"], "training forward and backward"),
    (["--property", "forward_reference"], "with --shards the properties are"),
], ids=["eval", "order-2", "unsharded-property"])
def test_shards_usage_errors(arguments, message, capsys):
    assert main(["check", "tests/testing/zoo_sharded.py:TwoRounds", "--shards", "2", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_target_without_the_sharded_protocol_is_a_usage_error(capsys):
    assert main(["check", "tests/testing/zoo.py:TwoPass", "--shards", "2"]) == 2
    assert "sharded_forward" in capsys.readouterr().err
    assert main(["check", "torch", "--shards", "2"]) == 2
    assert "torch-sync" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    ({"shards": 0}, "shards must be a positive integer"),
    ({"shards": 2, "dtype": "int32"}, "dtype must be one of"),
    ({"shards": 2, "dtype": None}, "dtype must be one of"),
    ({"shards": 2, "max_examples": 0}, "max_examples must be a positive integer"),
    ({"shards": 2, "seed": -1}, "seed must be a non-negative integer"),
    ({"shards": 2, "convention": "caffe"}, "convention must be one of"),
    ({"shards": 2, "properties": ["forward_reference"]}, "unknown sharded properties"),
], ids=["shards", "dtype", "dtype-none", "examples", "seed", "convention", "property"])
def test_check_sharded_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sharded(CORRECT["two_rounds"](), **kwargs)
