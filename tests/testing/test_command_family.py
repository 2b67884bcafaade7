"""`bnsym check --layer` and check_normalization beyond the zoo: usage errors that name what the layer lacks,
protocol mistakes named in one line, counterexample files that carry their layer, isolation, the report."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bnsym.testing import CheckFailed, check_normalization
from bnsym.testing.adapters import TargetError, load
from bnsym.testing.strategies import make_layer_example
from bnsym.tools.cli import main

ZOO = Path(__file__).with_name("zoo_family.py")


@pytest.mark.parametrize(("options", "message"), [
    (["--layer", "layer_norm", "--mode", "eval"], "layer norm has no eval mode and no running statistics"),
    (["--layer", "group_norm", "--convention", "torch"], "group norm has no eval mode and no running statistics"),
    (["--layer", "rms_norm", "--property", "dbeta_is_sum_dy"], "dbeta_is_sum_dy: not a property of rms_norm"),
    (["--layer", "layer_norm", "--property", "layout_equivariance"], "not a property of layer_norm"),
    (["--layer", "layer_norm", "--regime", "constant channel"], "unknown regimes ['constant channel'] for layer_norm"),
    (["--regime", "tiny group"], "unknown regimes ['tiny group']"),
    (["--layer", "group_norm", "--shards", "2"], "group norm has no sharded check: each of its groups lies within one "
                                                 "sample"),
], ids=["eval", "convention", "rms-dbeta", "bn-property", "bn-regime", "family-regime-for-bn", "shards"])
def test_what_a_layer_does_not_have_is_a_usage_error(options, message, capsys):
    assert main(["check", f"{ZOO}:LayerNorm", *options]) == 2
    assert message in capsys.readouterr().err


def test_protocol_mistakes_are_named_in_one_line(tmp_path, capsys):
    target = tmp_path / "mistakes.py"
    target.write_text(textwrap.dedent("""
        import numpy as np

        def rms_with_beta(x, gamma, beta, eps):          # RMS norm takes (x, gamma, eps)
            return x

        class TwoGradients:                                # layer norm's backward returns three arrays
            def forward(self, x, gamma, beta, eps):
                return x
            def backward(self, dy, x, gamma, beta, eps):
                return dy, np.zeros_like(gamma)

        class FlatDgamma:                                  # dgamma must have gamma's shape
            def forward(self, x, gamma, beta, eps):
                return x
            def backward(self, dy, x, gamma, beta, eps):
                return dy, np.zeros(gamma.size), np.zeros_like(beta)
    """))
    assert main(["check", f"{target}:rms_with_beta", "--layer", "rms_norm"]) == 2
    assert "forward must accept (x, gamma, eps)" in capsys.readouterr().err
    assert main(["check", f"{target}:TwoGradients", "--layer", "layer_norm"]) == 2
    assert "backward returned 2 values where the protocol expects 3 arrays (dx, dgamma, dbeta)" in \
        capsys.readouterr().err
    assert main(["check", f"{target}:FlatDgamma", "--layer", "layer_norm"]) == 2
    assert "dgamma from backward has shape (12,), expected (3, 4) (gamma's shape, the normalised shape of x)" in \
        capsys.readouterr().err


def test_a_counterexample_file_replays_with_its_layer(tmp_path, capsys):
    assert main(["check", f"{ZOO}:GroupNormStrided", "--layer", "group_norm", "--property", "forward_reference",
                 "--save-dir", str(tmp_path), "--max-examples", "20"]) == 1
    out = capsys.readouterr().out
    assert "group norm" in out and "groups of" in out  # the header and the counterexample name the layer
    (saved,) = tmp_path.glob("*-forward_reference-*.npz")
    with np.load(saved) as data:
        assert str(data["layer"]) == "group_norm" and int(data["num_groups"]) >= 2
    assert main(["check", f"{ZOO}:GroupNormStrided", "--replay", str(saved)]) == 1
    assert main(["check", f"{ZOO}:GroupNorm", "--replay", str(saved)]) == 0
    capsys.readouterr()
    assert main(["check", f"{ZOO}:GroupNorm", "--replay", str(saved), "--layer", "layer_norm"]) == 2
    assert "--layer layer_norm (the file's is group_norm)" in capsys.readouterr().err


def test_the_json_result_names_the_layer_and_its_pool(tmp_path):
    assert main(["check", f"{ZOO}:InstanceNorm", "--layer", "instance_norm", "--property", "forward_reference",
                 "--max-examples", "3", "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["options"]["layer"] == "instance_norm"
    assert all(len(entry["shape"]) >= 3 for entry in result["shapes"])


def test_isolation_runs_a_family_layer_in_a_child_process():
    report = check_normalization(f"{ZOO}:RMSNorm", layer="rms_norm", isolate=True, max_examples=5,
                                 properties=["forward_reference", "backward_reference"])
    assert report.passed == ["forward_reference", "backward_reference"]
    with pytest.raises(CheckFailed) as info:
        check_normalization(f"{ZOO}:RMSNormCentres", layer="rms_norm", isolate=True, max_examples=5,
                            properties=["forward_reference"])
    assert info.value.report.failed == ["forward_reference"]


def test_an_implementation_of_another_layer_is_refused():
    with pytest.raises(TargetError, match="an implementation of layer norm, not of group norm"):
        check_normalization(load("torch", "layer_norm"), layer="group_norm")
    with pytest.raises(ValueError, match="unknown layer 'batchnorm'"):
        check_normalization(lambda x, gamma, beta, eps: x, layer="batchnorm")


def test_a_family_example_describes_its_groups():
    example = make_layer_example("group_norm", (2, 6, 5), 3, "constant group", 1e-3, 1, "float32")
    line = example.describe()
    assert "3 groups of 2 channels: M = 10 per group, 6 groups" in line and "regime \"constant group\"" in line
    example = make_layer_example("rms_norm", (4, 2, 3), 2, "tiny group", 1e-3, 1)
    assert "normalised over the last 2 axes: M = 6 per group" in example.describe()
    assert "beta" not in example.describe()  # RMS norm has none
    assert repr(example).startswith("Example(rms_norm, x of shape (4, 2, 3)")


def test_forgetting_layer_gets_did_you_mean(tmp_path, capsys):
    """A layer norm checked as a batch norm (no --layer): the usage error leads with the layer it computes, not with
    advice about transposes; an instance norm checked as a batch norm fails forward_reference and is told too."""
    zoo = Path(__file__).with_name("zoo_family.py")
    assert main(["check", f"{zoo}:LayerNorm", "--save-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnsym check: did you mean `--layer layer_norm`?"), err
    assert main(["check", f"{zoo}:InstanceNorm", "--property", "forward_reference", "--max-examples", "5",
                 "--save-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "did you mean `--layer instance_norm`?" in out, out
    assert main(["check", f"{zoo}:LayerNormEpsOutsideSqrt", "--layer", "layer_norm", "--property",
                 "forward_reference", "--max-examples", "5", "--save-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "did you mean" not in out, f"a buggy layer norm checked as one was sent to another layer:\n{out}"


def test_a_target_of_every_layer_is_not_sent_to_another():
    """torch is every layer: when its float16 batch norm fails (PyTorch rounds eps to float16), the failure is about
    the dtype, and no other layer is suggested."""
    pytest.importorskip("torch")
    from bnsym.testing.layer_guess import guess_layer

    assert guess_layer("torch", "batch_norm") is None


def test_bnsym_of_a_layer_without_kernels_is_not_sent_to_another(tmp_path, capsys):
    """bnsym's own functions of a layer of your own whose kernels were never generated: the checker stops before it
    runs anything (it reads which properties apply from that package) with a usage error that names the command
    that generates them; it does not suggest another layer (bnsym computes batch norm, but that is not the
    mistake)."""
    declaration = tmp_path / "no_kernels_norm.py"
    declaration.write_text(
        "from bnsym.spec import LayerSpec, TrailingAxes\n"
        "from bnsym.spec.layer_spec import RMS_REGIMES\n"
        "NO_KERNELS = LayerSpec('no_kernels_norm', 'No kernels', 'no kernels', 'rms', TrailingAxes(), eps=1e-5,\n"
        "                       regimes=RMS_REGIMES, group='g', statistics_over='s', parameters_are='p',\n"
        "                       kernels_package='no_kernels_generated')\n")
    try:
        assert main(["check", "bnsym", "--layer", f"{declaration}:NO_KERNELS", "--property", "forward_reference",
                     "--max-examples", "2", "--save-dir", str(tmp_path)]) == 2
    finally:
        from bnsym.spec import unregister

        unregister("no_kernels_norm")
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert f"bnsym derive {declaration}:NO_KERNELS --out DIR" in out and "no_kernels_generated" in out, out
    assert "did you mean" not in out, out
