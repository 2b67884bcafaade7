"""Running the implementation under test in a child process, so that a crash or a hang is a finding.

:class:`IsolatedImplementation` looks to the runner exactly like :class:`bnsym.testing.adapters.Implementation`
(``name``, ``capabilities``, and one attribute per protocol method, None when not offered), but each call goes to a
child process that loaded the implementation itself, by the same target string (``torch``, ``jax``,
``path/to/file.py:NAME``, ``package.module:NAME``: :func:`bnsym.testing.adapters.load`) or from a pickled object.

The contract of a call, as seen by the caller:

- it returns what the method returned, or raises what it raised (an exception of a class the checker cannot import
  is rebuilt as an exception of the same name and builtin base class, with the same message), exactly as in
  process; an argument the implementation wrote into (an array, or an array in a list or tuple of arguments, as the
  sharded protocol's shards) is written back into the caller's array;
- if the child dies during the call (a signal such as SIGSEGV or SIGABRT, the out-of-memory killer's SIGKILL, or
  an exit of the process), or the call does not return within ``timeout`` seconds (the child is then killed), it
  raises :class:`ImplementationCrashed`, which says what happened in which method; the next call starts a fresh
  child. The runner turns it into a failure of the property (:mod:`bnsym.testing.runner`).

Arrays cross the process boundary through one shared-memory segment per call
(:mod:`multiprocessing.shared_memory`): the caller copies its NumPy arguments in once, the child computes on views
of the segment (no copy and no pickling of array data) and writes its array results into the free part of the same
segment, from which the caller copies them out once. Layout (C, Fortran or any permutation of axes), dtype and
read-only flags survive the trip; arrays of other libraries (torch, JAX) in the results are converted to NumPy in
the child.

Children are started with ``forkserver`` where the platform has it (a fresh worker forks in milliseconds from a
server that has already imported bnsym, so a run that shrinks a crashing example can afford one child per crash)
and ``spawn`` elsewhere; never with a bare ``fork``, which is unsafe once torch or JAX have started threads. No
child outlives the run: :meth:`IsolatedImplementation.close` (also on ``with`` exit and at interpreter exit) stops
it, a timed-out child is killed, and a child whose checker is killed (no cleanup runs then) ends too: by the
kernel's parent-death signal on Linux, and by a thread that watches the checker (for a hang in Python code)
elsewhere.
"""

from __future__ import annotations

import atexit
import builtins
import faulthandler
import math
import mmap
import multiprocessing
import os
import pickle
import re
import select
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from bnsym.spec.loading import layer_name, reference
from bnsym.testing.adapters import Implementation, TargetError, load
from bnsym.testing.protocols import DEFAULT_LAYER, protocol
from bnsym.testing.sharded import ShardedImplementation, signatures
from bnsym.testing.sharded_adapters import load as load_sharded

__all__ = ["DEFAULT_TIMEOUT", "ImplementationCrashed", "IsolatedImplementation"]

#: Seconds one call may take before its child is killed (``bnsym check --timeout``).
DEFAULT_TIMEOUT = 60.0
#: Loading the target in a fresh child (importing torch or JAX, compiling nothing yet) gets at least this long.
LOAD_TIMEOUT = 120.0

_ALIGNMENT = 64  # every array in a segment starts on a cache line (and on any dtype's alignment)


class ImplementationCrashed(BaseException):
    """The implementation's child process died during a call, or the call did not return within the timeout.

    ``message`` says what happened in which method ("the implementation crashed with SIGSEGV (signal 11) in
    forward", "forward did not return within 60 s (killed)"); ``method`` is the protocol method; ``hung`` is True
    for a timeout. A BaseException, like pytest's test outcomes, so that property code which catches ``Exception``
    (some properties accept a clear error from the implementation) cannot mistake a crash for such an error; the
    runner turns it into a failure of the property.
    """

    def __init__(self, message: str, method: str, hung: bool = False):
        super().__init__(message)
        self.message, self.method, self.hung = message, method, hung


def describe_death(exitcode: int | None) -> str:
    """How a child process ended, from its exit code: "crashed with SIGSEGV (signal 11)", "exited with status 3"."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        if -exitcode == getattr(signal, "SIGKILL", None):
            return f"crashed with {name} (signal {-exitcode}, sent from outside the process: by the out-of-memory " \
                   f"killer, for example)"
        return f"crashed with {name} (signal {-exitcode})"
    return f"exited with status {exitcode}"


def implementation_stack(dump: str, limit: int = 3) -> str:
    """The Python stack of the implementation's call (or of its loading) in a faulthandler dump, outermost first
    ("my_kernel.py:9 in forward > ctypes/__init__.py:519 in string_at"), or "" when the dump has none. Deeper than
    ``limit`` frames, the outermost and the innermost ``limit - 1`` frames are kept ("a.py:3 in forward > ... >
    ...")."""
    for section in re.split(r"^(?:Current thread|Thread) .*$", dump, flags=re.MULTILINE):
        frames = re.findall(r'^\s*File "(.*)", line (\d+) in (\S+)', section, flags=re.MULTILINE)
        callers = [i for i, (path, _, function) in enumerate(frames)
                   if function in ("_answer", "_serve") and os.path.basename(path) == "isolation.py"]
        if callers and callers[0]:
            stack = [f"{_short(path)}:{line} in {function}" for path, line, function in frames[callers[0] - 1::-1]]
            if len(stack) > limit:
                stack = [stack[0], "...", *stack[len(stack) - limit + 1:]]
            return " > ".join(stack)
    return ""


def _at(stack: str) -> str:
    return f", at {stack}" if stack else ""


def _while_at(stack: str) -> str:
    return f" while at {stack}" if stack else ""


def _short(path: str) -> str:
    """``path`` relative to the current directory when it is below it, else relative to the ``sys.path`` entry it
    was imported from ("ctypes/__init__.py", "torch/nn/functional.py"), else as it is."""
    roots = [os.getcwd()] + sorted((p for p in sys.path if p and os.path.isabs(p)), key=len, reverse=True)
    for root in roots:
        try:
            relative = os.path.relpath(path, root)
        except ValueError:  # another drive
            continue
        if not relative.startswith(".."):
            return relative
    return path


# ----- arrays in shared memory -----

def _dense_strides(array: np.ndarray) -> tuple[int, ...]:
    """Strides of a dense buffer that keeps ``array``'s order of axes in memory (what ``np.empty_like`` keeps)."""
    order = sorted(range(array.ndim), key=lambda axis: -abs(array.strides[axis]))
    strides = [0] * array.ndim
    step = array.itemsize
    for axis in reversed(order):
        strides[axis] = step
        step *= max(array.shape[axis], 1)
    return tuple(strides)


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGNMENT) * _ALIGNMENT


def _in_shared_memory(value) -> bool:
    return isinstance(value, np.ndarray) and not value.dtype.hasobject


def _view(buffer, offset: int, shape, dtype, strides) -> np.ndarray:
    return np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset, strides=strides)


def _attach(name: str, size: int) -> mmap.mmap:
    """The child's mapping of a segment the parent created. A bare mapping rather than a ``SharedMemory`` object:
    views of it keep it alive for as long as the implementation holds on to them (an implementation may keep its
    inputs), and it is unmapped when the last one goes, with no file descriptor left open meanwhile."""
    if os.name == "nt":
        return mmap.mmap(-1, size, tagname=name)
    import _posixshmem  # what multiprocessing.shared_memory itself opens segments with

    descriptor = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
    try:
        return mmap.mmap(descriptor, size)
    finally:
        os.close(descriptor)


class _Layout:
    """Places arrays one after another (aligned) from ``start``; ``end`` is the first free byte."""

    def __init__(self, start: int = 0):
        self.end = start

    def place(self, array: np.ndarray) -> tuple[int, tuple[int, ...]]:
        offset = _aligned(self.end)
        self.end = offset + array.nbytes
        return offset, _dense_strides(array)


# ----- results and exceptions that cross back -----

class _Unconverted:
    """A result the child could not turn into a NumPy array (a torch tensor that requires grad, say): converting
    it in the caller raises what converting it raised in the child. Subclassed under the result's type name."""

    def __init__(self, text: str, error_type: str, error: str):
        self._text, self._error_type, self._error = text, error_type, error

    def __repr__(self) -> str:
        return self._text

    def __array__(self, dtype=None, copy=None):
        raise _rebuild_exception(self._error_type, "builtins", self._error_type, self._error)


def _opaque(value, error: Exception | None = None) -> _Unconverted:
    kind = type(value)
    stand_in = type(kind.__name__, (_Unconverted,), {"__qualname__": kind.__qualname__})
    reason = error or TypeError(f"a {kind.__module__}.{kind.__qualname__} cannot leave the isolated process")
    return stand_in(_safe_repr(value), _builtin_base(type(reason)).__name__, _safe_str(reason))


def _safe_repr(value) -> str:
    try:
        return repr(value)[:200]
    except Exception:
        return f"<{type(value).__name__}>"


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__} whose str() failed>"


def _builtin_base(kind: type) -> type:
    return next(base for base in kind.__mro__ if base.__module__ == "builtins")


_REBUILT: dict[tuple[str, str, str], type] = {}


def _rebuild_exception(base: str, module: str, name: str, message: str) -> BaseException:
    """An exception named ``name`` with ``message``: the builtin class itself when it is one, otherwise a class of
    that name derived from the same builtin base (the checker never imports the implementation's modules)."""
    base_class = getattr(builtins, base, Exception)
    if not (isinstance(base_class, type) and issubclass(base_class, Exception)):
        base_class = Exception
    if module == "builtins" and isinstance(getattr(builtins, name, None), type):
        kind = getattr(builtins, name)
    else:
        key = (base, module, name)
        if key not in _REBUILT:
            _REBUILT[key] = type(name, (base_class,), {"__module__": module})
        kind = _REBUILT[key]
    try:
        return kind(message)
    except Exception:  # a builtin whose constructor wants more (UnicodeDecodeError): keep the name's base
        return base_class(message)


# ----- the child -----

def _encode_result(value, layout: _Layout, arrays: list):
    """The reply's description of ``value``; arrays are appended to ``arrays`` with their place in ``layout``."""
    if isinstance(value, tuple | list):  # a named tuple arrives as a plain one
        return ("list" if isinstance(value, list) else "tuple", [_encode_result(v, layout, arrays) for v in value])
    if not isinstance(value, np.ndarray) and hasattr(value, "__array__") and not np.isscalar(value):
        try:  # an array of another library: the caller would convert it with np.asarray; do it here
            value = np.asarray(value)
        except Exception as error:
            return ("value", _opaque(value, error))
    if _in_shared_memory(value):
        offset, strides = layout.place(value)
        arrays.append((value, offset, strides))
        return ("array", offset, value.shape, value.dtype, strides, value.flags.writeable)
    try:
        pickle.dumps(value)
    except Exception as error:
        return ("value", _opaque(value, error))
    return ("value", value)


def _die_with_checker(checker: int, forkserver: bool, spawned_by_main_thread: bool) -> None:
    """Make sure this child does not outlive the checker (process ``checker``), even when the checker is killed
    while a call hangs."""
    if forkserver:
        # Every child of the fork server holds the server's "alive" pipe, which keeps the server running while any
        # child lives. This one lets go of it: the server then ends with the checker, and the parent-death signal
        # below ends this child with the server.
        from multiprocessing import forkserver as server

        alive = getattr(server._forkserver, "_forkserver_alive_fd", None)
        if isinstance(alive, int):
            os.close(alive)
            server._forkserver._forkserver_alive_fd = None
    parent = os.getppid()
    if sys.platform.startswith("linux") and (forkserver or spawned_by_main_thread):
        import ctypes

        try:  # PR_SET_PDEATHSIG: the kernel sends SIGKILL when the parent (the thread that forked us) ends
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # it ended before the request took effect
            os._exit(1)

    def watch():  # for platforms without PR_SET_PDEATHSIG (a hang in Python code lets this thread run)
        try:
            descriptor = os.pidfd_open(checker)
        except (AttributeError, OSError):
            descriptor = None
        if descriptor is not None:
            select.select([descriptor], [], [])  # readable when the checker has ended
        else:
            while True:
                try:
                    os.kill(checker, 0)
                except ProcessLookupError:
                    break
                except OSError:
                    pass
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="bnsym-checker-watch", daemon=True).start()


def _load(source, layer: str, shards: int | None):
    """The implementation in the child: a target string or a pickled object, of the layer's protocol or (with
    ``shards``) of the sharded protocol."""
    if shards is not None:
        return load_sharded(source, shards, layer) if isinstance(source, str) \
            else ShardedImplementation.wrap(pickle.loads(source), layer=layer)
    return load(source, layer) if isinstance(source, str) else Implementation.wrap(pickle.loads(source), layer=layer)


def _attributes(impl) -> dict:
    """What the parent's stand-in needs beyond the methods: a sharded implementation's ``equal_shards`` and
    ``unavailable`` (asked once, here)."""
    if not isinstance(impl, ShardedImplementation):
        return {}
    return {"equal_shards": impl.equal_shards, "unavailable": impl.unavailable}


def _serve(conn, source, environment: dict, checker: int, forkserver: bool, spawned_by_main_thread: bool,
           stack_file: str, layer: str = DEFAULT_LAYER, shards: int | None = None) -> None:
    """The child's main loop: load the implementation, then answer calls until told to stop or orphaned."""
    # Ctrl-C reaches the whole process group; the checker handles it (and stops this child), so the child must not
    # die of it first and be reported as a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_checker(checker, forkserver, spawned_by_main_thread)
    # A crash writes the child's Python stacks to a file the parent reads (stderr would get one dump per shrinking
    # attempt); the parent asks for the same with SIGUSR1 before it kills a hung call.
    stacks = open(stack_file, "w")  # noqa: SIM115  (open for the life of the process, for faulthandler)
    try:  # the parent reads it through its own descriptor: gone from the disk when both processes are
        os.unlink(stack_file)
    except OSError:  # Windows keeps an open file; the parent removes it
        pass
    faulthandler.enable(stacks, all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, stacks, all_threads=True)
    os.environ.clear()
    os.environ.update(environment)  # a forkserver's children inherit the server's environment, not the caller's
    try:
        impl = _load(source, layer_name(layer), shards)  # a layer from a file is loaded again here
        attributes = _attributes(impl)
    except Exception as error:
        message = str(error) if isinstance(error, TargetError | TypeError) else \
            f"loading it raised {type(error).__name__}: {error}"
        conn.send(("error", message))
        return
    conn.send(("ready", impl.name, sorted(impl.capabilities), attributes))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "close":
                return
            _answer(conn, impl, *message[1:])
    finally:
        close = getattr(impl, "close", None)  # a sharded implementation's workers stop with it
        if callable(close):
            close()


def _answer(conn, impl: Implementation, method: str, name: str, size: int, arguments, keywords,
            results_start: int, errstate: dict) -> None:
    segment = _attach(name, size)
    views: dict[int, np.ndarray] = {}

    def decode(spec):
        if spec[0] == "value":
            return spec[1]
        if spec[0] in ("list", "tuple"):  # a list of arrays (the sharded protocol's shards)
            items = [decode(item) for item in spec[1]]
            return items if spec[0] == "list" else tuple(items)
        _, slot, offset, shape, dtype, strides, writeable = spec
        if slot not in views:  # one parent array passed twice arrives as one array
            views[slot] = _view(segment, offset, shape, dtype, strides)
            views[slot].flags.writeable = writeable
        return views[slot]

    args = [decode(spec) for spec in arguments]
    kwargs = {key: decode(spec) for key, spec in keywords.items()}
    views.clear()
    try:
        with np.errstate(**errstate):  # the checker's floating-point error handling, as in process
            result = getattr(impl, method)(*args, **kwargs)
    except Exception as error:
        kind = type(error)
        conn.send(("raised", _builtin_base(kind).__name__, kind.__module__, kind.__name__, _safe_str(error)))
        return
    finally:
        del args, kwargs
    arrays: list = []
    layout = _Layout(results_start)
    encoded = _encode_result(result, layout, arrays)
    target, where = segment, "call"
    if layout.end > size:  # more than the room the parent left: it makes a segment of the size asked for
        conn.send(("grow", _aligned(layout.end - results_start) + _ALIGNMENT))
        extra_name, extra_size = conn.recv()
        target, where = _attach(extra_name, extra_size), "extra"
        layout, arrays = _Layout(0), []
        encoded = _encode_result(result, layout, arrays)
    for array, offset, strides in arrays:
        np.copyto(_view(target, offset, array.shape, array.dtype, strides), array, casting="no")
    conn.send(("returned", where, encoded))


# ----- the parent -----

class _RemoteMethod:
    """One protocol method of the isolated implementation, callable as the method itself."""

    def __init__(self, owner: IsolatedImplementation, method: str):
        self._owner, self.__name__ = owner, method

    def __call__(self, *args, **kwargs):
        return self._owner._call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<{self.__name__} of {self._owner.name}, in a child process>"


_LIVE: set = set()  # the implementations with a child running; close() takes them out


@atexit.register
def _close_all() -> None:
    # Registered after multiprocessing's own exit handler (imported above), so it runs first: that one joins
    # non-daemonic children, which would wait forever for a hung one.
    for impl in list(_LIVE):
        impl.close()


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class IsolatedImplementation(Implementation):
    """The implementation named by ``target`` (a CLI target string, or a picklable function, object or class),
    run in a child process with ``timeout`` seconds per call (module docstring).

    ``layer`` (default batch norm) is the protocol the child loads it with (:mod:`bnsym.testing.protocols`); with
    ``shards`` (K) the child loads it as a sharded implementation of the layer for K workers
    (:mod:`bnsym.testing.sharded`), and this object offers the sharded protocol's methods, ``equal_shards`` and
    ``unavailable`` instead.

    Raises :class:`~bnsym.testing.adapters.TargetError` when the target cannot be loaded (or crashes or hangs while
    loading), TypeError when an object cannot be pickled, ValueError for a timeout that is not a positive number.
    Use it as a context manager, or call :meth:`close`; an ``atexit`` handler closes what is left open.
    """

    def __init__(self, target, *, timeout: float = DEFAULT_TIMEOUT, start_method: str | None = None,
                 layer: str = DEFAULT_LAYER, shards: int | None = None):
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(target, str):
            self._source, label = target, target
        else:
            try:
                self._source = pickle.dumps(target)
            except Exception as error:
                raise TypeError(f"isolation runs the implementation in a child process, which receives it pickled; "
                                f"{target!r} cannot be pickled ({type(error).__name__}: {error}). Define it at module "
                                f"level, or pass a target string such as 'path/to/file.py:NAME'") from None
            label = getattr(target, "__qualname__", type(target).__name__)
        self.timeout = float(timeout)
        self._layer = protocol(layer).name
        self._shards = shards
        self._context = multiprocessing.get_context(start_method or _default_start_method())
        if self._context.get_start_method() == "forkserver":
            # Workers fork from a server that has imported bnsym already. This sets the preload of the process's
            # one forkserver; it has no effect when the server is already running.
            self._context.set_forkserver_preload([__name__])
        self._lock = threading.RLock()
        self._process = self._conn = None
        self._busy = False  # a call was sent and its answer not yet received
        self._label = label
        name, capabilities, attributes = self._start(loading=True)
        self._capabilities = capabilities
        if shards is None:
            super().__init__(**{method: _RemoteMethod(self, method) if method in capabilities else None
                                for method in protocol(layer).signatures}, name=name, layer=layer)
        else:  # the sharded protocol's methods (not an Implementation's: there is no forward)
            self.name, self.layer = name, layer
            for method in signatures(layer):
                setattr(self, method, _RemoteMethod(self, method) if method in capabilities else None)
            self.equal_shards = bool(attributes.get("equal_shards", False))
            self.unavailable = attributes.get("unavailable")

    @property
    def capabilities(self) -> frozenset[str]:
        return self._capabilities

    # -- the child's life --

    def _start(self, loading: bool) -> tuple[str, frozenset[str], dict]:
        """Start a child and load the implementation in it: (its name, its capabilities, its other attributes)."""
        conn, child_conn = self._context.Pipe(duplex=True)
        # A spawned child's parent-death signal fires when the thread that started it ends, which is the
        # checker's end only for the main thread.
        by_main_thread = threading.current_thread() is threading.main_thread()
        forkserver = self._context.get_start_method() == "forkserver"
        self._stacks, self._stack_file = tempfile.mkstemp(prefix="bnsym-isolated-", suffix=".stacks")
        process = self._context.Process(target=_serve, name=f"bnsym-isolated {self._label}", daemon=False,
                                        args=(child_conn, self._source, dict(os.environ), os.getpid(), forkserver,
                                              by_main_thread, self._stack_file, reference(self._layer), self._shards))
        process.start()
        child_conn.close()
        self._process, self._conn = process, conn
        _LIVE.add(self)
        limit = max(self.timeout, LOAD_TIMEOUT)
        failure = None
        if not conn.poll(limit):
            where = self._end(hung=True)[1]
            failure = f"did not load within {limit:g} s in the child process (killed{_while_at(where)})"
        else:
            try:
                reply = conn.recv()
            except (EOFError, OSError):
                cause, where = self._end(hung=False)
                failure = f"loading it in a child process {cause}{_at(where)}"
            else:
                if reply[0] == "error":
                    self._stop(kill=False)
                    failure = reply[1] if loading else f"loading it again failed: {reply[1]}"
        if failure is not None:
            if loading:
                raise TargetError(failure if failure.startswith(str(self._label)) else f"{self._label}: {failure}")
            raise ImplementationCrashed(f"restarting the implementation after a crash failed: {failure}", "load")
        _, name, capabilities, attributes = reply
        return name, frozenset(capabilities), attributes

    def _end(self, hung: bool) -> tuple[str, str]:
        """Finish a child that hung (it is killed) or died: (how it died, or "hung"; where, or "")."""
        process = self._process
        if hung and process.is_alive() and hasattr(signal, "SIGUSR1"):
            os.kill(process.pid, signal.SIGUSR1)  # the child writes where it is (faulthandler), then is killed
            time.sleep(0.2)
        process.join(0 if hung else 5)  # a dying child closed its end of the pipe first: let it finish
        stack = implementation_stack(self._read_stacks())
        self._stop(kill=True)
        return ("hung" if hung else describe_death(process.exitcode)), stack

    def _read_stacks(self) -> str:
        chunks = []
        try:
            os.lseek(self._stacks, 0, os.SEEK_SET)
            while chunk := os.read(self._stacks, 1 << 16):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks).decode(errors="replace")

    def _forget(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None
        self._busy = False
        _LIVE.discard(self)
        os.close(self._stacks)
        try:  # the child removes it once open; not when it died before
            os.remove(self._stack_file)
        except OSError:
            pass

    def _stop(self, kill: bool) -> None:
        process = self._process
        if process is None:
            return
        if process.is_alive():
            if kill:
                process.kill()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        self._forget()

    def close(self) -> None:
        """Stop the child (politely, then by SIGKILL). Calls after ``close`` start a new one."""
        with self._lock:
            if self._process is None:
                return
            if not self._busy:  # a call interrupted (Ctrl-C) leaves the child busy: no point in asking
                try:
                    self._conn.send(("close",))
                except (OSError, ValueError):
                    pass
                self._process.join(2)
            self._stop(kill=True)

    def __enter__(self) -> IsolatedImplementation:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The process id of the current child (None between a crash and the next call)."""
        return None if self._process is None else self._process.pid

    # -- one call --

    def _receive(self, method: str, deadline: float):
        if not self._conn.poll(max(0.0, deadline - time.monotonic())):
            where = self._end(hung=True)[1]
            raise ImplementationCrashed(f"{method} did not return within {self.timeout:g} s (killed{_while_at(where)})",
                                        method, hung=True)
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._crashed(method) from None

    def _crashed(self, method: str) -> ImplementationCrashed:
        cause, where = self._end(hung=False)
        return ImplementationCrashed(f"the implementation {cause} in {method}{_at(where)}", method)

    def _send(self, method: str, message) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):  # it died between calls
            raise self._crashed(method) from None

    def _call(self, method: str, args: tuple, kwargs: dict):
        with self._lock:
            if self._process is None:
                name, capabilities, _ = self._start(loading=False)
                if capabilities != self._capabilities:
                    raise TargetError(f"{self.name}: after a restart it offers {sorted(capabilities)}, before "
                                      f"{sorted(self._capabilities)}")
            originals: dict[int, np.ndarray] = {}
            layout = _Layout()
            places: dict[int, tuple] = {}

            def encode(value):
                if isinstance(value, list | tuple) and any(_in_shared_memory(v) or isinstance(v, list | tuple)
                                                           for v in value):
                    return ("list" if isinstance(value, list) else "tuple", [encode(v) for v in value])
                if not _in_shared_memory(value):
                    return ("value", value)
                slot = id(value)
                if slot not in places:
                    originals[slot] = value
                    places[slot] = layout.place(value)
                offset, strides = places[slot]
                return ("array", slot, offset, value.shape, value.dtype, strides, value.flags.writeable)

            arguments = [encode(a) for a in args]
            keywords = {key: encode(v) for key, v in kwargs.items()}
            results_start = _aligned(layout.end)
            # Room for results as large as twice the inputs (float64 results for float32 inputs); more than that
            # costs one more round trip and segment.
            size = results_start + 2 * results_start + 4096
            segment = SharedMemory(create=True, size=size)
            extra = None
            try:
                for slot, value in originals.items():
                    offset, strides = places[slot]
                    np.copyto(_view(segment.buf, offset, value.shape, value.dtype, strides), value)
                deadline = time.monotonic() + self.timeout
                self._busy = True
                self._send(method, ("call", method, segment.name, segment.size, arguments, keywords, results_start,
                                    np.geterr()))
                reply = self._receive(method, deadline)
                if reply[0] == "grow":
                    extra = SharedMemory(create=True, size=reply[1])
                    self._send(method, (extra.name, extra.size))
                    reply = self._receive(method, deadline)
                self._busy = False
                # Whatever the implementation wrote into its arguments shows in the caller's arrays, as in process.
                for slot, value in originals.items():
                    if value.flags.writeable:
                        offset, strides = places[slot]
                        np.copyto(value, _view(segment.buf, offset, value.shape, value.dtype, strides))
                if reply[0] == "raised":
                    raise _rebuild_exception(*reply[1:])
                _, where, encoded = reply
                return _decode_result(encoded, (segment if where == "call" else extra).buf)
            finally:
                for shm in (segment, extra):
                    if shm is not None:
                        shm.close()
                        shm.unlink()


def _decode_result(spec, buffer):
    kind = spec[0]
    if kind in ("tuple", "list"):
        items = [_decode_result(s, buffer) for s in spec[1]]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return spec[1]
    _, offset, shape, dtype, strides, writeable = spec
    array = np.array(_view(buffer, offset, shape, dtype, strides), order="K")  # out of the segment, layout kept
    array.flags.writeable = writeable
    return array
