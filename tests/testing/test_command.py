"""`bnsym check`: exit 0 on a correct implementation, 1 naming the failed property (with a replayable
counterexample), 2 on usage errors."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bnsym.tools.cli import main
from tests.testing.zoo import BUGS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_batchnorm.py"


def test_correct_target_exits_0(capsys):
    assert main(["check", f"{EXAMPLE}:MyBatchNorm", "--dtype", "float32", "--max-examples", "10"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_buggy_target_exits_1_names_the_property_and_saves_a_replayable_counterexample(tmp_path, capsys):
    status = main(["check", f"{EXAMPLE}:FastBatchNorm", "--dtype", "float32", "--property", "forward_reference",
                   "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL  forward_reference" in out
    assert "minimal counterexample: x of shape" in out and "float32" in out and "regime" in out
    assert "expected" in out and "got" in out
    saved = list(tmp_path.glob("*-forward_reference-*.npz"))
    assert len(saved) == 1
    assert f"counterexamples saved in {tmp_path}/" in out and out.count(str(tmp_path)) == 2  # the folder, the replay
    assert f"--replay {saved[0]}" in out
    assert main(["check", f"{EXAMPLE}:FastBatchNorm", "--replay", str(saved[0])]) == 1
    assert main(["check", f"{EXAMPLE}:MyBatchNorm", "--replay", str(saved[0])]) == 0


def test_seed_makes_runs_reproducible(tmp_path, capsys):
    args = ["check", f"{EXAMPLE}:FastBatchNorm", "--dtype", "float32", "--property", "shift_invariance",
            "--save-dir"]
    outputs = []
    for directory in ("a", "b"):
        assert main([*args, str(tmp_path / directory), "--seed", "3"]) == 1
        out = capsys.readouterr().out.replace(str(tmp_path / directory), "DIR")
        outputs.append(re.sub(r"\(\d+\.\d s\)", "(time)", out))
    assert outputs[0] == outputs[1]


def test_exception_and_nan_are_reported_failures_not_crashes(tmp_path, capsys):
    target = tmp_path / "broken.py"
    target.write_text(textwrap.dedent("""
        import numpy as np
        def raises(x, gamma, beta, eps):
            raise RuntimeError("kernel launch failed")
        def nan(x, gamma, beta, eps):
            return np.full_like(x, np.nan)
    """))
    assert main(["check", f"{target}:raises", "--property", "forward_reference", "--save-dir", str(tmp_path)]) == 1
    assert "forward raised RuntimeError: kernel launch failed" in capsys.readouterr().out
    assert main(["check", f"{target}:nan", "--property", "finite_outputs", "--save-dir", str(tmp_path)]) == 1
    assert "is not finite" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["check", "no/such/file.py:f"], "no such file"),
    (["check", f"{EXAMPLE}:Missing"], "has no attribute 'Missing'"),
    (["check", "no_such_module_xyz:f"], "add that directory to PYTHONPATH"),
    (["check", "torch_but_not_a_target"], "is not a target"),
    (["check", "math:sqrt"], "forward must accept (x, gamma, beta, eps)"),
    (["check", "torch", "--replay", str(EXAMPLE)], "is not a bnsym counterexample (not an .npz archive)"),
    (["check", "torch", "--replay", "no-such-file.npz"], "no such file"),
    (["check", "torch", "--regime", "tiny batch", "--exclude-regime", "tiny batch"], "no input regime is left"),
], ids=["missing-file", "missing-name", "missing-module", "no-colon", "wrong-signature", "bad-replay-file",
        "missing-replay-file", "no-regime-left"])
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--dtype", "int8"], ["--max-examples", "0"], ["--seed", "-1"],
                                    ["--property", "nonsense"]], ids=lambda o: o[0])
def test_bad_options_exit_2(option):
    with pytest.raises(SystemExit) as info:
        main(["check", "torch", *option])
    assert info.value.code == 2


def test_console_entry_runs_torch_by_name_and_leaves_the_directory_clean(tmp_path):
    """The module entry point, in a subprocess, as a user runs it (a subset of properties keeps it quick); no
    .hypothesis directory appears where it ran."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
    result = subprocess.run([sys.executable, "-m", "bnsym.tools.cli", "check", "torch", "--dtype", "float32",
                             "--property", "backward_reference", "--max-examples", "10"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  backward_reference" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_saved_counterexample_holds_the_inputs(tmp_path):
    main(["check", f"{EXAMPLE}:FastBatchNorm", "--dtype", "float32", "--property", "forward_reference",
          "--save-dir", str(tmp_path)])
    (saved,) = tmp_path.glob("*.npz")
    with np.load(saved) as data:
        assert data["x"].dtype == np.float32 and data["x"].ndim >= 2
        assert str(data["property"]) == "forward_reference"
        assert data["gamma"].shape == (data["x"].shape[1],)


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_each_planted_bug_exits_1_naming_its_property(bug, tmp_path, capsys):
    """Through the CLI, with a package.module:NAME target."""
    prop = bug.caught_by[0]
    status = main(["check", f"tests.testing.zoo:{bug.impl.__name__}", "--dtype", bug.dtype, "--property", prop,
                   "--save-dir", str(tmp_path)])
    assert status == 1
    assert f"FAIL  {prop}" in capsys.readouterr().out


def test_replay_reports_an_exception_inside_a_property_as_a_failure(tmp_path, capsys, monkeypatch):
    """--replay treats an exception raised while checking as a failure (exit 1), as a normal run does, not as a
    usage error or a traceback."""
    import dataclasses

    from bnsym.testing.properties import PROPERTIES

    target = "tests/testing/zoo.py:EpsOutsideSqrt"
    assert main(["check", target, "--property", "standardisation", "--save-dir", str(tmp_path),
                 "--max-examples", "20"]) == 1
    saved = next(tmp_path.glob("*.npz"))
    capsys.readouterr()

    def broken(impl, example):
        raise TypeError("a check that trips over the implementation's output")

    monkeypatch.setitem(PROPERTIES, "standardisation", dataclasses.replace(PROPERTIES["standardisation"],
                                                                           check=broken))
    assert main(["check", target, "--replay", str(saved)]) == 1
    assert "checking raised TypeError" in capsys.readouterr().out


# ----- loading targets the way Python loads code -----

def test_a_file_target_imports_its_sibling_modules(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "helpers_for_bn.py").write_text("import numpy as np\nAXES = None\n")
    (tmp_path / "sibling_bn.py").write_text(textwrap.dedent("""
        import helpers_for_bn
        from tests.testing.zoo import TwoPass as Impl
        assert helpers_for_bn.AXES is None
    """))
    monkeypatch.chdir(ROOT)
    assert main(["check", f"{tmp_path / 'sibling_bn.py'}:Impl", "--property", "forward_reference",
                 "--max-examples", "3"]) == 0, capsys.readouterr().err


def test_a_module_target_resolves_from_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    package = tmp_path / "mykernels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bn.py").write_text("import numpy as np\ndef forward(x, gamma, beta, eps):\n    return x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mykernels", raising=False)
    status = main(["check", "mykernels.bn:forward", "--property", "shapes_and_dtypes", "--max-examples", "3",
                   "--save-dir", str(tmp_path / "ce")])
    assert status == 0, capsys.readouterr()


def test_a_target_whose_dependency_is_missing_says_so(tmp_path, capsys):
    target = tmp_path / "needs_missing.py"
    target.write_text("import no_such_dependency_xyz\n")
    assert main(["check", f"{target}:forward"]) == 2
    err = capsys.readouterr().err
    assert "'no_such_dependency_xyz' is not next to needs_missing.py nor installed" in err and "PYTHONPATH" in err


# ----- nothing checked, replay conflicts, outputs -----

def test_nothing_checked_exits_5_and_says_what_was_missing(capsys):
    status = main(["check", f"{EXAMPLE}:MyBatchNorm", "--mode", "eval", "--property", "eval_forward_reference"])
    out = capsys.readouterr().out
    assert status == 5, out
    assert "nothing was checked" in out and "needs eval_forward" in out
    reason = "needs eval_forward, which the implementation does not offer"
    assert out.count(reason) == 1, f"the exit-5 summary repeats its reason:\n{out}"


def test_check_batchnorm_raises_when_nothing_is_checked():
    from bnsym.testing import NothingChecked, check_batchnorm
    from tests.testing.zoo import ForwardOnly

    with pytest.raises(NothingChecked, match="nothing was checked: ") as info:
        check_batchnorm(ForwardOnly(), properties=["backward_reference", "dx_sums_to_zero"])
    assert str(info.value).count("needs backward") == 1, str(info.value)


@pytest.fixture(scope="module")
def saved_counterexample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved")
    assert main(["check", f"{EXAMPLE}:FastBatchNorm", "--dtype", "float32", "--property", "forward_reference",
                 "--save-dir", str(directory)]) == 1
    return next(directory.glob("*.npz"))


@pytest.mark.parametrize("option, word", [(["--dtype", "float64"], "--dtype float64 (the file's is float32)"),
                                          (["--property", "standardisation"], "the file's is forward_reference"),
                                          (["--order", "2"], "--order 2"), (["--seed", "3"], "--seed"),
                                          (["--max-examples", "9"], "--max-examples")], ids=lambda o: str(o))
def test_replay_with_conflicting_options_is_a_usage_error(saved_counterexample, option, word, capsys):
    assert main(["check", f"{EXAMPLE}:FastBatchNorm", "--replay", str(saved_counterexample), *option]) == 2
    err = capsys.readouterr().err
    assert "conflict" in err and word in err, err


def test_replay_of_a_file_that_needs_pickles_never_advises_loading_them(tmp_path, capsys):
    bad = tmp_path / "objects.npz"
    np.savez(bad, property=np.array([{"a": 1}], dtype=object))
    assert main(["check", "torch", "--replay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not a bnsym counterexample" in err and "allow_pickle" not in err


def test_json_writes_the_whole_result(tmp_path, capsys):
    path = tmp_path / "out" / "result.json"
    assert main(["check", f"{EXAMPLE}:FastBatchNorm", "--dtype", "float32", "--property", "forward_reference",
                 "--property", "dbeta_is_sum_dy", "--save-dir", str(tmp_path), "--json", str(path)]) == 1
    import json

    result = json.loads(path.read_text())
    assert result["status"] == "failed" and result["exit_status"] == 1 and result["dtype"] == "float32"
    assert {"python", "numpy", "bnsym", "hypothesis"} <= set(result["versions"])
    by_name = {p["name"]: p for p in result["properties"]}
    assert by_name["forward_reference"]["counterexample"]["file"].startswith(str(tmp_path))
    assert by_name["dbeta_is_sum_dy"]["status"] == "passed"
    assert 0 < by_name["dbeta_is_sum_dy"]["margin"]["worst"] <= 1
    assert f"result written as JSON to {path}" in capsys.readouterr().out, "--json did not say where it wrote"


def test_plot_draws_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "margins.png"
    assert main(["check", f"{EXAMPLE}:MyBatchNorm", "--property", "forward_reference", "--max-examples", "10",
                 "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"margins plotted to {path}" in capsys.readouterr().out, "--plot did not say where it wrote"


def test_passing_properties_show_their_margin_and_regime(capsys):
    assert main(["check", f"{EXAMPLE}:MyBatchNorm", "--property", "backward_reference", "--max-examples", "1"]) == 0
    out = capsys.readouterr().out
    pattern = r"PASS  backward_reference \(\d+ examples?, worst [0-9.e-]+ of the bound, regime [a-z -]+\)"
    assert re.search(pattern, out), out


def test_regimes_select_the_inputs(tmp_path, capsys):
    import json

    path = tmp_path / "result.json"
    assert main(["check", f"{EXAMPLE}:MyBatchNorm", "--property", "forward_reference", "--max-examples", "20",
                 "--regime", "well-conditioned", "--regime", "tiny batch", "--exclude-regime", "tiny batch",
                 "--json", str(path)]) == 0
    assert "regimes: well-conditioned" in capsys.readouterr().out
    (result,) = json.loads(path.read_text())["properties"]
    assert set(result["margin"]["per_regime"]) == {"well-conditioned"}
    assert main(["check", f"{EXAMPLE}:FastBatchNorm", "--dtype", "float32", "--property", "one_value_per_channel",
                 "--regime", "tiny batch"]) == 5
    assert "draws only from the regimes" in capsys.readouterr().out


def test_default_save_dir_is_one_folder_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", f"{EXAMPLE}:FastBatchNorm", "--dtype", "float32", "--property", "forward_reference",
                 "--property", "shift_invariance"]) == 1
    files = sorted(p.name for p in (tmp_path / "bnsym-counterexamples").iterdir())
    assert len(files) == 2 and all(f.endswith(".npz") and not f.startswith(".") for f in files), files
    assert capsys.readouterr().out.count("counterexamples saved in bnsym-counterexamples/") == 1


def test_version(capsys):
    import bnsym

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and bnsym.__version__ in capsys.readouterr().out


def test_two_targets_checked_into_one_folder_keep_their_own_counterexamples(tmp_path, capsys):
    """The same property failing on the same example for two targets: two files, each named by its target, and
    the folder's default name is ignored by git."""
    from bnsym.testing.counterexamples import DEFAULT_DIRECTORY

    zoo = Path(__file__).with_name("zoo.py")
    for name in ("EpsOutsideSqrt", "MaxVarEps"):
        assert main(["check", f"{zoo}:{name}", "--property", "forward_reference", "--max-examples", "5",
                     "--save-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    files = sorted(path.name for path in tmp_path.glob("*.npz"))
    assert len(files) == 2, f"one target's counterexample overwrote the other's: {files}\n{out}"
    assert files[0].startswith("zoo.EpsOutsideSqrt-forward_reference-"), files
    assert files[1].startswith("zoo.MaxVarEps-forward_reference-"), files
    gitignore = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().splitlines()
    assert f"{DEFAULT_DIRECTORY}/" in gitignore, f"{DEFAULT_DIRECTORY}/ is not in .gitignore"


def test_the_help_is_plain_text_about_every_layer_and_short_on_property_names(capsys):
    # The built-in layers, not bnsym.testing.LAYERS: that is the layers registered when bnsym.testing was first
    # imported, which may include a test's own layer that has been unregistered since.
    from bnsym.spec import BUILT_IN
    from bnsym.testing import properties_of
    from bnsym.tools.cli import build_parser, check_parser

    top = build_parser().format_help()
    assert "``" not in top and "batch-norm implementation" not in top, f"bnsym --help shows markup or calls it a " \
                                                                      f"batch-norm checker:\n{top}"
    assert "layer" in top and "RMS" in top, top
    check = check_parser().format_help()
    names = {name for layer in BUILT_IN for name in properties_of(layer)}
    listed = [name for name in names if re.search(rf"\b{name}\b", check)]
    assert len(listed) <= 3, f"bnsym check --help lists {len(listed)} property names: {sorted(listed)}"
    assert "--list-properties" in check, check


@pytest.mark.parametrize("layer", ["batch_norm", "rms_norm"])
def test_list_properties_lists_the_layers_own_with_what_each_checks(layer, capsys):
    from bnsym.testing import properties_of

    assert main(["check", "--layer", layer, "--list-properties"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == list(properties_of(layer)), lines
    assert all(len(line.split(": ", 1)[1]) > 10 for line in lines), "a property without its description"
    assert any("[runs with --order 2]" in line for line in lines), "the options that select a property are missing"


def test_a_missing_target_is_a_usage_error(capsys):
    assert main(["check", "--layer", "layer_norm"]) == 2
    assert "the target is missing" in capsys.readouterr().err
