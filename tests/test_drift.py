"""The checked-in generated files must be exactly what the derivation produces now."""

import shutil

import pytest

from bnsym import derive
from bnsym.cli import main


def test_checked_in_generated_files_are_up_to_date(capsys):
    code = main(["derive", "--check"])
    out, err = capsys.readouterr()
    assert code == 0, f"generated files are stale; run `bnsym derive` and commit. Diff:\n{out}\n{err}"


@pytest.fixture
def scratch_checkout(tmp_path):
    """A copy of the generated files in a throwaway source tree."""
    root = derive.find_root()
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "bnsym").mkdir()
    for generated in derive.GENERATED_FILES:
        target = tmp_path / generated.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / generated.path, target)
    return tmp_path


@pytest.mark.parametrize("path", [g.path for g in derive.GENERATED_FILES])
def test_check_fails_with_a_diff_after_one_character_is_changed(scratch_checkout, capsys, path):
    target = scratch_checkout / path
    text = target.read_text()
    position = text.index("\n\n") + 2
    tampered = text[:position] + ("#" if text[position] != "#" else "!") + text[position + 1:]
    target.write_text(tampered)
    code = main(["derive", "--check", "--root", str(scratch_checkout)])
    out, err = capsys.readouterr()
    assert code == 1, "a hand-edited generated file must make the check fail"
    assert f"--- {path} (checked in)" in out and f"+++ {path} (derived now)" in out, out
    assert "stale" in err


def test_check_fails_when_a_generated_file_is_missing(scratch_checkout, capsys):
    (scratch_checkout / derive.GENERATED_FILES[0].path).unlink()
    assert main(["derive", "--check", "--root", str(scratch_checkout)]) == 1


def test_regenerate_repairs_a_stale_file_and_is_deterministic(scratch_checkout):
    path = scratch_checkout / derive.GENERATED_FILES[0].path
    original = path.read_bytes()
    path.write_text("stale\n")
    changed = dict(derive.regenerate(scratch_checkout))
    assert changed[derive.GENERATED_FILES[0].path] is True
    assert path.read_bytes() == original
    assert not any(dict(derive.regenerate(scratch_checkout)).values()), "a second run must change nothing"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"atomic write left temporary files {leftovers}"


def test_derive_refuses_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    assert main(["derive", "--check", "--root", str(tmp_path)]) == 2
    assert "not a bnsym source checkout" in capsys.readouterr().err
