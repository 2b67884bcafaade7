"""What each entry point imports: `import bnsym` needs only NumPy. (That `bnsym derive` never imports Hypothesis is
shown by the processes of tests/test_drift.py::test_generation_does_not_depend_on_hash_seed_or_directory, which run
it anyway.)"""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return {name.split(".")[0] for name in out}


def test_import_bnsym_needs_only_numpy():
    loaded = _modules_after("import bnsym; bnsym.batch_norm_forward")
    assert "sympy" not in loaded, "import bnsym imported SymPy"
    assert "hypothesis" not in loaded, "import bnsym imported Hypothesis"
