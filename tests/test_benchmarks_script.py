"""benchmarks/run.py without PyTorch says what to install instead of a traceback (never timed: it exits before
measuring anything)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_without_torch_say_what_to_install(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name="torch")
        sys.meta_path.insert(0, _NoTorch())
    """))
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "pip install torch==2.13.0" in result.stderr and "Traceback" not in result.stderr, result.stderr
