"""The layers torch has no function for (Gemma's RMS norm, adaptive layer norm, batch renormalisation) have a built-in
``torch`` target all the same, written from their definition with autograd (eval mode and the training step too,
for a layer that keeps running statistics), and it passes its layer's properties in every dtype; the
properties of a layer that scales by ``1 + gamma`` read that scale, so an implementation that scales by gamma
alone fails them by name."""

import json

import pytest

import bnsym
from bnsym.spec import BUILT_IN, spec
from bnsym.testing import CheckFailed, check_normalization
from bnsym.testing.adapters import FRAMEWORK_CALLS, load
from bnsym.tools.cli import main
from tests import budget

WITHOUT_FRAMEWORK_CALL = tuple(name for name in BUILT_IN if name not in FRAMEWORK_CALLS)
ONE_PLUS_GAMMA = tuple(name for name in BUILT_IN if spec(name).neutral_values["gamma"] == 0)


def test_the_variants_have_no_framework_call_and_scale_by_one_plus_gamma():
    assert {"gemma_rms_norm", "adaptive_layer_norm"} <= set(WITHOUT_FRAMEWORK_CALL) & set(ONE_PLUS_GAMMA)


@pytest.mark.parametrize("layer", WITHOUT_FRAMEWORK_CALL)
def test_the_torch_target_is_the_definition(layer):
    impl = load("torch", layer)
    assert impl.layer == layer and "from its definition" in impl.name, impl.name


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("layer", WITHOUT_FRAMEWORK_CALL)
def test_bnsym_check_torch_exits_0(layer, dtype, tmp_path, capsys):
    status = main(["check", "torch", "--layer", layer, "--dtype", dtype,
                   "--max-examples", str(budget.CORRECT_VARIANT), "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out


KEEPS_RUNNING = tuple(name for name in WITHOUT_FRAMEWORK_CALL if spec(name).running_statistics)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("layer", KEEPS_RUNNING)
def test_bnsym_check_torch_runs_eval_mode_and_the_running_statistics(layer, dtype, tmp_path, capsys):
    """The torch target of a layer that keeps running statistics (batch renormalisation) has eval mode and a
    training step in PyTorch's convention, from its declaration: `--mode eval --convention torch` runs the eval
    properties and the running-statistics ones, and none is skipped."""
    result = tmp_path / "result.json"
    status = main(["check", "torch", "--layer", layer, "--dtype", dtype, "--mode", "eval", "--convention", "torch",
                   "--max-examples", str(budget.CORRECT_VARIANT), "--save-dir", str(tmp_path), "--json", str(result)])
    out = capsys.readouterr().out
    assert status == 0, out
    statuses = {p["name"]: p["status"] for p in json.loads(result.read_text())["properties"]}
    assert "skipped" not in statuses.values(), out
    expected = {"eval_forward_reference", "eval_backward_reference", "eval_leaves_running_stats_unchanged",
                "eval_sample_independence"}
    if spec(layer).reads_running:
        expected.add("running_stats_read_and_updated")
    assert all(statuses.get(name) == "passed" for name in expected), out


def test_the_keras_convention_is_not_the_torch_targets(tmp_path, capsys):
    """The torch target follows PyTorch's convention: checked against Keras's, its running statistics fail."""
    layer = next(name for name in KEEPS_RUNNING if spec(name).reads_running)
    status = main(["check", "torch", "--layer", layer, "--dtype", "float64", "--convention", "keras",
                   "--property", "running_stats_read_and_updated", "--max-examples", "10",
                   "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1 and "FAIL  running_stats_read_and_updated" in out, out


class _ScalesByGamma:
    """Gemma's RMS norm computed as RMS norm: y = gamma x_hat where the layer says (1 + gamma) x_hat."""

    def forward(self, x, gamma, eps):
        return bnsym.rms_norm.forward(x, gamma, eps=eps, axis=tuple(range(x.ndim - gamma.ndim, x.ndim)))[0]

    def backward(self, dy, x, gamma, eps):
        axis = tuple(range(x.ndim - gamma.ndim, x.ndim))
        _, invrms = bnsym.rms_norm.forward(x, gamma, eps=eps, axis=axis)
        return bnsym.rms_norm.backward(dy, x, gamma, invrms, axis=axis)


def test_a_scale_of_gamma_for_one_plus_gamma_fails_the_scale_properties_by_name():
    with pytest.raises(CheckFailed) as info:
        check_normalization(_ScalesByGamma(), layer="gemma_rms_norm", dtype="float64", max_examples=10)
    failed = set(info.value.report.failed)
    assert {"forward_reference", "standardisation", "identity_recovery", "dx_scales_with_gamma"} <= failed, \
        str(info.value.report)
