"""The built-in layers are one declaration file each (bnsym/layers/): found by scanning the folder, one LayerSpec
per file named after it, importable with NumPy only, and the table (bnsym.spec.SPECS) every caller reads is made from
them; a specification's own facts (neutral values, forward, running statistics) are checked when it is made."""

import subprocess
import sys
from pathlib import Path

import pytest

import bnsym
import bnsym.layers
from bnsym.spec import BUILT_IN, SPECS, LayerSpec, TrailingAxes, spec
from bnsym.spec.layer_spec import RMS_REGIMES

FOLDER = Path(bnsym.layers.__file__).parent


def test_every_file_of_the_folder_is_a_built_in_layer_batch_norm_first_then_by_name():
    files = sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__")
    assert BUILT_IN == ("batch_norm", *sorted(set(files) - {"batch_norm"})), BUILT_IN
    assert {"batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "gemma_rms_norm"} <= set(files)


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_declaration_file_holds_its_layers_one_specification(name):
    module = sys.modules.get(f"bnsym.layers.{name}") or __import__(f"bnsym.layers.{name}", fromlist=["_"])
    found = [value for value in vars(module).values() if isinstance(value, LayerSpec)]
    assert found == [SPECS[name]] and spec(name) is found[0], f"bnsym/layers/{name}.py declares {found}"


def test_the_table_keeps_its_names_for_every_caller():
    from bnsym.spec import layers as table

    assert table.SPECS is SPECS and table.BUILT_IN is BUILT_IN and table.LayerSpec is LayerSpec
    assert table.spec is spec and table.RMS_REGIMES is RMS_REGIMES


def test_a_declaration_imports_with_numpy_only():
    code = ("import sys; import bnsym.layers.gemma_rms_norm, bnsym.spec; import bnsym; bnsym.gemma_rms_norm; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sympy', 'torch', 'hypothesis'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", f"importing the declarations imported {out.stdout.strip()}"


@pytest.fixture
def extra_folder(monkeypatch, tmp_path):
    """Drops declaration files into a folder that bnsym.layers scans as well as its own (the modules imported from
    it are forgotten afterwards)."""
    added = []

    def add(files: dict[str, str]) -> None:
        for name, text in files.items():
            (tmp_path / f"{name}.py").write_text(text)
            added.append(f"bnsym.layers.{name}")
        monkeypatch.setattr(bnsym.layers, "__path__", [*bnsym.layers.__path__, str(tmp_path)])

    yield add
    for module in added:
        sys.modules.pop(module, None)


_SCALED_RMS = '''
from bnsym.spec.groupings import TrailingAxes
from bnsym.spec.layer_spec import RMS_REGIMES, LayerSpec

{variable} = LayerSpec("{name}", "Scaled RMS normalisation", "scaled RMS norm", "rms", TrailingAxes(), eps=1e-6,
                       regimes=RMS_REGIMES, group="a row", statistics_over="the last axis",
                       parameters_are="the normalised shape")
'''


def test_adding_a_file_adds_a_layer(extra_folder):
    extra_folder({"aa_scaled_rms": _SCALED_RMS.format(variable="A", name="aa_scaled_rms")})
    names = [layer.name for layer in bnsym.layers.declared()]
    assert names == ["batch_norm", *sorted([*BUILT_IN[1:], "aa_scaled_rms"])], names


@pytest.mark.parametrize(("text", "message"), [
    (_SCALED_RMS.format(variable="A", name="zz_other_name"), "declares the layer 'zz_other_name'"),
    (_SCALED_RMS.format(variable="A", name="zz_bad") + "B = A\n", "exactly one"),
    ("X = 1\n", "exactly one"),
], ids=["misnamed", "two", "none"])
def test_a_declaration_file_with_other_than_its_one_layer_is_refused(extra_folder, text, message):
    extra_folder({"zz_bad": text})
    with pytest.raises(ValueError, match=message):
        bnsym.layers.declared()


# ----- a specification's own facts -----

def _spec(**fields):
    base = dict(name="test_made_up", title="Made-up", short="made-up", statistic="rms", grouping=TrailingAxes(),
                eps=1e-6, regimes=RMS_REGIMES, group="a row", statistics_over="the last axis",
                parameters_are="the normalised shape")
    return LayerSpec(**{**base, **fields})


def test_neutral_values_default_to_the_standard_ones_and_can_be_declared():
    assert spec("layer_norm").neutral_values == {"gamma": 1, "beta": 0}
    assert spec("rms_norm").neutral_values == {"gamma": 1}
    assert spec("gemma_rms_norm").neutral_values == {"gamma": 0}
    assert _spec(neutral={"gamma": 0.0}) == _spec(neutral=(("gamma", 0.0),)), "neutral is a value, however given"
    hash(_spec(neutral={"gamma": 0}))


def test_a_neutral_value_for_a_parameter_the_layer_does_not_have_is_refused():
    with pytest.raises(ValueError, match="neutral gives a value for beta, which is not a parameter of a layer of "
                                         "statistic 'rms'"):
        _spec(neutral={"beta": 0})
    with pytest.raises(TypeError, match="must be a real number"):
        _spec(neutral={"gamma": "zero"})


def test_a_forward_that_is_neither_a_function_nor_module_colon_function_is_refused():
    with pytest.raises(TypeError, match="forward must be None"):
        _spec(forward="bnsym.layers.gemma_rms_norm.forward")
    assert _spec(forward="bnsym.layers.gemma_rms_norm:forward").forward == "bnsym.layers.gemma_rms_norm:forward"


def test_running_statistics_need_a_centred_layer():
    with pytest.raises(ValueError, match="running_statistics needs statistic 'centred'"):
        _spec(running_statistics=True)


@pytest.mark.parametrize(("changes", "message"), [
    ({"field_inputs": ("residual",), "field_outputs": ("h",), "normalises": "h"},
     "a layer with field inputs or outputs .* cannot yet keep running statistics"),
    ({"running": {"running_mean": "mean"}}, "running must name two running statistics"),
    ({"running": {"running_var": "var", "running_mean": "mean"}}, "running must name two .* running_mean .* first"),
])
def test_a_specification_the_runtime_and_checker_cannot_serve_is_refused_when_it_is_made(changes, message):
    """Combinations that the protocols and the running-statistics update do not handle (field inputs with running
    statistics; running statistics other than a mean and one spread) fail at the declaration, naming the layer, not
    later inside the checker or a kernel."""
    import dataclasses

    with pytest.raises(ValueError, match=f"LayerSpec 'batch_renorm': {message}"):
        dataclasses.replace(spec("batch_renorm"), **changes)


def test_a_running_standard_deviation_of_zero_is_refused_a_running_variance_of_zero_is_not():
    """running_std divides (r = sigma / running_std, eval x_hat = (x - mean) / running_std): 0 would give NaN with
    no error; a running variance of 0 is fine (it is used as var + eps)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x, gamma, beta = rng.normal(size=(8, 3)), np.ones(3), np.zeros(3)
    with pytest.raises(ValueError, match=r"running_std must be > 0 \(and not NaN\)"):
        bnsym.batch_renorm.forward(x, gamma, beta, x.mean(0), np.zeros(3))
    with pytest.raises(ValueError, match=r"running_std must be > 0"):
        bnsym.batch_renorm.inference(x, gamma, beta, x.mean(0), np.zeros(3))
    assert np.isfinite(bnsym.batch_norm.inference(x, gamma, beta, x.mean(0), np.zeros(3))).all()
