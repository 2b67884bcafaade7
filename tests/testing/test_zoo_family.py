"""The checker of layer, RMS, group and instance norm is tested as hard as batch norm's: every planted bug of every
layer is caught by the properties named for it, through `bnsym check --layer` (exit 1, the properties named in the
report and the JSON, each failure with its counterexample), and the correct implementations (bnsym's own, torch,
jax and the plain NumPy two-pass of zoo_family.py) pass in float16, float32 and float64. Example counts are small: the
default-size runs of torch and jax are measured in the README, not here."""

import json
from pathlib import Path

import numpy as np
import pytest

from bnsym.testing import CheckFailed, CheckOptions, check_normalization, properties_of
from bnsym.testing.adapters import load
from bnsym.testing.runner import run_properties
from bnsym.testing.strategies import layer_shape_pool
from bnsym.tools.cli import main
from tests import budget
from tests.testing.known_defects import assert_only_torch_float16_eps_failures
from tests.testing.zoo_family import BUGS, LAYERS, TWO_PASS, Bnsym

ZOO = Path(__file__).with_name("zoo_family.py")

#: The bug classes every layer must have a planted bug of, and those of one layer only.
EVERY_LAYER = {"dgamma not summed over the batch", "eps outside the square root",
               "dx missing the term through the statistics", "float16 accumulation"}
OWN = {"layer_norm": {"statistics over the wrong axes (the batch axis)",
                      "statistics over the wrong axes (the last axis only when several are normalised)"},
       "rms_norm": {"RMS norm that centres",
                    "statistics over the wrong axes (the last axis only when several are normalised)"},
       "group_norm": {"group norm grouping channels with a stride instead of contiguously"},
       "instance_norm": {"statistics over the wrong axes (the batch axis: batch norm)"}}


def test_zoo_covers_every_bug_class_of_every_layer():
    for layer in LAYERS:
        classes = {bug.bug_class for bug in BUGS if bug.layer == layer}
        assert EVERY_LAYER | OWN[layer] <= classes, (layer, EVERY_LAYER | OWN[layer] - classes)
    for bug in BUGS:
        assert bug.caught_by and set(bug.caught_by) <= set(properties_of(bug.layer)), \
            f"{bug.name} names properties {bug.layer} does not have"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_planted_bug_exits_1_on_the_command_line_naming_its_properties(bug, tmp_path, capsys):
    """Each planted bug is caught by every property named for it, each failure with its minimal counterexample,
    through `bnsym check FILE:NAME --layer` (the same check_normalization run as the Python API's; one run asserts
    both what the report holds and what the command line shows)."""
    properties = [word for name in bug.caught_by for word in ("--property", name)]
    status = main(["check", f"{ZOO}:{bug.name}", "--layer", bug.layer, "--dtype", bug.dtype, "--max-examples", "20",
                   "--save-dir", str(tmp_path), "--json", str(tmp_path / "result.json"), *properties])
    out = capsys.readouterr().out
    assert status == 1, out
    results = json.loads((tmp_path / "result.json").read_text())["properties"]
    failed = [p["name"] for p in results if p["status"] == "failed"]
    missed = set(bug.caught_by) - set(failed)
    assert not missed, f"{bug.name} ({bug.bug_class}) was not caught by {sorted(missed)}:\n{out}"
    for result in results:  # every failure comes with its minimal counterexample
        if result["status"] == "failed":
            assert result["counterexample"] is not None, f"{result['name']} failed without a counterexample"
    for name in bug.caught_by:
        assert f"  FAIL  {name}" in out or f"        {name}: " in out, f"{name} is not named in the report:\n{out}"
    assert list(tmp_path.glob("*.npz")), "no counterexample was saved"


def test_a_wrong_float64_result_is_not_taken_for_float32_arithmetic():
    """float64_arithmetic notes a float32 computation once in a float32 run (and the finite-difference properties
    are skipped); a y that is wrong beyond what float32 could explain is a bug of its own, and they run and report
    it."""
    from tests.testing.zoo_family import LayerNormInFloat32, LayerNormLastAxisOnly

    report = check_normalization(LayerNormInFloat32(), layer="layer_norm", dtype="float32", max_examples=10)
    assert report.noted == ["float64_arithmetic"] and not report.failed, str(report)
    assert {r.name for r in report.results if r.status == "skipped"} == {"forward_derivative",
                                                                         "backward_finite_differences"}
    with pytest.raises(CheckFailed) as info:
        check_normalization(LayerNormLastAxisOnly(), layer="layer_norm", dtype="float32", max_examples=10,
                            properties=["forward_derivative"])
    assert info.value.report.failed == ["forward_derivative"], str(info.value.report)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("layer", LAYERS)
def test_numpy_two_pass_and_bnsym_pass(layer, dtype):
    report = check_normalization(TWO_PASS[layer](), layer=layer, dtype=dtype, max_examples=budget.CORRECT_FAMILY)
    assert not report.skipped, f"the two-pass offers forward and backward, yet {report.skipped} were skipped"
    report = check_normalization(Bnsym(layer), layer=layer, dtype=dtype, max_examples=budget.CORRECT_FAMILY, order=2)
    assert {"double_backward_reference", "hessian_symmetry"} <= set(report.passed), str(report)


@pytest.mark.parametrize("backend", ["numpy", "numba", "array_api"])
@pytest.mark.parametrize("layer", LAYERS)
def test_bnsym_passes_through_every_backend(layer, backend):
    """The property library on every layer through each backend named explicitly (the test above runs the default
    one): the compiled loops and the array-API kernels must pass as the NumPy kernels do, float32 channel-first
    input included (the compiled group-local loops' layout)."""
    report = check_normalization(Bnsym(layer, backend), layer=layer, dtype="float32",
                                 max_examples=budget.CORRECT_FAMILY_BACKEND, order=2)
    assert {"double_backward_reference", "hessian_symmetry"} <= set(report.passed), str(report)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("target", ["torch", "jax"])
def test_torch_and_jax_pass(target, layer, dtype):
    """On the run's three smallest shapes (each new shape is a compilation for jax): the whole pool, at the default
    number of examples, is what the README's measured `bnsym check torch|jax --layer L` runs check."""
    pytest.importorskip({"torch": "torch", "jax": "flax"}[target])
    report = run_properties(load(target, layer), dtype=np.dtype(dtype), max_examples=budget.CORRECT_FRAMEWORK, seed=0,
                            options=CheckOptions(layer=layer), shapes=layer_shape_pool(layer, 0)[:3])
    if target == "torch" and dtype == "float16" and report.failed:
        assert_only_torch_float16_eps_failures(report, layer)  # PyTorch rounds eps to float16 (known_defects.py)
        return
    assert report.ok and not report.skipped, str(report)


def test_the_bug_classes_document_names_the_properties_that_catch_the_family_bugs():
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "bug-classes.md").read_text()
    section = text[text.index("## The rest of the family"):text.index("## Data-parallel")]
    named = set(re.findall(r"`([a-z_0-9]+)`", section))
    known = {name for layer in LAYERS for name in properties_of(layer)}
    assert named - known <= {"use_fast_variance", "check_normalization"}, f"unknown properties: {named - known}"
    for bug in BUGS:
        assert set(bug.caught_by) <= named, f"{bug.name}: {set(bug.caught_by) - named} missing from the document"
