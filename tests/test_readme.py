"""The README's code runs as written: its Python blocks in order in one session (the pytest example with
examples/ on the path, as a user's test directory would have it), and every `bnsym ...` command of its shell blocks
parses with the real command line."""

import re
import shlex
import sys
from pathlib import Path

import pytest

from bnsym.cli import build_parser, check_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


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
