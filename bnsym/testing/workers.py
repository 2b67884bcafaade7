"""K worker processes joined in one ``torch.distributed`` gloo process group on the loopback interface.

:class:`WorkerGroup` is what the multi-process tests and the sharded adapters of ``bnsym check --shards`` run
distributed code in. ``group.run(function, args_per_rank)`` calls ``function(*args_per_rank[r])`` in rank r of
every worker at once and returns the K results; ``function`` must be importable by name (a module-level function),
its arguments and results picklable.

Every wait is bounded, and a failure never hangs the caller:

* the workers talk to this process over an authenticated socket on 127.0.0.1; the process group's store and gloo
  itself also stay on the loopback interface (``GLOO_SOCKET_IFNAME``);
* a collective that waits longer than ``collective_timeout`` raises in the worker (gloo's own timeout), and
  :meth:`WorkerGroup.run` gives up after ``timeout`` seconds in any case;
* a worker that raises, dies, or does not answer in time makes :meth:`run` raise :class:`WorkerError` with the
  rank, the exception or exit status and the tail of the worker's stderr. The group is then shut down (its ranks
  may be stuck in a collective that will never complete) and, with ``restart=True`` (the default), started again
  on the next call;
* :meth:`close` (also on ``with`` exit, at interpreter exit and when the group is garbage collected) asks the
  workers to leave, then terminates and finally kills any that are still there.

A worker is ``python -m bnsym.testing.workers``, started with this interpreter and ``sys.path``; it exits when this
process goes away (its socket closes).
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge, wait

__all__ = ["WorkerError", "WorkerGroup", "loopback_interface"]

_STDERR_TAIL = 2000  # characters of a failed worker's stderr quoted in the error


class WorkerError(RuntimeError):
    """A worker raised, died or timed out; the message says which rank and what happened."""


def loopback_interface() -> str:
    """The name of the loopback network interface ("lo" on Linux, "lo0" on macOS), for GLOO_SOCKET_IFNAME."""
    names = [name for _, name in socket.if_nameindex()]
    for name in ("lo", "lo0"):
        if name in names:
            return name
    for name in names:
        if name.startswith("lo"):
            return name
    raise WorkerError(f"no loopback interface among {names}: the workers only talk over the loopback interface")


class _Worker:
    def __init__(self, rank: int, process: subprocess.Popen, stderr_path: str):
        self.rank, self.process, self.stderr_path = rank, process, stderr_path
        self.connection: Connection | None = None

    def stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as stream:
                text = stream.read()
        except OSError:
            return ""
        return text[-_STDERR_TAIL:].strip()

    def describe_exit(self) -> str:
        code = self.process.poll()
        status = "is still running" if code is None else f"exited with status {code}"
        tail = self.stderr_tail()
        return f"worker {self.rank} {status}" + (f"; its stderr ends with:\n{tail}" if tail else "")


class WorkerGroup:
    """``size`` worker processes in one gloo process group on 127.0.0.1 (module docstring).

    - ``size``: the number of processes (the world size), at least 1.
    - ``timeout`` (default 60): seconds :meth:`run` waits for every rank's answer.
    - ``collective_timeout`` (default: ``timeout``): gloo's timeout for one collective, in the workers.
    - ``start_timeout`` (default 120): seconds to start the processes and form the group.
    - ``threads`` (default 1): torch intra-op threads per worker (the workers share the machine's cores).
    - ``restart`` (default True): after a failure, start a fresh group on the next :meth:`run`.
    """

    def __init__(self, size: int, *, timeout: float = 60.0, collective_timeout: float | None = None,
                 start_timeout: float = 120.0, threads: int = 1, restart: bool = True):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer (the number of worker processes), got {size!r}")
        for name, value in (("timeout", timeout), ("start_timeout", start_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.size = size
        self.timeout = float(timeout)
        self.collective_timeout = float(collective_timeout if collective_timeout is not None else timeout)
        self.start_timeout = float(start_timeout)
        self.threads = threads
        self.restart = restart
        self._workers: list[_Worker] = []
        self._listener: socket.socket | None = None
        self._authkey = b""
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._failure: str | None = None
        self._finalizer = weakref.finalize(self, WorkerGroup._shutdown_now, self._workers)
        atexit.register(self._finalizer)

    # ----- life cycle -----

    @property
    def started(self) -> bool:
        return bool(self._workers)

    def start(self) -> WorkerGroup:
        """Start the processes and form the process group (a no-op when already started)."""
        if self._workers:
            return self
        if self._failure is not None and not self.restart:
            raise WorkerError(f"this worker group failed earlier and restart=False: {self._failure}")
        authkey = self._authkey = secrets.token_bytes(32)
        self._scratch = tempfile.TemporaryDirectory(prefix="bnsym-workers-")
        self._listener = socket.create_server(("127.0.0.1", 0))
        environment = dict(os.environ, GLOO_SOCKET_IFNAME=loopback_interface(), OMP_NUM_THREADS=str(self.threads))
        host, port = self._listener.getsockname()[:2]
        try:
            for rank in range(self.size):
                stderr_path = os.path.join(self._scratch.name, f"worker-{rank}.stderr")
                with open(stderr_path, "wb") as stderr:
                    process = subprocess.Popen([sys.executable, "-m", "bnsym.testing.workers", host, str(port)],
                                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                                               env=environment)
                worker = _Worker(rank, process, stderr_path)
                self._workers.append(worker)
                # The key travels over the pipe, not the command line or the environment.
                process.stdin.write(authkey.hex().encode() + b"\n")
                process.stdin.close()
            self._accept_all()
            self._form_group()
        except BaseException:
            self._shutdown_now(self._workers)
            self._close_listener()
            raise
        self._failure = None
        return self

    def _accept_all(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = {w.process.pid: w for w in self._workers}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"workers {sorted(w.rank for w in pending.values())} did not connect within "
                                  f"{self.start_timeout:g} s\n" + "\n".join(w.describe_exit()
                                                                           for w in pending.values()))
            dead = [w for w in pending.values() if w.process.poll() is not None]
            if dead:
                raise WorkerError("a worker died while starting: " + dead[0].describe_exit())
            if not wait([self._listener], timeout=min(remaining, 0.5)):
                continue
            accepted, _ = self._listener.accept()
            accepted.setblocking(True)
            connection = Connection(accepted.detach())
            # multiprocessing's own mutual authentication (what Listener.accept does with an authkey).
            deliver_challenge(connection, self._authkey)
            answer_challenge(connection, self._authkey)
            if not connection.poll(remaining):
                raise WorkerError("a worker connected but did not say who it is")
            kind, pid = connection.recv()
            worker = pending.pop(pid, None)
            if kind != "hello" or worker is None:
                connection.close()
                raise WorkerError(f"unexpected connection to the worker listener ({kind!r}, pid {pid})")
            worker.connection = connection

    def _form_group(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        settings = {"world_size": self.size, "collective_timeout": self.collective_timeout,
                    "start_timeout": self.start_timeout,
                    "sys_path": list(sys.path), "threads": self.threads}
        first = self._workers[0]
        first.connection.send(("init", dict(settings, rank=0, store_port=None)))
        (store_port,) = self._receive([first], deadline, "start the process group's store")
        for worker in self._workers[1:]:
            worker.connection.send(("init", dict(settings, rank=worker.rank, store_port=store_port)))
        self._receive(self._workers, deadline, "join the gloo process group")

    def close(self) -> None:
        """Ask every worker to leave the group and exit; terminate (then kill) those that do not within 10 s."""
        workers = list(self._workers)
        for worker in workers:
            try:
                worker.connection.send(("close", None))
            except (OSError, AttributeError):
                pass
        deadline = time.monotonic() + 10
        for worker in workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._shutdown_now(self._workers)
        self._close_listener()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    @staticmethod
    def _shutdown_now(workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        for worker in workers:
            try:
                worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=5)
            if worker.connection is not None:
                worker.connection.close()
        workers.clear()

    def _fail(self, message: str) -> WorkerError:
        """Shut the group down after a failure and return the error to raise (stderr is read first)."""
        self._failure = message
        self._shutdown_now(self._workers)
        self._close_listener()
        return WorkerError(message)

    def __enter__(self) -> WorkerGroup:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- running code -----

    def _receive(self, workers: Sequence[_Worker], deadline: float, what: str, timeout: float | None = None) -> list:
        """One answer from each of ``workers``, in rank order; raises WorkerError on any failure (see module)."""
        answers: dict[int, object] = {}
        by_connection = {w.connection: w for w in workers}
        while len(answers) < len(workers):
            remaining = deadline - time.monotonic()
            waiting = [w for w in workers if w.rank not in answers]
            if remaining <= 0:
                ranks = [w.rank for w in waiting]
                details = "\n".join(w.describe_exit() for w in waiting)
                limit = f"{timeout:g} s" if timeout is not None else "the time limit"
                raise self._fail(f"workers {ranks} did not {what} within {limit} (a collective may be waiting for a "
                                 f"rank that never joins it)\n{details}")
            for connection in wait([w.connection for w in waiting], timeout=remaining):
                worker = by_connection[connection]
                try:
                    kind, payload = connection.recv()
                except (EOFError, OSError):
                    time.sleep(0.2)  # let the process finish exiting, so that its status is known
                    raise self._fail(f"worker {worker.rank} died while trying to {what}: "
                                     f"{worker.describe_exit()}") from None
                if kind == "error":
                    raise self._fail(f"worker {worker.rank} raised while trying to {what}:\n{payload}")
                answers[worker.rank] = payload
        return [answers[w.rank] for w in workers]

    def run(self, function: Callable, args_per_rank: Sequence[tuple] | None = None, *,
            timeout: float | None = None) -> list:
        """``[function(*args_per_rank[r]) in rank r for r in range(size)]``, run in all ranks at once.

        ``args_per_rank`` defaults to no arguments for every rank. Raises :class:`WorkerError` when a rank raises,
        dies or does not answer within ``timeout`` seconds (default: the group's ``timeout``).
        """
        if args_per_rank is None:
            args_per_rank = [()] * self.size
        if len(args_per_rank) != self.size:
            raise ValueError(f"args_per_rank has {len(args_per_rank)} entries, one per rank expected "
                             f"({self.size} ranks)")
        name = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"
        self.start()
        for worker, args in zip(self._workers, args_per_rank):
            try:
                worker.connection.send(("call", (function, tuple(args))))
            except (OSError, ValueError) as error:
                raise self._fail(f"could not send {name} to worker {worker.rank}: {error}; "
                                 f"{worker.describe_exit()}") from None
        limit = self.timeout if timeout is None else float(timeout)
        return self._receive(self._workers, time.monotonic() + limit, f"run {name}", limit)


# ----- the worker process -----

def _serve(host: str, port: int) -> None:
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    connection = Client((host, port), authkey=authkey)
    connection.send(("hello", os.getpid()))
    kind, settings = connection.recv()
    if kind != "init":
        return
    for entry in reversed(settings["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        store = _join(settings, connection)
    except BaseException:
        connection.send(("error", traceback.format_exc()))
        raise
    connection.send(("ready", None))
    try:
        while True:
            kind, payload = connection.recv()
            if kind == "close":
                break
            function, args = payload
            try:
                result = ("ok", function(*args))
            except BaseException as error:
                # The exception's own line first: the traceback of a collective that timed out is long.
                summary = "".join(traceback.format_exception_only(type(error), error)).strip()
                result = ("error", f"{summary}\n\n{traceback.format_exc()}")
            connection.send(result)
    except EOFError:
        pass  # the parent went away: leave
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        del store


def _join(settings: dict, connection: Connection):
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(settings["threads"])
    # Forming the group waits for the slowest worker to start (importing torch on a loaded machine); collectives
    # afterwards get their own, usually shorter, limit.
    timeout = timedelta(seconds=settings["start_timeout"])
    rank, world_size = settings["rank"], settings["world_size"]
    if settings["store_port"] is None:
        store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        connection.send(("port", store.port))
    else:
        store = dist.TCPStore("127.0.0.1", settings["store_port"], world_size, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    collective = timedelta(seconds=settings["collective_timeout"])
    set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is not None:
        set_timeout(collective)
    return store


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
    # Skip the interpreter's teardown (seconds with torch loaded): the group is gone and nothing is left to save.
    sys.stderr.flush()
    os._exit(0)
