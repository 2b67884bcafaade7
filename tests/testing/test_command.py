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

from bnsym.cli import main
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
    saved = list(tmp_path.glob("bnsym-counterexample-forward_reference-*.npz"))
    assert len(saved) == 1
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
    (["check", "no_such_module_xyz:f"], "importing module 'no_such_module_xyz' failed"),
    (["check", "torch_but_not_a_target"], "is not a target"),
    (["check", "math:sqrt"], "forward must accept (x, gamma, beta, eps)"),
    (["check", "torch", "--replay", str(EXAMPLE)], "is not a bnsym counterexample"),
], ids=["missing-file", "missing-name", "missing-module", "no-colon", "wrong-signature", "bad-replay-file"])
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
    result = subprocess.run([sys.executable, "-m", "bnsym.cli", "check", "torch", "--dtype", "float32",
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

    from bnsym.testing.properties import REGISTRY

    target = "tests/testing/zoo.py:EpsOutsideSqrt"
    assert main(["check", target, "--property", "standardisation", "--save-dir", str(tmp_path),
                 "--max-examples", "20"]) == 1
    saved = next(tmp_path.glob("*.npz"))
    capsys.readouterr()

    def broken(impl, example):
        raise TypeError("a check that trips over the implementation's output")

    monkeypatch.setitem(REGISTRY, "standardisation", dataclasses.replace(REGISTRY["standardisation"], check=broken))
    assert main(["check", target, "--replay", str(saved)]) == 1
    assert "checking raised TypeError" in capsys.readouterr().out
