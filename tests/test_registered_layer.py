"""A layer declared in a file of its own gets everything a built-in layer has, with no edit to bnsym.

tests/data/last_axis_norm.py declares layer norm over the last axis only, under another name. Loading it
(``FILE.py:NAME``) and generating its kernels into a package of its own is all it takes: its derivation, its public
functions on every backend, and the checker's strategies and properties follow from the declaration.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import bnsym
from bnsym.runtime.functions import functions
from bnsym.spec import SPECS, unregister
from bnsym.spec.loading import load
from bnsym.tools.cli import main
from bnsym.tools.derive import own_layer_files, stale_files

DECLARATION = Path(__file__).parent / "data" / "last_axis_norm.py"
REFERENCE = f"{DECLARATION}:LAST_AXIS_NORM"


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    """The declared layer, registered, with its kernels generated into ``last_axis_kernels`` on sys.path."""
    root = tmp_path_factory.mktemp("own_layer")
    spec = load(REFERENCE)
    assert main(["derive", REFERENCE, "--out", str(root / spec.kernels_package)]) == 0
    _, files = own_layer_files(REFERENCE, root / spec.kernels_package)
    sys.path.insert(0, str(root))
    try:
        yield spec, root, files
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith(spec.kernels_package)]:
            del sys.modules[name]
        unregister(spec.name)
        shutil.rmtree(root, ignore_errors=True)


def _inputs(rng, shape=(4, 3, 7)):
    x = 5.0 + 3.0 * rng.normal(size=shape)
    gamma, beta = rng.normal(size=shape[-1:]), rng.normal(size=shape[-1:])
    dy = rng.normal(1.0, 2.0, size=shape)
    return x, gamma, beta, dy


def test_loading_registers_the_layer_under_its_own_name(layer):
    spec, _, _ = layer
    assert SPECS["last_axis_norm"] is spec
    assert load(REFERENCE) is spec, "loading the same file again must give the same layer, not a clash"


def test_bnsym_derive_writes_its_files_and_checks_them(layer, capsys):
    spec, root, files = layer
    package = root / spec.kernels_package
    written = sorted(p.name for p in package.iterdir() if p.is_file())
    assert written == ["__init__.py", "last_axis_norm.md", "last_axis_norm.py", "last_axis_norm_array_api.py",
                       "last_axis_norm_numba.py"], written
    assert stale_files(package, files) == [], "regenerating must give the same bytes"
    assert main(["derive", REFERENCE, "--out", str(package), "--check"]) == 0
    document = (package / "last_axis_norm.md").read_text()
    assert "Last-axis normalisation" in document and "\\overline" in document
    kernels = package / "last_axis_norm.py"
    original = kernels.read_text()
    try:
        kernels.write_text(original.replace("invstd", "inv_std", 1))
        assert main(["derive", REFERENCE, "--out", str(package), "--check"]) == 1
        assert "last_axis_norm.py" in capsys.readouterr().err
    finally:
        kernels.write_text(original)


def test_bnsym_derive_writes_nothing_when_the_cross_check_fails(tmp_path, capsys, monkeypatch):
    """A closed form that differs from brute force is an error of the derivation: exit 1, nothing written."""
    from bnsym.symbolic import cross_check

    def differs(layer, sizes=cross_check.SIZES):
        raise cross_check.CrossCheckError("last_axis_norm backward dx at element 0 differs from brute force at M = 2")

    monkeypatch.setattr(cross_check, "cross_check", differs)
    out = tmp_path / "last_axis_kernels"
    assert main(["derive", REFERENCE, "--out", str(out)]) == 1
    assert "differs from brute force at M = 2; nothing was written" in capsys.readouterr().err
    assert not out.exists()


def test_bnsym_derive_refuses_an_out_directory_that_is_not_its_package(tmp_path, capsys):
    assert main(["derive", REFERENCE, "--out", str(tmp_path / "elsewhere")]) == 2
    assert "last_axis_kernels" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["forward", "backward", "double_backward", "jvp"])
def test_its_functions_equal_layer_norm_over_the_last_axis_bit_for_bit(layer, verb):
    """Same forward pass, same grouping on these inputs: the same derivation, so the same bits on NumPy."""
    spec, _, _ = layer
    own = functions(spec)
    rng = np.random.default_rng(7)
    x, gamma, beta, dy = _inputs(rng)
    y, mean, invstd = bnsym.layer_norm.forward(x, gamma, beta, eps=1e-5, backend="numpy")
    if verb == "forward":
        expected, got = (y, mean, invstd), own.forward(x, gamma, beta, eps=1e-5, backend="numpy")
    elif verb == "backward":
        expected = bnsym.layer_norm.backward(dy, x, gamma, mean, invstd, backend="numpy")
        got = own.backward(dy, x, gamma, mean, invstd, backend="numpy")
    elif verb == "double_backward":
        ggx, gggamma, ggbeta = rng.normal(size=x.shape), rng.normal(size=7), rng.normal(size=7)
        expected = bnsym.layer_norm.double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd,
                                                    backend="numpy")
        got = own.double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd, backend="numpy")
    else:
        tx, tgamma, tbeta = rng.normal(size=x.shape), rng.normal(size=7), rng.normal(size=7)
        expected = bnsym.layer_norm.jvp(x, gamma, beta, tx, tgamma, tbeta, eps=1e-5, backend="numpy")
        got = own.jvp(x, gamma, beta, tx, tgamma, tbeta, eps=1e-5, backend="numpy")
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(a, b, err_msg=f"{verb} result {index} differs from layer norm's")


def test_its_options_and_shapes_are_validated_by_its_grouping(layer):
    spec, _, _ = layer
    own = functions(spec)
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match="last axis"):
        own.forward(x, None, None, axis=1)
    with pytest.raises(ValueError, match="gamma"):
        own.forward(x, np.ones(3), None)
    with pytest.raises(TypeError, match="unexpected keyword"):
        own.forward(x, None, None, num_groups=2)
    y, mean, invstd = own.forward(x + np.arange(4.0), None, None)
    assert mean.shape == (2, 3) and y.shape == x.shape


def test_its_compiled_and_array_api_kernels_run(layer):
    spec, _, _ = layer
    own = functions(spec)
    rng = np.random.default_rng(3)
    x, gamma, beta, dy = _inputs(rng, (6, 9))
    expected = own.forward(x, gamma, beta, backend="numpy")
    pytest.importorskip("numba")
    compiled = own.forward(x, gamma, beta, backend="numba")
    for a, b in zip(compiled, expected):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    torch = pytest.importorskip("torch")
    pytest.importorskip("array_api_compat")
    tensors = own.forward(torch.from_numpy(x), torch.from_numpy(gamma), torch.from_numpy(beta), backend="array_api")
    for a, b in zip(tensors, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-13, atol=1e-13)


def test_the_checker_draws_its_examples_and_runs_its_properties(layer):
    """Strategies and properties follow from the declaration: the layer's examples have its groups, and its
    properties are those that apply to a centred layer with per-position parameters, as for layer norm."""
    from bnsym.testing import strategies
    from bnsym.testing.properties import registry

    spec, _, _ = layer
    example = strategies.layer_examples(spec.name, dtype="float64").example()
    assert example.layer == spec.name and example.gamma.shape == example.x.shape[-1:], example
    assert example.layout.statistics_shape == example.x.shape[:-1]
    assert set(registry(spec.name)) == set(registry("layer_norm")), "a centred layer over rows has layer norm's"


def test_bnsym_check_takes_the_layer_from_its_file(layer, tmp_path, capsys):
    """`bnsym check --layer FILE.py:NAME`: bnsym's own functions of the layer pass every property; an
    implementation that normalises over every trailing axis (layer norm's rule, not this layer's) is caught."""
    spec, _, _ = layer
    saved = ["--save-dir", str(tmp_path), "--max-examples", "10"]
    assert main(["check", "bnsym", "--layer", REFERENCE, *saved]) == 0, capsys.readouterr().out
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "import numpy as np\n"
        "def forward(x, gamma, beta, eps):\n"
        "    axes = tuple(range(1, x.ndim))  # every axis but the batch axis: not the last one only\n"
        "    mean = x.mean(axis=axes, keepdims=True)\n"
        "    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)\n"
        "    return gamma * (x - mean) / np.sqrt(var + eps) + beta\n")
    assert main(["check", f"{wrong}:forward", "--layer", REFERENCE, "--property", "forward_reference",
                 *saved]) == 1
    assert "FAIL  forward_reference" in capsys.readouterr().out


def test_docs_own_layers_declares_this_layer_word_for_word():
    """docs/own-layers.md walks through this declaration: the two must not drift apart."""
    document = (Path(__file__).parents[1] / "docs" / "own-layers.md").read_text()
    declaration = DECLARATION.read_text().split('"""\n\n', 1)[1]
    assert declaration in document, "tests/data/last_axis_norm.py and docs/own-layers.md declare different layers"
