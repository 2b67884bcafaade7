"""The checker's eval-mode, running-statistics and double-backward properties catch the planted bugs of the rest
of the layer, name the property, and pass correct implementations in float32 and float64."""

import pytest

from bnsym.testing import PROPERTIES, CheckFailed, NothingChecked, check_batchnorm
from bnsym.tools.cli import main
from tests import budget
from tests.testing.zoo_layer import BUGS, CORRECT, EquinoxEma

LAYER_BUG_CLASSES = {  # bug classes beyond the training forward and backward
    "running_var without Bessel's correction (PyTorch convention)", "momentum convention flipped",
    "running statistics changed by an eval-mode forward", "double backward missing a term",
    "cumulative average wrong", "training output normalised with running statistics",
    "double backward treating the batch mean as a constant",
}
# Every property of the layer, each once: eval mode to second order (its first-order properties too), and the
# training step to second order with the running statistics of a convention (the training forward and backward
# too). Each option alone, on the command line: test_bnsym_check_torch_passes_with_every_option.
ALL_OPTIONS = {"eval-order2": {"mode": "eval", "order": 2},
               "train-order2-convention": {"order": 2, "convention": None}}


def test_layer_zoo_covers_the_bug_classes():
    assert LAYER_BUG_CLASSES <= {bug.bug_class for bug in BUGS}
    for bug in BUGS:
        assert set(bug.caught_by) <= set(PROPERTIES), f"{bug.name} names unknown properties"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_layer_bug_is_caught_by_its_properties(bug):
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(bug.impl(), properties=list(bug.caught_by), max_examples=budget.LAYER_BUG,
                        **bug.options)
    missed = set(bug.caught_by) - set(info.value.report.failed)
    assert not missed, f"{bug.name} ({bug.bug_class}) was not caught by {sorted(missed)}:\n{info.value.report}"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_layer_bug_exits_1_naming_the_property(bug, tmp_path, capsys):
    options = []
    for key, value in bug.options.items():
        options += [f"--{key}", str(value)]
    target = f"tests/testing/zoo_layer.py:{bug.impl.__name__}"
    code = main(["check", target, "--max-examples", str(budget.COMMAND_LINE), "--save-dir", str(tmp_path),
                 "--property", bug.caught_by[0], *options])
    out = capsys.readouterr().out
    assert code == 1, f"{bug.name}: exit {code}\n{out}"
    assert f"FAIL  {bug.caught_by[0]}" in out, out


@pytest.mark.parametrize("options", sorted(ALL_OPTIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_layer_passes_every_option(name, dtype, options):
    """Every property of the layer (ALL_OPTIONS), with the convention the implementation follows. One case per
    implementation, dtype and option set, so that pytest-xdist spreads them over the cores."""
    options = dict(ALL_OPTIONS[options])
    if "convention" in options:
        options["convention"] = {"torch_convention": "torch"}.get(name, name)
    report = check_batchnorm(CORRECT[name](), dtype=dtype, max_examples=budget.CORRECT_LAYER, **options)
    assert not report.skipped, f"{name} offers every method, yet {report.skipped} were skipped"


def test_a_convention_the_implementation_does_not_follow_fails():
    """A correct torch-convention layer checked against the Flax convention fails instead of passing."""
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(CORRECT["torch_convention"](), convention="flax", max_examples=20,
                        properties=["running_stats_one_step_from_zero"])
    assert info.value.report.failed == ["running_stats_one_step_from_zero"]


@pytest.mark.parametrize("checked, follows", [("torch", "chainer"), ("flax", "haiku"), ("chainer", "torch")])
def test_failing_running_statistics_name_the_convention_they_follow(checked, follows):
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(CORRECT[{"torch": "torch_convention"}.get(follows, follows)](), convention=checked,
                        max_examples=20, properties=["running_stats_one_step_from_zero", "running_stats_several_steps"])
    assert f"these running statistics follow the {follows}" in str(info.value), str(info.value)


def test_the_ema_mode_of_equinox_is_named():
    with pytest.raises(CheckFailed) as info:
        check_batchnorm(EquinoxEma(), convention="flax", max_examples=20, properties=["train_forward_batch_statistics"])
    assert "normalises with the updated running statistics it returns" in str(info.value), str(info.value)


def test_forward_only_implementation_says_what_the_options_skip():
    with pytest.raises(NothingChecked, match="nothing was checked") as info:
        check_batchnorm(lambda x, gamma, beta, eps: CORRECT["flax"]().forward(x, gamma, beta, eps),
                        mode="eval", order=2, max_examples=5)
    report = info.value.report
    assert report.passed == []
    reasons = {r.name: r.reason for r in report.results}
    assert "needs eval_forward" in reasons["eval_forward_reference"]
    assert "needs eval_double_backward" in reasons["eval_double_backward_reference"]


@pytest.mark.parametrize("options", [["--mode", "eval"], ["--convention", "torch"], ["--order", "2"],
                                     ["--mode", "eval", "--order", "2"]], ids=" ".join)
def test_bnsym_check_torch_passes_with_every_option(options, capsys):
    code = main(["check", "torch", *options, "--max-examples", str(budget.CORRECT_LAYER)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 failed, 0 skipped" in out, out


def test_bnsym_check_rejects_an_unknown_convention(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "torch", "--convention", "caffe"])
    assert info.value.code == 2
    assert "caffe" in capsys.readouterr().err


@pytest.mark.parametrize("options", [{"mode": "eval", "convention": "flax"}, {"order": 2},
                                     {"mode": "eval", "order": 2}], ids=str)
def test_jax_adapter_passes_eval_flax_convention_and_order_2(options):
    pytest.importorskip("flax")
    from bnsym.testing.adapters import jax_implementation

    report = check_batchnorm(jax_implementation(), max_examples=10, **options)
    assert not report.skipped, report.skipped


def test_jax_adapter_has_no_cumulative_average():
    """Flax has no momentum=None: the cumulative convention fails, with the adapter's reason."""
    pytest.importorskip("flax")
    from bnsym.testing.adapters import jax_implementation

    with pytest.raises(CheckFailed) as info:
        check_batchnorm(jax_implementation(), convention="cumulative", max_examples=5,
                        properties=["running_stats_one_step_from_zero"])
    assert "no cumulative average" in str(info.value)
