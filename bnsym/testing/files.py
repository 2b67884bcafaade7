"""Atomic writes of the checker's files (counterexamples, JSON results, plots): a temporary file in the target's
folder, renamed over the target once complete, so that an interrupted run never leaves half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path, write: Callable[[object], None], *, binary: bool = True) -> Path:
    """Create ``path``'s folder if needed, call ``write(stream)`` on a temporary file beside it, rename it to
    ``path``; the file gets the permissions a plain ``open`` would give it (mkstemp's are private)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
            write(stream)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
