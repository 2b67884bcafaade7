"""For a layer of your own, the properties the checker runs are those its proved invariances allow, not a list.

Two declarations that bnsym does not ship differ only in centring: tests/data/centred_offset_norm.py (y = (1 + gamma)
x_hat + beta, x_hat centred: shift invariant) and tests/data/uncentred_offset_norm.py (y = (1 + gamma) x / rms(x): not
shift invariant). ``bnsym derive FILE.py:NAME --out DIR`` proves their invariances and writes the verdicts into their
generated packages; the checker reads them there (bnsym.testing.proved), so the first gets ``shift_invariance`` and
``dx_sums_to_zero`` and the second does not, and says so when the data is missing or stale.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from bnsym.spec import unregister
from bnsym.spec.loading import load
from bnsym.symbolic.invariances import RECORDED, fingerprint, recorded
from bnsym.testing import proved as proved_module
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import PROPERTIES, registry
from bnsym.testing.proved import StaleInvarianceData, proved
from bnsym.testing.runner import selection
from bnsym.tools.cli import main
from tests.budget import PLUMBING

DATA = Path(__file__).parents[1] / "data"
CENTRED = f"{DATA / 'centred_offset_norm.py'}:CENTRED_OFFSET_NORM"
UNCENTRED = f"{DATA / 'uncentred_offset_norm.py'}:UNCENTRED_OFFSET_NORM"
#: Each declaration, and whether its y is shift invariant (what the proof must find).
SHIFT_INVARIANT = {CENTRED: True, UNCENTRED: False}
#: The properties that rest on shift invariance or on its gradient form, sum(dx) = 0 (each says so:
#: Property.invariances).
ON_SHIFT = {"shift_invariance", "dx_sums_to_zero", "dgamma_affine_invariance", "dx_invariant_to_dy_shift"}


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """Both layers, registered, each with its kernels (and invariance data) generated into its package on
    sys.path; their specifications by file reference."""
    root = tmp_path_factory.mktemp("proved_layers")
    specs = {reference: load(reference) for reference in SHIFT_INVARIANT}
    for reference, spec in specs.items():
        assert main(["derive", reference, "--out", str(root / spec.kernels_package), "--quiet"]) == 0
    sys.path.insert(0, str(root))
    try:
        yield specs
    finally:
        sys.path.remove(str(root))
        for spec in specs.values():
            for name in [m for m in sys.modules if m.startswith(spec.kernels_package)]:
                del sys.modules[name]
            proved_module._CACHE.pop(spec.name, None)
            unregister(spec.name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("reference", list(SHIFT_INVARIANT))
def test_the_generated_data_is_what_is_proved(layers, reference):
    spec = layers[reference]
    kernels = importlib.import_module(spec.kernels_module)
    assert kernels.INVARIANCES == recorded(spec.name), f"{spec.name}: generated data differs from a fresh proof"
    assert kernels.INVARIANCES_FROM == fingerprint(spec.name)
    assert kernels.INVARIANCES["shift"] is SHIFT_INVARIANT[reference], (
        f"{spec.name}: shift invariance {'not ' if SHIFT_INVARIANT[reference] else ''}proved, but its y is "
        f"{'' if SHIFT_INVARIANT[reference] else 'not '}shift invariant")


@pytest.mark.parametrize("reference", list(SHIFT_INVARIANT))
def test_a_property_that_rests_on_invariances_runs_exactly_when_they_are_proved(layers, reference):
    spec = layers[reference]
    holds = recorded(spec.name)
    found = set(registry(spec.name))
    resting = {name: prop.invariances for name, prop in PROPERTIES.items() if prop.invariances}
    assert ON_SHIFT == {name for name, on in resting.items() if {"shift", "dx_sums_to_zero"} & set(on)}, resting
    for name, invariances in resting.items():
        expected = all(holds[i] for i in invariances)
        assert (name in found) == expected, (
            f"{spec.name}: {name} rests on {', '.join(invariances)} "
            f"({', '.join(f'{i} proved' if holds[i] else f'{i} refuted' for i in invariances)}), but the checker "
            f"{'does not run' if expected else 'runs'} it")
    # Per-element gamma: the Jacobian is not symmetric, so dx_invariant_to_dy_shift runs on neither.
    expected = ON_SHIFT - {"dx_invariant_to_dy_shift"} if SHIFT_INVARIANT[reference] else set()
    assert ON_SHIFT & found == expected, (spec.name, sorted(found))


def test_the_twins_differ_by_the_properties_of_shift_invariance_alone(layers):
    centred, uncentred = (set(registry(layers[r].name)) for r in (CENTRED, UNCENTRED))
    assert centred - uncentred == ON_SHIFT - {"dx_invariant_to_dy_shift"} | {"dbeta_is_sum_dy"}, \
        sorted(centred ^ uncentred)
    assert not uncentred - centred, sorted(uncentred - centred)


def test_the_choice_comes_from_the_data_not_from_the_specification(layers, monkeypatch):
    """Refute shift invariance in the centred layer's data: its shift properties go, though its specification
    still says "centred"."""
    spec = layers[CENTRED]
    monkeypatch.setitem(proved_module._CACHE, spec.name, (spec, {**recorded(spec.name), "shift": False,
                                                                 "dx_sums_to_zero": False}))
    assert spec.centred and not ON_SHIFT & set(registry(spec.name)), sorted(registry(spec.name))


@pytest.mark.parametrize("reference", list(SHIFT_INVARIANT))
def test_bnsym_check_runs_and_skips_as_proved(layers, reference, tmp_path, capsys):
    """bnsym's own functions of each layer pass every property the checker runs on it, and those are the proved
    ones: shift_invariance runs on the centred layer only; asked for by name on the other, it is refused."""
    spec = layers[reference]
    report = tmp_path / "report.json"
    code = main(["check", "bnsym", "--layer", reference, "--max-examples", str(PLUMBING), "--json", str(report),
                 "--save-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    ran = {entry["name"] for entry in json.loads(report.read_text())["properties"]}
    assert ran == set(selection(CheckOptions(layer=spec.name), None)), out
    assert ("shift_invariance" in ran) is SHIFT_INVARIANT[reference], out
    if not SHIFT_INVARIANT[reference]:
        assert main(["check", "bnsym", "--layer", reference, "--property", "shift_invariance"]) == 2
        assert f"shift_invariance: not a property of {spec.name}" in capsys.readouterr().err


# ----- missing or stale data: a clear error that says how to repair it -----

def _fresh(spec, monkeypatch):
    monkeypatch.delitem(proved_module._CACHE, spec.name, raising=False)
    return importlib.import_module(spec.kernels_module)


def test_data_from_another_declaration_is_refused(layers, monkeypatch, capsys):
    spec = layers[CENTRED]
    monkeypatch.setattr(_fresh(spec, monkeypatch), "INVARIANCES_FROM", "sha256:" + "0" * 64)
    with pytest.raises(StaleInvarianceData, match=r"another declaration.*bnsym derive .*centred_offset_norm\.py:"
                                                  r"CENTRED_OFFSET_NORM --out"):
        proved(spec)
    assert main(["check", "bnsym", "--layer", CENTRED, "--list-properties"]) == 2
    assert "Regenerate it with `bnsym derive" in capsys.readouterr().err


def test_a_package_generated_without_invariances_is_refused(layers, monkeypatch):
    spec = layers[UNCENTRED]
    monkeypatch.delattr(_fresh(spec, monkeypatch), "INVARIANCES")
    with pytest.raises(StaleInvarianceData, match=f"no verdict on {', '.join(RECORDED)}"):
        registry(spec.name)


def test_a_missing_package_is_refused(layers, monkeypatch):
    spec = layers[UNCENTRED]
    monkeypatch.delitem(proved_module._CACHE, spec.name, raising=False)
    monkeypatch.setitem(sys.modules, spec.kernels_module, None)  # what an import of an absent module meets
    with pytest.raises(StaleInvarianceData, match=f"{spec.kernels_module} cannot be imported"):
        proved(spec)
