"""A layer declared in a file of its own (tests/data/*.py), the way a user declares one: loaded and registered, its
kernels generated into a package on ``sys.path``, and all of that undone afterwards."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bnsym.spec import LayerSpec, unregister
from bnsym.spec.loading import load
from bnsym.tools.cli import main
from bnsym.tools.derive import own_layer_files, regenerate


@contextmanager
def derived_layers(references: Sequence[str], root: Path, *, command: bool = False) -> Iterator[dict[str, LayerSpec]]:
    """``{reference: its LayerSpec}`` for each ``FILE.py:NAME`` of ``references``, each layer registered and its
    kernels generated into ``root / spec.kernels_package``, with ``root`` on ``sys.path``.

    ``command``: generate them as a user does, with `bnsym derive FILE.py:NAME --out` (which cross-checks the
    derivation against brute force first; exit 0 asserted), rather than by writing the files directly. On the way
    out, ``root`` leaves ``sys.path``, the kernels' modules leave ``sys.modules``, the layers are unregistered and
    ``root`` is deleted, so that a later test can declare a layer of the same name."""
    specs = {reference: load(reference) for reference in references}
    for reference, spec in specs.items():
        package = root / spec.kernels_package
        if command:
            assert main(["derive", reference, "--out", str(package), "--quiet"]) == 0, f"bnsym derive {reference}"
        else:
            regenerate(*own_layer_files(reference, package))
    sys.path.insert(0, str(root))
    try:
        yield specs
    finally:
        sys.path.remove(str(root))
        for spec in specs.values():
            for name in [m for m in sys.modules if m.startswith(spec.kernels_package)]:
                del sys.modules[name]
            unregister(spec.name)
        shutil.rmtree(root, ignore_errors=True)
