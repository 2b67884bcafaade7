"""The names of counterexample files: which target, which property, which example.

Two targets checked into one folder must never overwrite each other's files, so a file is named by the target as
well as the example: ``<target>-<property>-<hash>.npz``, where ``<target>`` is the target's file stem and name
made safe for a file name (``examples/my_batchnorm.py:FastBatchNorm`` gives ``my_batchnorm.FastBatchNorm``) and
the hash covers the whole target string with the example's fields (two targets whose stems coincide still get
different hashes).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["counterexample_name", "target_slug"]


def target_slug(target: str) -> str:
    """A short, file-name-safe name for a target (``torch``, ``path/to/file.py:NAME``, ``package.module:NAME``,
    or an implementation's own name)."""
    place, _, name = str(target).rpartition(":")
    stem = re.sub(r"\.py$", "", re.split(r"[\\/]", place)[-1]) if place else ""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", f"{stem}.{name}" if stem else name).strip("._")
    return slug[:60] or "target"


def counterexample_name(target: str, prop: str, fields: bytes) -> str:
    """The file name of ``prop``'s counterexample of ``target``, whose fields are ``fields`` (bytes)."""
    digest = hashlib.sha256(str(target).encode() + b"\0" + fields).hexdigest()[:8]
    return f"{target_slug(target)}-{prop}-{digest}.npz"
