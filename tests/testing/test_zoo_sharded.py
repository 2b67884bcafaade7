"""The sharded mode of the check catches every planted SyncBN bug by name and passes correct data-parallel batch norms
in float32 and float64; it is a mode of the one checker (the same runner, report, replay, JSON and isolation), and
every option it cannot honour is a usage error that says why; the strategies split batches the way the bugs need;
reports say what was skipped and why."""

import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings

from bnsym.testing import CheckFailed, CheckOptions, NothingChecked, check_batchnorm
from bnsym.testing.runner import properties_of_run
from bnsym.testing.sharded import DIFFERENT_MEANS, sharded_examples
from bnsym.tools.cli import main
from tests import budget
from tests.testing.zoo_sharded import BUGS, CORRECT, EqualShardsOnly, Unavailable

SYNCBN_BUG_CLASSES = {  # the rows of docs/bug-classes.md on data-parallel batch norm
    "unweighted mean of per-worker means", "mean of per-worker variances", "local count in Bessel's correction",
    "backward without the all-reduce of sum(dy) and sum(dy * xhat)", "gamma/beta gradients reduced twice",
    "a training step normalised with the running statistics", "the caller's dy shards centred in place",
}
SHARDS = 3
ZOO = "tests/testing/zoo_sharded.py"
#: Every sharded property (those of a run with a convention: all of them).
SHARDED = tuple(properties_of_run(CheckOptions(shards=SHARDS, convention="torch")))
BUGS_BY_NAME = {bug.name: bug for bug in BUGS}


def test_zoo_covers_the_syncbn_bug_classes():
    assert SYNCBN_BUG_CLASSES <= {bug.bug_class for bug in BUGS}
    for bug in BUGS:
        assert set(bug.caught_by) <= set(SHARDED), f"{bug.name} names unknown properties"


def test_the_sharded_properties_are_properties_of_the_one_registry_for_the_layers_that_span_samples():
    from bnsym.spec import spec
    from bnsym.testing import LAYERS, properties_of

    for layer in LAYERS:
        if spec(layer).grouping.per_sample:
            assert not set(SHARDED) & set(properties_of(layer)), f"{layer} has sharded properties"
        else:
            assert set(SHARDED) <= set(properties_of(layer)), f"{layer} lacks sharded properties"
    assert not set(SHARDED) & set(properties_of_run(CheckOptions(convention="torch"))), \
        "an unsharded run would call the sharded protocol"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_sharded_bug_is_caught_by_its_properties(bug):
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(bug.impl(), shards=SHARDS, properties=list(bug.caught_by), convention=bug.convention,
                        max_examples=budget.SHARDED_BUG)
    report = info.value.report
    missed = set(bug.caught_by) - set(report.failed)
    assert not missed, f"{bug.name} ({bug.bug_class}) was not caught by {sorted(missed)}:\n{report}"
    for result in report.results:
        assert result.counterexample is not None, f"{result.name} failed without a counterexample"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_sharded_bug_exits_1_naming_the_property(bug, tmp_path, capsys):
    options = ["--convention", bug.convention] if bug.convention else []
    code = main(["check", f"{ZOO}:{bug.impl.__name__}", "--shards", str(SHARDS), "--max-examples", "30",
                 "--save-dir", str(tmp_path), "--property", bug.caught_by[0], *options])
    out = capsys.readouterr().out
    assert code == 1, f"{bug.name}: exit {code}\n{out}"
    assert f"FAIL  {bug.caught_by[0]}" in out, out
    assert "split into 3 shards of" in out, f"the counterexample does not show its split:\n{out}"
    saved = list(tmp_path.glob("*.npz"))
    assert len(saved) == 1, out
    code = main(["check", f"{ZOO}:{bug.impl.__name__}", "--shards", str(SHARDS), "--replay", str(saved[0])])
    assert code == 1, f"{bug.name}: the saved counterexample does not fail again\n{capsys.readouterr().out}"


def test_the_new_properties_name_what_went_wrong():
    """The two properties the unsharded check had and the sharded one lacked: the ys of a training step against the
    whole batch, and inputs left alone. Each failure says what happened, with the shard and the element."""
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(BUGS_BY_NAME["train_step_with_running_statistics"].impl(), shards=SHARDS, convention="torch",
                        properties="sharded_train_forward_batch_statistics", max_examples=40)
    failure = str(info.value.report.results[0].counterexample.failure)
    assert "y from sharded_train_forward is wrong in shard" in failure, failure
    assert "normalised with the running statistics it was given" in failure, failure
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(BUGS_BY_NAME["centres_dy_in_place"].impl(), shards=SHARDS,
                        properties="sharded_inputs_not_modified", max_examples=40)
    failure = str(info.value.report.results[0].counterexample.failure)
    assert "sharded_backward modified its argument dys[" in failure and "in place" in failure, failure


def test_a_replay_needs_no_shards_option_the_file_has_its_split(tmp_path, capsys):
    target = f"{ZOO}:UnweightedMeanOfMeans"
    assert main(["check", target, "--shards", "3", "--property", "sharded_forward_reference", "--save-dir",
                 str(tmp_path)]) == 1
    (saved,) = tmp_path.glob("*.npz")
    out = capsys.readouterr().out
    assert f"replay one: bnsym check {target} --replay {saved}" in out, out
    assert main(["check", target, "--replay", str(saved)]) == 1
    assert "FAIL  sharded_forward_reference" in capsys.readouterr().out
    assert main(["check", target, "--shards", "2", "--replay", str(saved)]) == 2
    assert "--shards 2 (the file's is 3)" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_sharded_implementation_passes(name, dtype):
    report = check_batchnorm(CORRECT[name](), shards=SHARDS, dtype=dtype, convention="torch",
                             max_examples=budget.CORRECT_SHARDED)
    assert not report.skipped and report.passed == list(SHARDED), str(report)


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_any_number_of_shards(shards):
    check_batchnorm(CORRECT["two_rounds"](), shards=shards, max_examples=15)


def test_cumulative_average_with_the_global_count():
    check_batchnorm(CORRECT["two_rounds"](), shards=SHARDS, convention="cumulative", max_examples=20,
                    properties="sharded_running_statistics")


def test_a_convention_the_implementation_does_not_follow_fails():
    with pytest.raises(CheckFailed):
        check_batchnorm(CORRECT["two_rounds"](), shards=SHARDS, convention="flax", max_examples=20,
                        properties="sharded_running_statistics")


def test_an_implementation_of_equal_shards_gets_equal_shards():
    report = check_batchnorm(EqualShardsOnly(), shards=SHARDS, max_examples=20)
    assert "equal shards (the implementation takes no others)" in str(report), str(report)
    assert report.to_dict()["options"]["equal_shards"] is True


def test_an_unavailable_implementation_is_skipped_with_its_reason():
    """Nothing checked is not a pass: the check raises, and the report says why each property was skipped."""
    with pytest.raises(NothingChecked) as raised:
        check_batchnorm(Unavailable(), shards=SHARDS, max_examples=5)
    report = raised.value.report
    assert report.passed == [] and report.failed == [] and report.exit_status == 5
    assert "nothing was checked" in str(report)
    assert {r.reason for r in report.results} == {"needs a GPU (this is a test)"}


def test_the_training_step_properties_need_a_convention():
    report = check_batchnorm(CORRECT["two_rounds"](), shards=SHARDS, max_examples=5)
    with_convention = {"sharded_running_statistics", "sharded_train_forward_batch_statistics"}
    assert not with_convention & set(report.passed + report.skipped), str(report)
    assert set(report.not_selected) == with_convention, report.not_selected
    with pytest.raises(NothingChecked) as raised:  # named alone without a convention: nothing is checked
        check_batchnorm(CORRECT["two_rounds"](), shards=SHARDS, max_examples=5,
                        properties=["sharded_running_statistics"])
    (result,) = raised.value.report.results
    assert result.status == "skipped" and result.reason == "runs with --shards K --convention", result


@settings(max_examples=200)
@given(sharded_examples(shards=SHARDS))
def test_sharded_examples_split_the_whole_batch(ex):
    assert len(ex.sizes) == SHARDS and min(ex.sizes) >= 0
    assert sum(ex.sizes) == ex.x.shape[0]
    assert ex.count >= 2
    parts = ex.split(ex.x)
    np.testing.assert_array_equal(np.concatenate(parts), ex.x)
    assert ex.replace(regime="well-conditioned").sizes == ex.sizes


def test_sharded_examples_include_single_sample_and_empty_shards_and_different_means():
    seen = {"empty": False, "single": False, "different means": False}

    @settings(max_examples=300, database=None)
    @given(sharded_examples(shards=SHARDS))
    def look(ex):
        seen["empty"] |= 0 in ex.sizes
        seen["single"] |= 1 in ex.sizes
        seen["different means"] |= ex.regime == DIFFERENT_MEANS

    look()
    assert all(seen.values()), seen


@settings(max_examples=50)
@given(sharded_examples(shards=SHARDS, equal_shards=True))
def test_equal_shards_are_equal(ex):
    assert len(set(ex.sizes)) == 1 and ex.sizes[0] >= 1


# ----- one checker: JSON, plot, isolation, regimes, listing -----

def test_shards_json_and_isolate_write_the_json_and_isolate(tmp_path, capsys):
    """`--shards 3 --json out.json --isolate`: the implementation runs in a child process (a write into the caller's
    dy shards crosses back, so the in-place bug is still caught), and the JSON has the run, its shards and the
    counterexample's split."""
    out_json = tmp_path / "out.json"
    code = main(["check", f"{ZOO}:CentresDyInPlace", "--shards", "3", "--json", str(out_json), "--isolate",
                 "--max-examples", "10", "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL  sharded_inputs_not_modified" in out and "modified its argument dys[" in out, out
    assert f"--isolate --replay {tmp_path}" in out, "the replay command does not isolate"
    result = json.loads(out_json.read_text())
    assert result["status"] == "failed" and result["options"]["shards"] == 3, result["options"]
    verdicts = {p["name"]: p["status"] for p in result["properties"]}
    assert verdicts == {"sharded_shapes_and_dtypes": "passed", "sharded_inputs_not_modified": "failed",
                        "sharded_forward_reference": "passed", "sharded_backward_reference": "passed",
                        "sharded_parameter_gradients": "passed"}, verdicts
    (failed,) = [p for p in result["properties"] if p["status"] == "failed"]
    sizes = failed["counterexample"]["shard_sizes"]
    assert len(sizes) == 3 and sum(sizes) == failed["counterexample"]["shape"][0], failed["counterexample"]


@pytest.mark.skipif(sys.platform == "win32", reason="plants a POSIX signal")
def test_with_isolate_a_crash_of_a_sharded_implementation_is_a_finding(tmp_path, capsys):
    """Without --isolate the abort would end the checker; with it, the property fails with the signal, the run goes
    on and its child is gone."""
    out_json = tmp_path / "out.json"
    code = main(["check", f"{ZOO}:AbortsInBackward", "--shards", "2", "--isolate", "--max-examples", "3",
                 "--property", "sharded_forward_reference", "--property", "sharded_backward_reference",
                 "--json", str(out_json), "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "PASS  sharded_forward_reference" in out, out
    assert "crashed with SIGABRT (signal 6) in sharded_backward" in out, out
    assert json.loads(out_json.read_text())["exit_status"] == 1


def test_shards_plot_draws_the_sharded_regimes(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "margins.png"
    assert main(["check", f"{ZOO}:TwoRounds", "--shards", "2", "--max-examples", "3", "--plot", str(path)]) == 0
    assert f"margins plotted to {path}" in capsys.readouterr().out
    assert path.stat().st_size > 1000


def test_shards_regimes_select_and_exclude_the_sharded_regimes(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert main(["check", f"{ZOO}:TwoRounds", "--shards", "2", "--max-examples", "3", "--regime", DIFFERENT_MEANS,
                 "--regime", "large offset", "--property", "sharded_forward_reference", "--json", str(path)]) == 0
    (forward,) = json.loads(path.read_text())["properties"]
    assert set(forward["margin"]["per_regime"]) == {DIFFERENT_MEANS, "large offset"}, forward["margin"]
    assert main(["check", f"{ZOO}:TwoRounds", "--shards", "2", "--max-examples", "3", "--exclude-regime",
                 DIFFERENT_MEANS, "--property", "sharded_forward_reference", "--json", str(path)]) == 0
    (forward,) = json.loads(path.read_text())["properties"]
    assert DIFFERENT_MEANS not in forward["margin"]["per_regime"], forward["margin"]


def test_list_properties_with_shards_lists_the_sharded_ones(capsys):
    assert main(["check", "--shards", "2", "--list-properties"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == list(SHARDED), lines
    assert sum("[runs with --shards K --convention]" in line for line in lines) == 2, lines


# ----- usage errors: every option either works with --shards or says why not -----

def test_sharded_property_names_need_shards(capsys):
    assert main(["check", f"{ZOO}:TwoRounds", "--property", "sharded_forward_reference"]) == 2
    assert "sharded_forward_reference runs with --shards K" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "eval"], "eval mode normalises with the running statistics, which every worker holds whole"),
    (["--order", "2"], "the sharded protocol has no double backward"),
    (["--property", "forward_reference"], "not a property of a sharded run; with --shards the properties are"),
    (["--layer", "layer_norm"], "layer norm has no sharded check: each of its groups lies within one sample"),
    (["--timeout", "5"], "--timeout needs --isolate"),
    (["--regime", "constant group"], "unknown regimes"),
], ids=["eval", "order-2", "unsharded-property", "per-sample-layer", "timeout-without-isolate", "other-regime"])
def test_an_option_shards_cannot_honour_exits_2_with_the_reason(arguments, message, capsys):
    assert main(["check", f"{ZOO}:TwoRounds", "--shards", "2", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_the_sharded_regime_without_shards_is_a_usage_error(capsys):
    assert main(["check", f"{ZOO}:TwoRounds", "--regime", DIFFERENT_MEANS]) == 2
    assert "the sharded regimes run with --shards K" in capsys.readouterr().err


def test_a_per_sample_layer_lists_no_sharded_properties(capsys):
    assert main(["check", "--layer", "instance_norm", "--shards", "2", "--list-properties"]) == 2
    assert "instance norm has no sharded check" in capsys.readouterr().err


def test_a_target_without_the_sharded_protocol_is_a_usage_error(capsys):
    assert main(["check", "tests/testing/zoo.py:TwoPass", "--shards", "2"]) == 2
    assert "sharded_forward" in capsys.readouterr().err
    assert main(["check", "torch", "--shards", "2"]) == 2
    assert "torch-sync" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    ({"shards": 0}, "shards must be a positive integer"),
    ({"shards": True}, "shards must be a positive integer"),
    ({"shards": 2, "dtype": "int32"}, "dtype must be one of"),
    ({"shards": 2, "dtype": None}, "dtype must be one of"),
    ({"shards": 2, "max_examples": 0}, "max_examples must be a positive integer"),
    ({"shards": 2, "seed": -1}, "seed must be a non-negative integer"),
    ({"shards": 2, "convention": "caffe"}, "convention must be one of"),
    ({"shards": 2, "properties": ["forward_reference"]}, "unknown properties .* of a sharded run"),
    ({"shards": 2, "mode": "eval"}, "the sharded check is of the training step"),
    ({"shards": 2, "regimes": ["constant group"]}, "unknown regimes"),
], ids=["shards", "shards-bool", "dtype", "dtype-none", "examples", "seed", "convention", "property", "eval",
        "regime"])
def test_check_argument_errors_with_shards(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_batchnorm(CORRECT["two_rounds"](), **kwargs)


def test_check_normalization_refuses_shards_for_a_layer_whose_groups_lie_within_one_sample():
    from bnsym.testing import check_normalization

    with pytest.raises(ValueError, match="group norm has no sharded check"):
        check_normalization(CORRECT["two_rounds"](), layer="group_norm", shards=2)
