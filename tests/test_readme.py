"""The README's code runs as written: its Python blocks in order in one session (the pytest example with
examples/ on the path, as a user's test directory would have it), and every `bnsym ...` command of its shell blocks
parses with the real command line. The own-layer walk-through ("A layer of your own") runs in a folder of its own,
step by step, in tests/test_readme_own_layer.py; its blocks are left out of the session here."""

import re
import shlex
import sys
from pathlib import Path

import pytest

from bnsym.tools.cli import build_parser, check_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def own_layer_section(text: str) -> str:
    """The README's walk-through of a layer of your own: from its heading to the next section's."""
    start = text.index("### A layer of your own\n")
    return text[start:text.index("\n## ", start)]


#: The README without the own-layer walk-through, whose files and commands belong to a folder of their own.
SHARED_SESSION = README.replace(own_layer_section(README), "")


def _blocks(language: str, text: str = SHARED_SESSION) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def test_the_python_blocks_run_in_order(monkeypatch, tmp_path):
    blocks = _blocks("python")
    assert len(blocks) >= 3, "the README lost its Python examples"
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:
            pytest.fail(f"README python block {number} fails: {type(error).__name__}: {error}\n{block}")
    tests = [value for name, value in namespace.items() if name.startswith("test_") and callable(value)]
    assert tests, "the pytest example defines no test"
    for test in tests:
        test()


def _commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                if words and words[0] == "bnsym":
                    commands.append(words[1:])
    return commands


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_bnsym_command_parses(argv):
    if argv[:1] == ["check"]:
        check_parser().parse_args(argv[1:])
    else:
        build_parser().parse_args(argv)


def test_the_readme_states_the_measured_times():
    assert "SEE_TIMES" not in README
    assert re.search(r"in about \d+ minutes? on two cores", README)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


#: A sample output in the README: the command in a comment, then its whole output in a text block.
SAMPLE = re.compile(r"^<!-- output of: (bnsym [^\n]*?) -->\n```text\n(.*?)^```", flags=re.S | re.M)


def normalised(text: str) -> str:
    return re.sub(r"\(\d+\.\d s\)", "(T s)", text).strip()  # the run's time in seconds varies


def test_every_sample_output_is_marked_with_its_command():
    """A block that shows a check's output says which command printed it (and the test below runs it)."""
    samples = {output for _, output in SAMPLE.findall(README)}
    for block in re.findall(r"^```(?:text)?\n(.*?)^```", README, flags=re.S | re.M):
        if re.search(r"^bnsym check: |^  (FAIL|PASS)  ", block, flags=re.M):
            assert block in samples, f"a sample output without the command that printed it:\n{block}"
    assert len(samples) >= 2, "the README lost its sample outputs"


@pytest.mark.parametrize("command, output", SAMPLE.findall(SHARED_SESSION), ids=lambda value: value[:60])
def test_every_sample_output_is_the_real_output_of_its_command(command, output, tmp_path, monkeypatch, capsys):
    """Run from a folder holding the repository's examples/ (so that the paths print as in the README and the
    counterexample files land in the test's folder)."""
    from bnsym.tools.cli import main

    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    main(shlex.split(command)[1:])
    printed = capsys.readouterr().out
    assert normalised(printed) == normalised(output), \
        f"the README's sample output of `{command}` is not what it prints; it prints:\n{printed}"
