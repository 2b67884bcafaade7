"""Where a crash of the implementation happened, when it runs in the checker's own process (no ``--isolate``).

A segfault in a C extension kills the checker; with stdout piped, its buffered report is lost, and the run exits
139 with no output at all. :func:`report_crashes` enables :mod:`faulthandler`, which writes the Python traceback of
the crash (the implementation's frames included) to stderr, and says what ``--isolate`` would have done. The
traceback goes through a pipe to a small helper process (forked before the implementation is loaded), because
nothing can run in the crashing process after the fault handler: the helper outlives it, and writes the
traceback and the hint to stderr when the pipe holds anything. A run that ends normally closes the pipe empty, and
the helper exits without a word. Where there is no fork (Windows), the traceback alone is written.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from contextlib import contextmanager

__all__ = ["HINT", "report_crashes"]

HINT = ("bnsym check: the implementation crashed the checker (the traceback above says where). With --isolate it "
        "runs in a child process, and a crash is a reported failure with its example and a replay file.\n")


@contextmanager
def report_crashes():
    """Within this context a fatal signal (SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL) prints its traceback and
    :data:`HINT` to stderr."""
    if faulthandler.is_enabled():  # someone already reports crashes (pytest does): leave theirs alone
        yield
        return
    if not hasattr(os, "fork"):
        faulthandler.enable()
        try:
            yield
        finally:
            faulthandler.disable()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    helper = os.fork()
    if helper == 0:  # the helper: copy what the fault handler writes, then the hint
        os.close(write)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        if chunks:
            os.write(2, b"".join(chunks) + HINT.encode())
        os._exit(0)
    os.close(read)
    stream = os.fdopen(write, "w")
    faulthandler.enable(file=stream)
    try:
        yield
    finally:
        faulthandler.disable()
        stream.close()
        os.waitpid(helper, 0)
