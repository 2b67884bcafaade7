"""Every install command bnsym prints or documents works from a clone: bnsym is not published on PyPI, so
`pip install "bnsym[fast]"` fails for a new user; `pip install -e ".[fast]"` (from the clone) is the command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A pip install of the package by name, with an extra: what cannot work for an unpublished package.
BY_NAME = re.compile(r"""pip install +["']?bnsym\[""")


def _product_files():
    for pattern in ("bnsym/**/*.py", "*.md", "docs/*.md", "examples/*.py", "benchmarks/*.py", "pyproject.toml"):
        yield from (path for path in ROOT.glob(pattern) if "_generated" not in path.parts)


def test_no_install_command_names_the_unpublished_package():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in _product_files()
             for number, line in enumerate(path.read_text().splitlines(), start=1) if BY_NAME.search(line)]
    assert not found, "install commands that fail for a package not on PyPI (use pip install -e \".[extra]\"):\n" + \
        "\n".join(found)


def test_a_missing_backend_says_the_command_that_works_from_a_clone():
    from bnsym.runtime.backends import _missing

    message = str(_missing("numba"))
    assert 'pip install -e ".[fast]"' in message and "clone" in message, message
