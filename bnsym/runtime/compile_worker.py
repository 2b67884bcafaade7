"""A process that compiles kernels into Numba's disk cache: ``python -m bnsym.runtime.compile_worker``.

Started by :mod:`bnsym.runtime.background` (for ``backend="auto"``, and ``bnsym compile``), never by users. It reads
jobs
from stdin, one a line: base64 of a pickled ``(job, module, name, file, types)``: compile the loop function
``module.name`` (a Numba dispatcher, defined in the file ``file``) for the argument types ``types``. It answers
each on stdout with one line of JSON, ``{"job", "ok", "seconds", "error"}``, and exits at the end of stdin (when
the process that started it closes the pipe or exits). It runs at a lower priority (nice 10) so that the caller's
own work comes first.

Numba writes its cache files to a temporary name and renames them into place, so a worker that is stopped in the
middle of a compilation leaves no half-written kernel behind.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import pickle
import sys
import time


def compile_one(module: str, name: str, file: str, types: tuple) -> None:
    """Compile ``module.name`` for ``types`` (Numba saves it in its disk cache). Refuses a module that is not the
    caller's file: the cache entry would then be another source's."""
    loaded = importlib.import_module(module)
    if os.path.realpath(loaded.__file__) != os.path.realpath(file):
        raise RuntimeError(f"{module} is {loaded.__file__} in the compiling process, not {file}")
    getattr(loaded, name).compile(types)


def main() -> int:
    try:
        os.nice(10)
    except (AttributeError, OSError):  # no nice on this platform, or not allowed: the same work, at equal priority
        pass
    # The answers get a private copy of stdout; whatever Numba or an imported module prints (NUMBA_DEBUG_CACHE
    # prints to stdout) goes to stderr, so that it cannot be read as an answer.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin.buffer:
        job, module, name, file, types = pickle.loads(base64.b64decode(line))
        started = time.perf_counter()
        try:
            compile_one(module, name, file, types)
            answer = {"job": job, "ok": True, "error": ""}
        except Exception as error:  # reported to the caller, which then keeps to the NumPy kernels for this one
            answer = {"job": job, "ok": False, "error": f"{type(error).__name__}: {error}"}
        answer["seconds"] = time.perf_counter() - started
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
