"""The built-in targets of ``bnsym check --shards``: bnsym-torch passes in float32 and float64 over 3 gloo processes
(through the API: the command line's sharded path is tested on the zoo, and each load starts its own workers), and
on the command line with --json and --isolate (loaded in the isolated child, never in the checker), torch-sync
reports PyTorch's own reason for not running on a machine without a GPU, and jax passes over 4 host CPU devices with
equal shards (in a fresh process: JAX fixes its number of devices when it starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnsym.testing import CheckOptions, check_batchnorm
from bnsym.testing.runner import properties_of_run
from bnsym.testing.sharded_adapters import load
from bnsym.tools.cli import main
from tests import budget

pytest.importorskip("torch.distributed")
ROOT = Path(__file__).resolve().parents[2]
#: Every sharded property, those of --convention included.
SHARDED = tuple(properties_of_run(CheckOptions(shards=3, convention="torch")))


@pytest.fixture(scope="module")
def bnsym_torch():
    impl = load("bnsym-torch", 3)
    yield impl
    impl.close()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bnsym_torch_passes(bnsym_torch, dtype):
    report = check_batchnorm(bnsym_torch, shards=3, dtype=dtype, convention="torch",
                             max_examples=budget.CORRECT_SHARDED_PROCESSES)
    assert report.passed == list(SHARDED), str(report)


def test_bnsym_torch_with_json_and_isolate_writes_the_json_and_runs_in_the_child(tmp_path, monkeypatch, capsys):
    """`bnsym check bnsym-torch --shards 3 --json out.json --isolate`: the adapter (and its gloo workers) is built
    in the isolated child only (building it in this process fails here), the JSON has every property's verdict, and
    the child is gone afterwards."""
    from bnsym.testing import isolation, sharded_adapters

    def not_here(*args, **kwargs):
        raise AssertionError("the sharded adapter was built in the checker's own process, not in the isolated child")

    monkeypatch.setattr(sharded_adapters._TorchShards, "__init__", not_here)
    children = []
    original = isolation.IsolatedImplementation.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        children.append(self)

    monkeypatch.setattr(isolation.IsolatedImplementation, "__init__", spy)
    path = tmp_path / "out.json"
    code = main(["check", "bnsym-torch", "--shards", "3", "--json", str(path), "--isolate", "--timeout", "120",
                 "--max-examples", "5", "--convention", "torch", "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    (child,) = children
    assert child.pid is None, "the isolated child outlived the run"
    result = json.loads(path.read_text())
    assert result["status"] == "passed" and result["options"]["shards"] == 3, result["options"]
    assert [p["name"] for p in result["properties"] if p["status"] == "passed"] == list(SHARDED), out
    assert result["implementation"] == "bnsym.torch.SyncBatchNorm over 3 gloo processes"


def test_torch_sync_reports_pytorch_s_reason_without_a_gpu(capsys):
    import torch

    code = main(["check", "torch-sync", "--shards", "2", "--max-examples", "5"])
    out = capsys.readouterr().out
    if torch.cuda.is_available():
        assert code == 0, out
        assert "0 failed, 0 skipped" in out, out
    else:  # nothing checked is not a pass: exit 5, with PyTorch's reason
        assert code == 5, out
        assert "SKIP" in out and "expected input tensor to be on GPU" in out, out
        assert "nothing was checked" in out and "0 passed, 0 failed" in out, out


JAX_SCRIPT = """
import sys
from bnsym.tools.cli import main
from tests import budget
from bnsym.testing import CheckFailed, check_batchnorm
from bnsym.testing.sharded_adapters import jax_implementation

codes = [main(["check", "jax", "--shards", "4", "--dtype", dtype, "--max-examples", "EXAMPLES",
                   "--convention", "flax"])
         for dtype in ("float64", "float32")]
# Why the jax target takes equal shards: uneven ones, padded and masked (Flax's only way), are rejected.
try:
    check_batchnorm(jax_implementation(4, masked=True), shards=4, max_examples=30,
                    properties=["sharded_forward_reference"])
    print("MASKED UNEVEN SHARDS PASSED")
except CheckFailed as failure:
    print("masked uneven shards:", failure.report.failed)
sys.exit(max(codes))
"""


@pytest.mark.slow
def test_bnsym_check_jax_shards_4_exits_0_in_both_dtypes_and_uneven_shards_fail():
    pytest.importorskip("flax")
    script = JAX_SCRIPT.replace("EXAMPLES", str(budget.CORRECT_SHARDED_PROCESSES))
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("equal shards (the implementation takes no others)") == 2, result.stdout
    assert result.stdout.count(f"{len(SHARDED)} passed, 0 failed, 0 skipped") == 2, result.stdout
    assert "masked uneven shards: ['sharded_forward_reference']" in result.stdout, result.stdout
