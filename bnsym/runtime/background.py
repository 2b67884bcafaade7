"""Compiling kernels in other processes, so that ``backend="auto"`` never waits on Numba.

:class:`CompilerPool` runs ``python -m bnsym.runtime.compile_worker`` processes (one per worker) and hands them jobs: a
loop function (Numba dispatcher) and the argument types to compile it for. Each worker fills Numba's disk cache,
where the caller's process then finds the kernel ready (:func:`bnsym.runtime.compiled.ready_on_disk`). The workers are
separate interpreters started with ``subprocess``, not ``multiprocessing``: nothing of the caller's main module is
imported again, and the caller's threads and Numba thread pool are not forked. They end when the caller exits
(what they finished stays on disk) or when their pool is closed.

:func:`request` is the background service of ``backend="auto"`` (:mod:`bnsym.runtime.compiled`): one worker, started on
the first request, each kernel requested once. Setting the environment variable ``BNSYM_BACKGROUND_COMPILE=0``
turns it off: ``auto`` then runs the compiled kernels that are ready and the NumPy kernels otherwise, and never
compiles (the test suite does this, so that no test waits for compilations it does not need).
"""

from __future__ import annotations

import atexit
import base64
import itertools
import json
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CompilerPool", "Outcome", "describe", "enabled", "pending", "request", "status", "wait"]

logger = logging.getLogger("bnsym")

ENVIRONMENT_SWITCH = "BNSYM_BACKGROUND_COMPILE"
#: A kernel whose compilation finished but which is still not found in the disk cache is asked for this many
#: times at most (a cache the workers cannot write to); after that the NumPy kernel serves it in this process.
ATTEMPTS = 2


@dataclass(frozen=True)
class Outcome:
    """One finished job: the loop function and types, whether it compiled, how long it took, the error, and
    whether the worker process ended under it."""

    dispatcher: object
    types: tuple
    ok: bool
    seconds: float
    error: str = ""
    worker_ended: bool = False


class CompilerPool:
    """Worker processes that compile jobs; ``on_done(outcome)`` is called (in a pool thread) as each ends."""

    def __init__(self, workers: int, on_done: Callable[[Outcome], None], *, restart: bool = True):
        """``restart``: start a new worker when one ends under a job (``bnsym compile``: the other jobs still need
        one); the background service does not, it stops asking instead."""
        if not isinstance(workers, int) or isinstance(workers, bool):
            raise TypeError(f"workers must be a whole number, got {workers!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._restart = restart
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._on_done = on_done
        self._processes: list[subprocess.Popen] = []
        self._ids = itertools.count()
        self._closed = False
        self._owner = os.getpid()  # a forked child inherits the pool, but the workers stay its parent's
        for _ in range(workers):
            process = _start_worker()
            self._processes.append(process)
            threading.Thread(target=self._serve, args=(process,), daemon=True, name="bnsym-compile").start()
        atexit.register(self.close)

    def submit(self, dispatcher, types: tuple) -> None:
        """Compile ``dispatcher`` for ``types`` in the next free worker."""
        self._jobs.put((dispatcher, types))

    def close(self) -> None:
        """Stop the workers now (a compilation under way is abandoned; finished ones stay on disk)."""
        if os.getpid() != self._owner:
            return
        with self._lock:
            self._closed = True
        for process in self._processes:
            _stop(process)
        for _ in self._processes:
            self._jobs.put(None)

    def _serve(self, process: subprocess.Popen) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._closed:
                return
            dispatcher, types = job
            outcome = self._run(process, dispatcher, types)
            if self._closed:
                return
            self._on_done(outcome)
            if process.poll() is not None:  # the worker died: a new one takes the next jobs, if one can start
                if not self._restart:
                    return
                with self._lock:  # not while close() stops the workers
                    if self._closed:
                        return
                    try:
                        process = _start_worker()
                    except OSError:
                        return
                    self._processes.append(process)

    def _run(self, process: subprocess.Popen, dispatcher, types: tuple) -> Outcome:
        function = dispatcher.py_func
        number = next(self._ids)
        message = (number, function.__module__, function.__name__, function.__code__.co_filename, types)
        try:
            job = base64.b64encode(pickle.dumps(message)) + b"\n"
        except Exception as error:  # argument types that do not pickle: this job fails, the worker is fine
            return Outcome(dispatcher, types, False, 0.0, f"its argument types cannot be sent ({error})")
        try:
            process.stdin.write(job)
            process.stdin.flush()
            line = process.stdout.readline()
            answer = json.loads(line)
            if answer["job"] != number:
                raise ValueError(f"it answered job {answer['job']} to job {number}")
        except (OSError, ValueError, KeyError, TypeError) as error:  # a broken pipe, no answer, a wrong answer
            return Outcome(dispatcher, types, False, 0.0, f"{type(error).__name__}: {error}", worker_ended=True)
        return Outcome(dispatcher, types, answer["ok"], answer["seconds"], answer["error"])


def describe(dispatcher, types: tuple) -> str:
    """What a compilation is, in a user's words: the kernel (its loop function) and the argument dtypes."""
    dtypes = sorted({str(getattr(t, "dtype", "")) for t in types} - {""})
    layer = getattr(dispatcher.py_func, "__module__", "").rsplit(".", 1)[-1].removesuffix("_numba")
    function = dispatcher.py_func.__name__.lstrip("_").removeprefix(f"{layer}_")
    return f"{layer}.{function} ({', '.join(dtypes) or 'no arrays'})"


def _start_worker() -> subprocess.Popen:
    environment = dict(os.environ)
    # The worker imports the same bnsym as this process (a clone on sys.path, an editable install, ...).
    environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    return subprocess.Popen([sys.executable, "-m", "bnsym.runtime.compile_worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def enabled() -> bool:
    """Whether ``backend="auto"`` compiles in the background (the module docstring's switch)."""
    return os.environ.get(ENVIRONMENT_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


class _Service:
    """The background compilation of ``backend="auto"``: one worker, each kernel asked for at most
    :data:`ATTEMPTS` times."""

    def __init__(self):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pool: CompilerPool | None = None
        self._pending: set = set()
        self._asked: dict = {}
        self._broken = False  # a worker ended under a job: no more background compilation in this process
        self._said_uncached = False
        self.finished: list[Outcome] = []

    def request(self, dispatcher, types: tuple) -> None:
        key = (dispatcher, types)
        with self._lock:
            if self._broken or key in self._pending or self._asked.get(key, 0) >= ATTEMPTS:
                return
            self._asked[key] = self._asked.get(key, 0) + 1
            if self._pool is None:
                try:
                    self._pool = CompilerPool(1, self._done, restart=False)
                except OSError as error:
                    self._broken = True
                    logger.warning("bnsym: could not start a process to compile kernels in the background (%s); "
                                   "backend='auto' runs the NumPy kernels", error)
                    return
            self._pending.add(key)
        self._pool.submit(dispatcher, types)

    def _done(self, outcome: Outcome) -> None:
        with self._lock:
            key = (outcome.dispatcher, outcome.types)
            self._pending.discard(key)
            self.finished.append(outcome)
            if outcome.worker_ended and not self._broken:
                self._broken = True
                self._pending.clear()  # nothing more will come back
                logger.warning("bnsym: the process compiling kernels in the background ended (%s); backend='auto' "
                               "runs the NumPy kernels for what is not compiled yet (backend='numba' or "
                               "`bnsym compile` compiles them)", outcome.error)
            elif outcome.ok and self._asked.get(key, 0) >= ATTEMPTS and not self._said_uncached:
                # Compiled twice, and still not found in the cache by this process: the worker's cache is another
                # folder, or Numba's cache index changed. Said once; the NumPy kernels serve these calls.
                self._said_uncached = True
                logger.warning("bnsym: %s was compiled in the background but this process does not find it in "
                               "Numba's disk cache; backend='auto' runs the NumPy kernels for what it cannot find "
                               "there (backend='numba' compiles in this process)",
                               describe(outcome.dispatcher, outcome.types))
            elif not outcome.ok:
                self._asked[key] = ATTEMPTS
                logger.warning("bnsym: compiling %s in the background failed (%s); backend='auto' runs the NumPy "
                               "kernel for it", describe(outcome.dispatcher, outcome.types), outcome.error)
            self._changed.notify_all()

    def pending(self, dispatcher, types: tuple) -> bool:
        return (dispatcher, types) in self._pending

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def status(self) -> dict:
        with self._lock:
            return {"pending": len(self._pending), "finished": len(self.finished),
                    "failed": sum(not outcome.ok for outcome in self.finished)}


_service = _Service()


def _new_service_in_child() -> None:
    # A forked child (a data-loader worker, say) has none of the parent's threads: it starts a service of its own
    # if it needs one, and leaves the parent's worker alone (CompilerPool.close checks the process).
    global _service
    _service = _Service()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_new_service_in_child)


def request(dispatcher, types: tuple) -> None:
    """Compile ``dispatcher`` for ``types`` in the background, unless it is under way, has been asked for
    :data:`ATTEMPTS` times, or the background compilation is switched off."""
    if enabled():
        _service.request(dispatcher, types)


def pending(dispatcher, types: tuple) -> bool:
    """Whether ``dispatcher`` is being compiled for ``types`` in the background right now."""
    return _service.pending(dispatcher, types)


def wait(timeout: float) -> bool:
    """Block until the background compilations asked for so far have finished (True), or ``timeout`` seconds
    pass (False). For benchmarks and tests; a program never needs to call it."""
    return _service.wait(timeout)


def status() -> dict:
    """Counts of the background compilations: ``pending``, ``finished`` and ``failed``."""
    return _service.status()
