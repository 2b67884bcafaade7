"""The checker on the normalisation variants (Gemma's RMS norm, adaptive layer norm): every bug real implementations
of a variant shipped (tests/testing/zoo_variants.py) is caught by the properties named for it, through
check_normalization and through `bnsym check --layer`, and the correct implementations pass in float16, float32 and
float64. A variant added later is data in zoo_variants.py (its CORRECT and BUGS entries), or a zoo of its own with the
same two names, tested by its own file (OWN_ZOOS: batch renormalisation's, whose training step needs its running
statistics and a convention; fused residual add + RMS norm's, whose protocol has field inputs and outputs); a
built-in variant with neither fails test_every_built_in_variant_has_a_zoo."""

import json
from pathlib import Path

import pytest

from bnsym.spec import BUILT_IN, spec
from bnsym.testing import CheckFailed, check_normalization, properties_of
from bnsym.tools.cli import main
from tests import budget
from tests.testing import zoo_batch_renorm, zoo_fused_add
from tests.testing.caught import assert_caught
from tests.testing.zoo_variants import BUGS, CORRECT

ZOO = Path(__file__).with_name("zoo_variants.py")

#: Variants whose zoo is a module of its own, tested by its own file: layer -> (its module, its correct
#: implementations, its planted bugs). Read here, not copied into zoo_variants.py.
OWN_ZOOS = {"batch_renorm": (zoo_batch_renorm, zoo_batch_renorm.CORRECT, zoo_batch_renorm.BUGS),
            "fused_add_rms_norm": (zoo_fused_add, zoo_fused_add.CORRECT, zoo_fused_add.BUGS)}

#: The bug classes each variant's zoo must have a planted bug of (what its real implementations shipped).
BUG_CLASSES = {
    "gemma_rms_norm": {"scale by gamma instead of 1 + gamma", "offset applied in the forward but not in the gradient",
                       "eps outside the square root", "computed in the input's dtype (float16 squares)",
                       "float64 input silently computed in float32"},
    "adaptive_layer_norm": {"scale applied as scale, not 1 + scale", "shift and scale swapped",
                            "per-sample gradients summed over the batch", "modulation broadcast over the wrong axis",
                            "one sample's modulation applied to the whole batch",
                            "layer norm with its elementwise affine left on"},
}


def _variants():
    """The built-in layers that declare their own forward pass: the variants, as opposed to the textbook layers."""
    return [name for name in BUILT_IN if spec(name).forward is not None]


def test_every_built_in_variant_has_a_zoo():
    for layer in _variants():
        if layer in OWN_ZOOS:
            module, correct, bugs = OWN_ZOOS[layer]
            where = module.__name__.rpartition(".")[2]
        else:
            correct, bugs, where = CORRECT.get(layer), [bug for bug in BUGS if bug.layer == layer], "zoo_variants"
        assert correct, f"{layer} has no correct implementation in {where}.CORRECT"
        assert bugs, f"{layer} has no planted bug in {where}.BUGS"
        for bug in bugs:
            unknown = set(bug.caught_by) - set(properties_of(layer))
            assert bug.caught_by and not unknown, f"{layer}: {bug.name} names properties it does not have: {unknown}"


def test_zoo_covers_the_bug_classes_and_names_known_properties():
    for layer, classes in BUG_CLASSES.items():
        planted = {bug.bug_class for bug in BUGS if bug.layer == layer}
        assert classes <= planted, f"{layer}: no planted bug of {sorted(classes - planted)}"
    for bug in BUGS:
        unknown = set(bug.caught_by) - set(properties_of(bug.layer))
        assert bug.caught_by and not unknown, f"{bug.name} names properties {bug.layer} does not have: {unknown}"


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_planted_bug_is_caught_by_its_properties(bug):
    with pytest.raises(CheckFailed) as info:
        check_normalization(bug.impl(), layer=bug.layer, dtype=bug.dtype, properties=list(bug.caught_by),
                            max_examples=budget.VARIANT_BUG)
    assert_caught(bug, info.value.report)


@pytest.mark.parametrize("bug", [next(bug for bug in BUGS if bug.layer == layer) for layer in CORRECT],
                         ids=lambda bug: bug.name)
def test_a_planted_bug_of_each_variant_exits_1_on_the_command_line(bug, tmp_path, capsys):
    """`bnsym check FILE:NAME --layer VARIANT`: exit 1, the properties named in the report and the JSON, a
    counterexample saved (one bug per variant: the Python API above runs them all)."""
    properties = [word for name in bug.caught_by for word in ("--property", name)]
    status = main(["check", f"{ZOO}:{bug.name}", "--layer", bug.layer, "--dtype", bug.dtype,
                   "--max-examples", str(budget.COMMAND_LINE), "--save-dir", str(tmp_path),
                   "--json", str(tmp_path / "result.json"), *properties])
    out = capsys.readouterr().out
    assert status == 1, out
    failed = [p["name"] for p in json.loads((tmp_path / "result.json").read_text())["properties"]
              if p["status"] == "failed"]
    assert set(bug.caught_by) <= set(failed), out
    for name in bug.caught_by:
        assert f"  FAIL  {name}" in out or f"        {name}: " in out, f"{name} is not named in the report:\n{out}"
    assert list(tmp_path.glob("*.npz")), "no counterexample was saved"


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize(("layer", "name"), [pytest.param(layer, name, id=f"{layer}-{name}")
                                             for layer in CORRECT for name in CORRECT[layer]])
def test_correct_implementation_passes(layer, name, dtype):
    report = check_normalization(CORRECT[layer][name](), layer=layer, dtype=dtype,
                                 max_examples=budget.CORRECT_VARIANT)
    assert not report.skipped, f"{name} offers forward and backward, yet {report.skipped} were skipped"


def test_the_bug_classes_document_names_the_properties_that_catch_the_variant_bugs():
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "bug-classes.md").read_text()
    start = text.index("## The variants")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else len(text)]
    named = set(re.findall(r"`([a-z_0-9]+)`", section))
    for bug in BUGS:
        assert set(bug.caught_by) <= named, f"{bug.name}: {set(bug.caught_by) - named} missing from the document"
    for layer in CORRECT:
        assert layer in section, f"the document's section on the variants does not name {layer}"
