"""Regenerate every generated file, or check that the checked-in ones are up to date.

The generated files and the function that renders each are listed once, in :data:`GENERATED_FILES`. Rendering is
pure (no clock, no paths, no dict order, no formatter), so the same SymPy version always gives the same bytes.
Writes are atomic: each file is written next to its destination and renamed over it.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GENERATED_FILES", "GeneratedFile", "find_root", "layer_files", "own_layer_files", "recorded_sympy_versions",
           "regenerate", "stale_files"]


@dataclass(frozen=True)
class GeneratedFile:
    """A file under the source tree whose whole text is ``render()``."""

    path: str
    render: Callable[[], str]


def _layer_module(name: str, package: str) -> Callable[[], str]:
    def render() -> str:
        from bnsym.codegen.layer_kernels import kernels
        from bnsym.codegen.module import render_module
        from bnsym.symbolic.layers import LAYERS

        title = LAYERS[name].title
        docstring = (
            f"{title} kernels generated from the symbolic derivation (bnsym.symbolic.layers, layer {name!r}).\n\n"
            f"The derivation, step by step, is derivations/{name}.md. These kernels take arrays already arranged "
            "for\nbroadcasting and validate nothing: call them through the public functions in bnsym.\n")
        from bnsym.symbolic.invariances import fingerprint, recorded

        return render_module(kernels(name), source="bnsym/symbolic/layers.py", docstring=docstring,
                             invariances=recorded(name), invariances_from=fingerprint(name))
    return render


def _layer_numba_module(name: str, package: str) -> Callable[[], str]:
    def render() -> str:
        from bnsym.codegen.layer_kernels import kernels
        from bnsym.codegen.module import render_numba_module
        from bnsym.symbolic.layers import LAYERS

        title = LAYERS[name].title
        docstring = (
            f"{title} kernels compiled by Numba: fused loops printed from the same derivation as\n"
            f"{package}.{name} (bnsym.codegen.numba_printer says how), with the same signatures.\n\n"
            "Imported by backend=\"numba\" and \"auto\" (the `fast` extra). Each loop function compiles when a\n"
            "call first needs it (under \"auto\", in a background process: bnsym.runtime.compiled says when) and is\n"
            "cached on disk.\n")
        return render_numba_module(kernels(name), source="bnsym/symbolic/layers.py", docstring=docstring,
                                   numpy_module=f"{package}.{name}", per_sample=LAYERS[name].per_sample,
                                   channel_axis=LAYERS[name].channel_axis,
                                   parameter_per_value=LAYERS[name].parameter_per_value,
                                   sample_parameters=LAYERS[name].sample_parameters)
    return render


def _layer_array_api_module(name: str, package: str) -> Callable[[], str]:
    def render() -> str:
        from bnsym.codegen.layer_kernels import kernels
        from bnsym.codegen.module import render_array_api_module
        from bnsym.symbolic.layers import LAYERS

        title = LAYERS[name].title
        docstring = (
            f"{title} kernels for any array library (the array API standard, through array-api-compat), printed\n"
            f"from the same derivation as {package}.{name} (bnsym.codegen.array_api_printer says how).\n\n"
            "Each kernel computes with the namespace of its first argument and returns arrays of that library on\n"
            "the same device; reductions go through bnsym.runtime.array_api.ArrayAPIReducer. Used by "
            "backend=\"array_api\".\n")
        return render_array_api_module(kernels(name), source="bnsym/symbolic/layers.py", docstring=docstring)
    return render


def _layer_document(name: str) -> Callable[[], str]:
    def render() -> str:
        from bnsym.tools.document import render_layer_document

        return render_layer_document(name)
    return render


def layer_files(name: str, *, package: str = "bnsym._generated", directory: str = "bnsym/_generated",
                documents: str = "derivations") -> tuple[GeneratedFile, ...]:
    """The generated files of the registered layer ``name``: its kernel modules (NumPy, Numba, array API) in
    ``directory`` (the package ``package``: the compiled module imports the NumPy one from there) and its
    derivation document in ``documents``; paths relative to the root they are written under."""
    return (GeneratedFile(f"{directory}/{name}.py", _layer_module(name, package)),
            GeneratedFile(f"{directory}/{name}_numba.py", _layer_numba_module(name, package)),
            GeneratedFile(f"{directory}/{name}_array_api.py", _layer_array_api_module(name, package)),
            GeneratedFile(f"{documents}/{name}.md", _layer_document(name)))


def _generated_files() -> tuple[GeneratedFile, ...]:
    # The built-in layers, in the order of their specifications; importing them runs no derivation.
    from bnsym.spec import BUILT_IN

    return tuple(file for name in BUILT_IN for file in layer_files(name))


#: Every checked-in generated file: for each built-in layer, its kernel modules (NumPy, Numba, array API) and its
#: derivation document.
GENERATED_FILES: tuple[GeneratedFile, ...] = _generated_files()


def own_layer_files(reference: str, out: str | os.PathLike | None = None) -> tuple[Path, tuple[GeneratedFile, ...]]:
    """The root and the generated files of the layer declared at ``reference`` (``FILE.py:NAME``, loaded and
    registered by :func:`bnsym.spec.loading.load`, its forward pass checked by :mod:`bnsym.symbolic.checks`): its
    kernel modules in the directory ``out`` of its ``kernels_package`` (default: that package's path under the
    current directory), with an empty ``__init__.py``, and its derivation document ``<name>.md`` beside them."""
    from bnsym.spec import BUILT_IN
    from bnsym.spec.loading import load

    layer = load(reference)
    if layer.name in BUILT_IN:
        raise ValueError(f"{layer.name!r} is one of bnsym's own layers; give your layer a name of its own")
    from bnsym.symbolic.layers import derivation

    derivation(layer.name)  # checks the declaration (DeclarationError, a ValueError) before anything is written
    package = layer.kernels_package
    if package == "bnsym._generated" or package.startswith("bnsym."):
        raise ValueError(f"{reference} declares kernels_package={package!r}: a layer of your own needs a package "
                         "of your own for its kernels, such as kernels_package=\"my_layers\"")
    directory = Path(out) if out is not None else Path(*package.split("."))
    if directory.name != package.rpartition(".")[2]:
        raise ValueError(f"--out {directory} must be the directory of the package {package!r} that {reference} "
                         f"declares for its kernels (a directory named {package.rpartition('.')[2]!r})")
    root = directory.resolve()
    files = tuple(GeneratedFile(f"{Path(f.path).name}", f.render)
                  for f in layer_files(layer.name, package=package, directory=".", documents="."))
    return root, (GeneratedFile("__init__.py", lambda: f'"""Generated kernels of {layer.title}."""\n'), *files)


def cross_checked(reference: str) -> str:
    """Cross-check the derivation of the layer declared at ``reference`` (``FILE.py:NAME``, loaded by
    :func:`own_layer_files`) against brute force at small group sizes (:mod:`bnsym.symbolic.cross_check`); a
    sentence saying what was checked, or CrossCheckError."""
    from bnsym.spec.loading import load
    from bnsym.symbolic.cross_check import SIZES, cross_check
    from bnsym.symbolic.layers import derivation

    name = load(reference).name
    checked = cross_check(derivation(name))
    sizes = ", ".join(map(str, SIZES))
    return (f"cross-checked {name}'s {', '.join(checked[:-1])} and {checked[-1]} against brute force (sympy.diff "
            f"of the forward pass written out for M = {sizes} values): equal")


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The source checkout that holds the generated files: ``root`` if given, else the one bnsym runs from."""
    if root is None:
        candidate = Path(__file__).resolve().parents[2]
    else:
        candidate = Path(root).resolve()
    if not (candidate / "pyproject.toml").is_file() or not (candidate / "bnsym").is_dir():
        raise FileNotFoundError(
            f"{candidate} is not a bnsym source checkout (no pyproject.toml and bnsym/ there): generated files "
            "live in the source tree, so run `bnsym derive` from a clone installed with `pip install -e .`, or "
            "pass --root PATH")
    return candidate


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def regenerate(root: Path, files: tuple[GeneratedFile, ...] = GENERATED_FILES) -> list[tuple[str, bool]]:
    """Render ``files`` (every checked-in generated file by default) under ``root`` and write those that changed;
    returns (path, changed) pairs."""
    results = []
    for generated in files:
        text = generated.render()
        path = root / generated.path
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            _write_atomically(path, text)
        results.append((generated.path, current != text))
    return results


def recorded_sympy_versions(root: Path) -> set[str]:
    """The SymPy versions named in the headers of the checked-in generated files (see codegen.module.HEADER)."""
    versions = set()
    for generated in GENERATED_FILES:
        path = root / generated.path
        if path.is_file():
            versions |= set(re.findall(r"with SymPy (\S+) from", path.read_text(encoding="utf-8")[:2000]))
    return versions


def stale_files(root: Path, files: tuple[GeneratedFile, ...] = GENERATED_FILES) -> list[tuple[str, str]]:
    """Render ``files`` in memory; returns (path, unified diff) for each that differs from the one under ``root``."""
    stale = []
    for generated in files:
        expected = generated.render()
        path = root / generated.path
        actual = path.read_text(encoding="utf-8") if path.is_file() else ""
        if actual != expected:
            diff = difflib.unified_diff(actual.splitlines(keepends=True), expected.splitlines(keepends=True),
                                        fromfile=f"{generated.path} (checked in)",
                                        tofile=f"{generated.path} (derived now)")
            stale.append((generated.path, "".join(diff)))
    return stale
