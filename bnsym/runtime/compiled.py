"""When a compiled kernel may compile: on the spot, in the background, or not at all in the caller's thread.

Every generated Numba wrapper (``bnsym._generated.<layer>_numba``) runs its parallel loops through
:func:`run_compiled`. A loop function (a Numba dispatcher) is *ready* for a call when the machine code for the
call's argument types is in memory, or in Numba's disk cache (then loading it takes milliseconds). When it is not
ready, what happens depends on the call's *policy*, a context variable that the public functions set:

* ``WAIT`` (``backend="numba"`` named, and any direct call of a generated ``_numba`` module): compile now, in the
  caller's thread. A compilation that is still running after a second is announced on the ``bnsym`` logger (at
  WARNING, so that Python prints it to stderr when logging is not configured): what is compiling, and that it
  happens once per kernel, layout and dtype. :func:`compiling_note` is that message.
* ``BACKGROUND`` (``backend="auto"``): ask :mod:`bnsym.runtime.background` to compile it in another process, which fills
  Numba's disk cache, and raise :class:`NotCompiled` at once; the backend (:mod:`bnsym.runtime.backends`) then runs the
  NumPy kernel of the same derivation. A later call finds the kernel ready on disk and runs it.
* ``RECORD`` (``bnsym compile``): note the loop function and its argument types in :data:`recorded` and raise
  :class:`NotCompiled`, ready or not, so that representative calls list what there is to compile without running
  or compiling anything.

Readiness is remembered per loop function and argument fingerprint (Numba's own), so a ready kernel costs about
3 us more per call than calling Numba directly (measured: 2.5 us for run_compiled against 0.4 us, 3.7 us with the
policy block around it), next to kernels of tens of microseconds and more.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time

from bnsym.runtime import background as _background
from bnsym.runtime.background import describe, logger

__all__ = ["BACKGROUND", "RECORD", "WAIT", "NotCompiled", "compiling_note", "describe", "policy", "ready_on_disk",
           "recorded", "run_compiled"]

WAIT = "wait"
BACKGROUND = "background"
RECORD = "record"

#: Announce a compilation in the caller's thread once it has run this long (seconds).
ANNOUNCE_AFTER = 1.0

_policy = contextvars.ContextVar("bnsym_compile_policy", default=WAIT)
_ready: dict[object, set] = {}  # dispatcher -> argument fingerprints whose machine code is loaded
#: (dispatcher, argument types) pairs that calls under the RECORD policy would have compiled, in call order.
recorded: list[tuple[object, tuple]] = []


class NotCompiled(Exception):
    """The compiled kernel is not ready, and this call may not compile it: run the NumPy kernel instead."""


@contextlib.contextmanager
def policy(name: str):
    """Run the calls inside the ``with`` block under the compile policy ``name`` (module docstring). Inside a
    RECORD block, RECORD holds: listing what there is to compile must never compile it."""
    token = _policy.set(RECORD if _policy.get() == RECORD else name)
    try:
        yield
    finally:
        _policy.reset(token)


def run_compiled(dispatcher, *args):
    """``dispatcher(*args)`` if its machine code for these arguments is ready, else what the policy says."""
    try:
        key = _fingerprint(args)
    except (TypeError, ValueError):  # a value Numba's fingerprint does not take: decide by its types
        key = None
    if key is not None and key in _ready.get(dispatcher, ()) and _policy.get() != RECORD:
        return dispatcher(*args)
    return _first_call(dispatcher, key, args)


def _fingerprint(args) -> tuple:
    from numba._dispatcher import compute_fingerprint

    return tuple(map(compute_fingerprint, args))


def _first_call(dispatcher, key, args):
    types = tuple(dispatcher.typeof_pyval(a) for a in args)
    mode = _policy.get()
    if mode == RECORD:
        recorded.append((dispatcher, types))
        raise NotCompiled(describe(dispatcher, types))
    if mode == BACKGROUND and _background.pending(dispatcher, types):
        raise NotCompiled(describe(dispatcher, types))  # under way: no need to read the cache's index again
    if types not in dispatcher.overloads and not ready_on_disk(dispatcher, types):
        if mode == BACKGROUND:
            _background.request(dispatcher, types)
            raise NotCompiled(describe(dispatcher, types))
        result = _compile_announced(dispatcher, types, args)
    else:
        result = dispatcher(*args)
    if key is not None:
        _ready.setdefault(dispatcher, set()).add(key)
    return result


def ready_on_disk(dispatcher, types: tuple) -> bool:
    """Whether Numba's disk cache holds ``dispatcher``'s machine code for ``types``, compiled from this very
    source (Numba's own index and key; False when the cache cannot be read)."""
    cache = getattr(dispatcher, "_cache", None)
    try:
        key = cache._index_key(types, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # no cache, an unreadable index or another Numba: not known to be ready
        return False


def compiling_note(dispatcher, types: tuple) -> str:
    """The announcement of a compilation in the caller's thread."""
    return (f"bnsym: compiling {describe(dispatcher, types)} with Numba, once: the machine code is cached on disk "
            "for later calls and processes (`bnsym compile` does this ahead of time for every kernel)")


def _compile_announced(dispatcher, types: tuple, args):
    started = time.perf_counter()
    announced = threading.Event()

    def announce():
        announced.set()
        logger.warning(compiling_note(dispatcher, types))

    timer = threading.Timer(ANNOUNCE_AFTER, announce)
    timer.daemon = True
    timer.start()
    try:
        return dispatcher(*args)
    finally:
        timer.cancel()
        timer.join()  # an announcement under way is printed before its closing line
        if announced.is_set():
            logger.warning("bnsym: compiled %s in %.1f s", describe(dispatcher, types),
                           time.perf_counter() - started)
