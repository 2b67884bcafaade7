"""The README's example runs: the pytest one-liner on examples/my_batchnorm.py."""

import importlib.util
from pathlib import Path

import pytest

from bnsym.testing import CheckFailed, check_batchnorm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_batchnorm.py"


def _load():
    spec = importlib.util.spec_from_file_location("my_batchnorm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_one_liner_passes_on_my_batchnorm():
    check_batchnorm(_load().MyBatchNorm(), dtype="float32", max_examples=10)


def test_readme_fast_batchnorm_is_caught_in_float32():
    with pytest.raises(CheckFailed, match="forward_reference"):
        check_batchnorm(_load().FastBatchNorm(), dtype="float32", properties=["forward_reference"])


LAYER_NORM = EXAMPLE.with_name("my_layer_norm.py")


def test_readme_layer_norm_passes_and_its_last_axis_bug_is_caught():
    from bnsym.testing import check_normalization

    spec = importlib.util.spec_from_file_location("my_layer_norm", LAYER_NORM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check_normalization(module.MyLayerNorm(), layer="layer_norm", dtype="float32", max_examples=10)
    with pytest.raises(CheckFailed, match="forward_reference"):
        check_normalization(module.LastAxisLayerNorm(), layer="layer_norm", dtype="float32",
                            properties=["forward_reference"])
