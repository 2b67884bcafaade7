"""What each entry point imports: `import bnsym` needs only NumPy, and `bnsym derive` never imports Hypothesis."""

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


def test_bnsym_derive_does_not_import_hypothesis():
    loaded = _modules_after("from bnsym.tools import cli; assert cli.main(['derive', '--check']) == 0")
    assert "sympy" in loaded, "the check did not run the derivation"
    assert "hypothesis" not in loaded, "bnsym derive imported Hypothesis"
