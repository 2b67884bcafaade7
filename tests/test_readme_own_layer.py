"""The README's own-layer walk-through ("A layer of your own") runs as written, in a new folder.

The section's Python blocks that start with a file name (``# scale_norm.py``) are written into an empty folder under
that name, and every line of its shell blocks runs there, in order, with the exit status its comment states
(``# exits 1``; 0 otherwise). ``bnsym`` and ``python`` are the test's own interpreter and this checkout of bnsym
(``bnsym`` a console script as pip writes it, running ``bnsym.tools.cli:main``), so the steps run against the code
under test wherever bnsym is installed. Then each step's result is checked for what it claims:
the package that ``bnsym derive`` wrote, the snippet's numbers against ScaleNorm's definition in NumPy and finite
differences, and the sample output of the failing check, which must be the real output of its command (but for
the hashes in counterexample file names, which cover the folder's path).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_readme import README, SAMPLE, normalised, own_layer_section

SECTION = own_layer_section(README)
#: Python blocks of the section that are files: their first line names the file.
FILES = dict(re.findall(r"^```python\n# (\w+\.py)\n(.*?)^```", SECTION, flags=re.S | re.M))
TIMEOUT = 180  # seconds for one step; each takes a few


def _steps() -> list[tuple[str, int]]:
    """Every command line of the section's shell blocks, in order, with the exit status its comment states."""
    steps = []
    for block in re.findall(r"^```bash\n(.*?)^```", SECTION, flags=re.S | re.M):
        for line in block.splitlines():
            command, _, comment = line.partition("#")
            if command.strip():
                status = re.search(r"\bexits (\d+)", comment)
                steps.append((command.strip(), int(status.group(1)) if status else 0))
    return steps


def _environment(folder: Path) -> dict[str, str]:
    """PATH with ``bnsym`` and ``python`` of this interpreter first; this checkout importable. ``bnsym`` is the
    console script pip writes for ``[project.scripts]``: a Python script in a bin directory, so that, as for a user,
    the first entry of its sys.path is that directory, not the folder it runs in."""
    bin_dir = folder.parent / f"{folder.name}-bin"
    bin_dir.mkdir()
    scripts = {"bnsym": f"#!{sys.executable}\nimport sys\nfrom bnsym.tools.cli import main\n"
                        "if __name__ == '__main__':\n    sys.exit(main())\n",
               "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'}
    for name, text in scripts.items():
        script = bin_dir / name
        script.write_text(text)
        script.chmod(0o755)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env.setdefault("BNSYM_BACKGROUND_COMPILE", "0")
    return env


def _run(command: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The folder after every step of the walk-through, and each step's result."""
    folder = tmp_path_factory.mktemp("scalenorm-demo")
    for name, text in FILES.items():
        (folder / name).write_text(f"# {name}\n{text}")
    env = _environment(folder)
    results = {command: (_run(command, folder, env), status) for command, status in _steps()}
    return folder, env, results


def test_the_section_has_every_step():
    assert set(FILES) == {"scale_norm.py", "use_scale_norm.py", "wrong_scale_norm.py"}, sorted(FILES)
    commands = [command for command, _ in _steps()]
    assert any(c.startswith("bnsym derive scale_norm.py:SCALE_NORM --out ") for c in commands), commands
    assert "python use_scale_norm.py" in commands, commands
    assert [status for c, status in _steps() if c.startswith("bnsym check")] == [0, 1], _steps()
    declaration = FILES["scale_norm.py"].strip().splitlines()
    assert len(declaration) <= 16, f"the README's declaration grew to {len(declaration)} lines"


def test_every_step_exits_as_the_readme_says(walked):
    _, _, results = walked
    for command, (result, status) in results.items():
        assert result.returncode == status, (f"`{command}` exited {result.returncode}, the README says {status}\n"
                                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")


def test_derive_wrote_the_kernels_package(walked):
    folder, env, results = walked
    (derived,) = [result for command, (result, _) in results.items() if command.startswith("bnsym derive")]
    assert "cross-checked scale_norm's backward, double backward and forward mode against brute force" in \
        derived.stdout, derived.stdout
    package = folder / "scale_norm_kernels"
    written = sorted(p.name for p in package.iterdir() if p.is_file())
    assert written == ["__init__.py", "scale_norm.md", "scale_norm.py", "scale_norm_array_api.py",
                       "scale_norm_numba.py"], written
    document = (package / "scale_norm.md").read_text()
    assert "Scale normalisation" in document and "\\overline{\\gamma}" in document
    check = _run("bnsym derive scale_norm.py:SCALE_NORM --out scale_norm_kernels --check", folder, env)
    assert check.returncode == 0, f"the drift check of the package just written fails:\n{check.stdout}{check.stderr}"


def test_the_snippet_computes_scale_norm(walked):
    """y against the definition in NumPy; dx and dg against central differences of it along random directions
    (<dy, y(x + h u, g + h v)>: the snippet's gradients must be those of ScaleNorm with one scalar g)."""
    folder, env, _ = walked
    saved = folder / "snippet-results.npz"
    script = ("import runpy, numpy as np; n = runpy.run_path('use_scale_norm.py'); "
              f"np.savez({str(saved)!r}, **{{k: n[k] for k in ('x', 'dy', 'g', 'y', 'dx', 'dg')}})")
    result = _run(f"python -c {shlex.quote(script)}", folder, env)
    assert result.returncode == 0, result.stderr
    r = np.load(saved)
    x, dy, g = r["x"], r["dy"], float(r["g"])

    def scale_norm(x, g):
        return g * x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-5)

    np.testing.assert_allclose(r["y"], scale_norm(x, g), rtol=1e-13, atol=1e-13)
    assert r["dg"].shape == () and r["dx"].shape == x.shape
    rng = np.random.default_rng(1)
    for _ in range(3):
        u, v, h = rng.normal(size=x.shape), rng.normal(), 1e-5
        numeric = (np.sum(dy * scale_norm(x + h * u, g + h * v)) - np.sum(dy * scale_norm(x - h * u, g - h * v))) / (
            2 * h)
        analytic = np.sum(r["dx"] * u) + float(r["dg"]) * v
        assert abs(analytic - numeric) <= 1e-6 * (1 + abs(numeric)), (analytic, numeric)


def _without_hashes(text: str) -> str:
    """The output with the hashes of counterexample file names left out: a hash covers the absolute path of the
    declaration file (a counterexample file records where the layer lives), so it differs from folder to folder."""
    return re.sub(r"-[0-9a-f]{8}\.npz\b", "-<hash>.npz", normalised(text))


def test_the_sample_output_is_the_real_output(walked):
    folder, env, _ = walked
    samples = SAMPLE.findall(SECTION)
    assert samples, "the own-layer section lost its sample output of bnsym check"
    for command, output in samples:
        result = _run(command, folder, env)
        assert _without_hashes(result.stdout) == _without_hashes(output), \
            f"the README's sample output of `{command}` is not what it prints; it prints:\n{result.stdout}"


def test_the_failing_check_names_the_gradient_of_g(walked):
    _, _, results = walked
    (failing,) = [result for command, (result, status) in results.items() if status == 1]
    assert re.search(r"FAIL .*dgamma_is_sum_dy_xhat", failing.stdout), failing.stdout
    assert "PASS  forward_reference" in failing.stdout, "the wrong implementation's forward is right"
