"""`bnsym check --isolate`: a crash, an abort, a hang or a kill of the implementation is a failed property with its
cause, its example and its replay file; the run goes on, and no child process outlives it.

The failures are planted in small targets written to a temporary directory. Each crashes only when x has at least
3 rows, so that the minimal counterexample Hypothesis shrinks to is recognisable ((3, 1)), and so that a property
whose examples have one row (``one_value_per_channel``) passes afterwards in a fresh child. Every test is bounded:
subprocesses by their timeout, in-process runs by the isolation timeout and by an alarm (``bounded`` below).
"""

import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import bnsym
from bnsym.testing import CheckFailed, TargetError, check_batchnorm
from bnsym.testing.isolation import ImplementationCrashed, IsolatedImplementation, implementation_stack
from bnsym.tools.cli import main
from tests import budget

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_batchnorm.py"
PROPERTIES = ["--property", "shapes_and_dtypes", "--property", "one_value_per_channel"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="plants POSIX signals")

PLANTED = '''
import ctypes
import os
import resource
import signal
import time

import numpy as np

if os.environ.get("BNSYM_TEST_PIDS"):  # every process that loads this file says so
    with open(os.environ["BNSYM_TEST_PIDS"], "a") as pids:
        pids.write(f"{os.getpid()}\\n")


def forward(x, gamma, beta, eps):
    """A correct two-pass batch norm."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return gamma.reshape(shape) * (x - mean) / np.sqrt(var + eps) + beta.reshape(shape)


class Abort:
    def forward(self, x, gamma, beta, eps):
        if x.shape[0] >= 3:
            os.abort()
        return forward(x, gamma, beta, eps)


class Segfault:
    def forward(self, x, gamma, beta, eps):
        if x.shape[0] >= 3:
            ctypes.string_at(0)
        return forward(x, gamma, beta, eps)


class OutOfMemoryKill:
    """What the kernel's out-of-memory killer does to a process: SIGKILL."""

    def forward(self, x, gamma, beta, eps):
        if x.shape[0] >= 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(x, gamma, beta, eps)


class Hang:
    def forward(self, x, gamma, beta, eps):
        while x.shape[0] >= 3:
            time.sleep(0.05)
        return forward(x, gamma, beta, eps)


class Exit:
    def forward(self, x, gamma, beta, eps):
        os._exit(3)


class AllocateUntilRefused:
    """Allocates 64 MB blocks until the allocator refuses, under an address-space limit of 512 MB more than the
    process has (set in the isolated process only, and restored): a bounded stand-in for a kernel that swallows
    memory. np.empty reserves address space without touching it, so the machine never runs short."""

    def forward(self, x, gamma, beta, eps):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 2**29, hard))
        blocks = []
        try:
            while True:
                blocks.append(np.empty(2**26, np.uint8))
        finally:
            blocks.clear()
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class KernelError(RuntimeError):
    pass


class Protocol:
    """Round trips through the isolation: results, exceptions, layouts, in-place writes, cached inputs. A string
    eps names the method below that forward runs on x instead (the test's way to call them in the child)."""

    def __init__(self):
        self.cached = None

    def forward(self, x, gamma, beta, eps):
        if isinstance(eps, str):
            return getattr(self, eps)(x)
        return forward(x, gamma, beta, eps)

    def backward(self, dy, x, gamma, beta, eps):
        x += 1  # writes into its argument: the checker must see it (inputs_not_modified)
        return dy, gamma, beta

    def layout(self, x):
        return x.flags.f_contiguous, x.flags.writeable, x.T

    def raise_value_error(self, x):
        raise ValueError("gamma has shape (3,), expected (4,)")

    def raise_kernel_error(self, x):
        raise KernelError("kernel launch failed")

    def large(self, x):
        return np.ones(100 * x.size, np.float64), [np.float16(1.5), None, "text"]

    def keep(self, x):
        previous, self.cached = self.cached, x
        return x if previous is None else previous
'''


@pytest.fixture(autouse=True)
def bounded():
    """Fail a test that runs longer than 120 s (the subprocess runs have their own timeouts)."""
    def expire(signum, frame):
        raise TimeoutError("test_isolation: a test ran longer than 120 s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """The planted targets' file; every process that loads it appends its pid to ``pids`` next to it. A test that
    fails leaves none of them running."""
    path = tmp_path / "planted.py"
    path.write_text(PLANTED)
    monkeypatch.setenv("BNSYM_TEST_PIDS", str(tmp_path / "pids"))
    yield path
    kill_all(pid for pid in loaded_pids(path) if alive(pid))


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def loaded_pids(planted: Path) -> list[int]:
    pids = planted.parent / "pids"
    return [int(line) for line in pids.read_text().split()] if pids.exists() else []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def assert_all_gone(pids, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)], f"child processes left behind: {pids}"


def check(target: str, *options: str, save_dir: Path) -> list[str]:
    return ["check", target, "--isolate", *options, "--max-examples", "10", "--save-dir", str(save_dir)]


# ----- the CLI: each failure planted -----

@pytest.mark.parametrize(("name", "cause"), [
    ("Abort", "the implementation crashed with SIGABRT (signal 6) in forward"),
    ("Segfault", "the implementation crashed with SIGSEGV (signal 11) in forward"),
    ("OutOfMemoryKill", "the implementation crashed with SIGKILL (signal 9, sent from outside the process: by the "
                        "out-of-memory killer, for example) in forward"),
])
def test_crash_fails_the_property_with_its_signal_and_the_run_goes_on(planted, tmp_path, capsys, name, cause):
    target = f"{planted}:{name}"
    assert main(check(target, *PROPERTIES, save_dir=tmp_path / "saved")) == 1
    out = capsys.readouterr().out
    assert "FAIL  shapes_and_dtypes" in out
    assert cause in out
    if name != "OutOfMemoryKill":  # a SIGKILL leaves no stack behind
        assert re.search(rf"{re.escape(str(planted))}:\d+ in forward", out), out
    # The crash is a failed example like any other: its example (x with at least 3 rows, the crash's condition) is
    # reported and saved.
    shape = re.search(r"minimal counterexample: x of shape \((\d+),", out)
    assert shape and int(shape[1]) >= 3, out
    saved = list((tmp_path / "saved").glob("*-shapes_and_dtypes-*.npz"))
    assert len(saved) == 1
    assert f"replay one: bnsym check {target} --isolate --replay {saved[0]}" in out
    # The next property ran in a fresh child and passed; the run completed.
    assert "PASS  one_value_per_channel" in out
    assert "2 properties: 1 passed, 1 failed" in out
    pids = loaded_pids(planted)
    assert len(pids) >= 2  # the child that crashed, and at least one after it
    assert_all_gone(pids)


def test_replay_of_a_crash_crashes_only_the_child(planted, tmp_path, capsys):
    target = f"{planted}:Segfault"
    assert main(check(target, "--property", "forward_reference", save_dir=tmp_path)) == 1
    (saved,) = tmp_path.glob("*.npz")
    capsys.readouterr()
    assert main(["check", target, "--isolate", "--replay", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  forward_reference" in out and "crashed with SIGSEGV (signal 11) in forward" in out
    assert_all_gone(loaded_pids(planted))


def test_hang_is_killed_after_the_timeout_and_the_run_goes_on(planted, tmp_path, capsys):
    target = f"{planted}:Hang"
    start = time.monotonic()
    assert main(check(target, *PROPERTIES, "--timeout", "2", save_dir=tmp_path)) == 1
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert "FAIL  shapes_and_dtypes" in out
    assert re.search(rf"forward did not return within 2 s \(killed while at {re.escape(str(planted))}:\d+ in "
                     r"forward", out), out
    assert "not shrunk" in out  # each shrinking attempt could wait the whole timeout
    assert "counterexample (the first that hung, not shrunk): x of shape" in out, out
    assert "minimal counterexample" not in out, f"an unshrunk hang is called minimal:\n{out}"
    (saved,) = tmp_path.glob("*-shapes_and_dtypes-*.npz")
    assert f"--isolate --timeout 2 --replay {saved}" in out
    assert "PASS  one_value_per_channel" in out
    assert "2 properties: 1 passed, 1 failed" in out
    assert elapsed < 60  # one timeout, not one per shrinking attempt
    assert_all_gone(loaded_pids(planted))


def test_correct_target_passes_under_isolate(capsys):
    assert main(["check", f"{EXAMPLE}:MyBatchNorm", "--isolate", "--dtype", "float32", "--max-examples", "5"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes in /proc")


@needs_proc
def test_nothing_outlives_the_cli(planted, tmp_path):
    """The whole `bnsym check --isolate` process tree is gone when the command returns: the implementation's
    children, and multiprocessing's helpers (the fork server, the shared-memory tracker)."""
    marker = f"BNSYM_ISOLATION_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, marker: "1", "PYTHONPATH": str(ROOT)}
    try:
        result = subprocess.run([sys.executable, "-m", "bnsym.tools.cli", *check(f"{planted}:Segfault", *PROPERTIES,
                                                                           save_dir=tmp_path)],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "crashed with SIGSEGV (signal 11) in forward" in result.stdout
        assert "Fatal Python error" not in result.stderr  # the crash dumps go to the report, not the terminal
        assert_none_left(marker)
    finally:
        kill_all(processes_with(marker))


def assert_none_left(marker: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == [], "processes left behind"


def processes_with(marker: str) -> list[int]:
    """The processes started with ``marker`` in their environment: a command and everything it started."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


@needs_proc
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=lambda how: how.name)
def test_a_checker_killed_during_a_hang_takes_its_children_along(planted, tmp_path, how):
    """Killed from outside (a CI job's timeout), the checker runs no cleanup: the kernel and the child's watch on
    the checker end the hung child, and with it multiprocessing's helpers."""
    marker = f"BNSYM_ISOLATION_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, marker: "1", "PYTHONPATH": str(ROOT)}
    checker = subprocess.Popen([sys.executable, "-m", "bnsym.tools.cli", *check(f"{planted}:Hang", "--property",
                                                                          "forward_reference", "--timeout", "100",
                                                                          save_dir=tmp_path)],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not loaded_pids(planted) and time.monotonic() < deadline:  # the child has loaded the target
            time.sleep(0.1)
        assert loaded_pids(planted), "the isolated child never loaded the target"
        time.sleep(1.0)  # by now the first examples run, and one of them hangs
        assert len(processes_with(marker)) >= 3  # the checker, the child, the fork server (and a tracker)
        checker.send_signal(how)
        checker.wait(timeout=30)
        assert_none_left(marker)
    finally:
        checker.kill()
        checker.wait(timeout=30)
        kill_all(processes_with(marker))


def test_timeout_needs_isolate(capsys):
    assert main(["check", f"{EXAMPLE}:MyBatchNorm", "--timeout", "5"]) == 2
    assert "--timeout needs --isolate" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_timeout_must_be_a_positive_number(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["check", f"{EXAMPLE}:MyBatchNorm", "--isolate", "--timeout", value])
    assert exit_.value.code == 2
    assert "--timeout" in capsys.readouterr().err


# ----- check_batchnorm -----

def test_check_batchnorm_isolate_reports_the_crash(planted):
    with pytest.raises(CheckFailed) as failed:
        check_batchnorm(f"{planted}:Abort", isolate=True, timeout=30, properties=["forward_reference"],
                        max_examples=10)
    assert "crashed with SIGABRT (signal 6) in forward" in str(failed.value)
    assert failed.value.report.failed == ["forward_reference"]
    assert_all_gone(loaded_pids(planted))


def test_a_crash_is_not_taken_for_the_clear_error_a_property_accepts(planted):
    """one_value_per_channel passes an implementation that raises on one value per channel (PyTorch does); a
    process that dies there is no such error."""
    with pytest.raises(CheckFailed) as failed:
        check_batchnorm(f"{planted}:Exit", isolate=True, properties=["one_value_per_channel"], max_examples=5)
    assert "the implementation exited with status 3 in forward" in str(failed.value)


def test_check_batchnorm_isolate_takes_a_picklable_function():
    report = check_batchnorm(bnsym_forward, isolate=True, max_examples=3,
                             properties=["forward_reference", "one_value_per_channel"])
    assert sorted(report.passed) == ["forward_reference", "one_value_per_channel"]


def bnsym_forward(x, gamma, beta, eps):
    """bnsym's own forward: a function the isolated process imports from this module by name."""
    return bnsym.batch_norm_forward(x, gamma, beta, eps=eps, axis=1)[0]


def test_an_allocation_refused_in_the_child_is_a_failure_not_a_crash(planted):
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS bounds allocations on Linux")
    with pytest.raises(CheckFailed) as failed:
        check_batchnorm(f"{planted}:AllocateUntilRefused", isolate=True, properties=["forward_reference"],
                        max_examples=2)
    assert "forward raised MemoryError" in str(failed.value)


def test_check_batchnorm_argument_errors():
    with pytest.raises(ValueError, match="timeout needs isolate=True"):
        check_batchnorm(bnsym_forward, timeout=5)
    with pytest.raises(TypeError, match="cannot be pickled"):
        check_batchnorm(lambda x, gamma, beta, eps: x, isolate=True)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        check_batchnorm(bnsym_forward, isolate=True, timeout=0)


# ----- IsolatedImplementation: what crosses the process boundary -----

@pytest.fixture
def protocol(planted):
    with IsolatedImplementation(f"{planted}:Protocol", timeout=30) as impl:
        yield impl


def method(impl: IsolatedImplementation, name: str):
    """A method of the Protocol target outside the protocol, called on x through forward in the child."""
    return lambda x=None: impl.forward(x, None, None, name)


def test_looks_like_the_implementation_in_process(protocol, planted):
    assert protocol.name == f"{planted}:Protocol"
    assert protocol.capabilities == {"forward", "backward"}
    assert protocol.eval_forward is None
    x = np.random.default_rng(0).normal(size=(4, 3, 2))
    gamma, beta = np.linspace(0.5, 2, 3), np.linspace(-1, 1, 3)
    y = protocol.forward(x, gamma, beta, 1e-5)
    assert y.dtype == np.float64 and y.shape == x.shape
    np.testing.assert_allclose(y, bnsym_forward(x, gamma, beta, 1e-5), rtol=1e-12, atol=1e-12)


def test_writes_into_arguments_reach_the_caller(protocol):
    x, dy = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    protocol.backward(dy, x, np.ones(3, np.float32), np.zeros(3, np.float32), 1e-5)
    np.testing.assert_array_equal(x, np.ones((2, 3)))


def test_layout_and_read_only_flags_cross_both_ways(protocol):
    x = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    x.flags.writeable = False
    fortran, writeable, transposed = method(protocol, "layout")(x)
    assert fortran and not writeable
    assert transposed.flags.c_contiguous  # x.T of a Fortran array: C order, as it was returned
    np.testing.assert_array_equal(transposed, x.T)


def test_exceptions_keep_their_class_name_and_message(protocol):
    with pytest.raises(ValueError, match=r"gamma has shape \(3,\), expected \(4,\)"):
        method(protocol, "raise_value_error")(np.ones(1))
    with pytest.raises(RuntimeError, match="kernel launch failed") as raised:
        method(protocol, "raise_kernel_error")(np.ones(1))
    assert type(raised.value).__name__ == "KernelError"


def test_results_larger_than_the_room_left_and_plain_values(protocol):
    x = np.ones((2, 3), np.float16)
    big, values = method(protocol, "large")(x)
    np.testing.assert_array_equal(big, np.ones(600))
    assert values == [np.float16(1.5), None, "text"] and type(values[0]) is np.float16


def test_an_input_the_implementation_keeps_is_not_overwritten_by_the_next_call(protocol):
    first, second = np.full(5, 1.0), np.full(5, 2.0)
    method(protocol, "keep")(first)
    np.testing.assert_array_equal(method(protocol, "keep")(second), first)


def test_a_crash_raises_and_the_next_call_gets_a_fresh_child(planted):
    x, gamma, beta = np.ones((3, 2)), np.ones(2), np.zeros(2)
    with IsolatedImplementation(f"{planted}:Segfault", timeout=30) as impl:
        first = impl.pid
        with pytest.raises(ImplementationCrashed) as crashed:
            impl.forward(x, gamma, beta, 1e-5)
        assert crashed.value.method == "forward" and not crashed.value.hung
        assert "SIGSEGV (signal 11)" in crashed.value.message
        assert impl.pid is None and not alive(first)
        y = impl.forward(x[:2], gamma, beta, 1e-5)  # two rows: no crash, in a new child
        assert y.shape == (2, 2) and impl.pid not in (None, first)
    assert_all_gone(loaded_pids(planted))


def test_an_exit_of_the_process_is_reported_with_its_status(planted):
    with IsolatedImplementation(f"{planted}:Exit", timeout=30) as impl, pytest.raises(ImplementationCrashed) as ended:
        impl.forward(np.ones((2, 1)), np.ones(1), np.zeros(1), 1e-5)
    assert ended.value.message.startswith("the implementation exited with status 3 in forward")


def test_spawn_start_method_works_too(planted):
    with IsolatedImplementation(f"{planted}:Abort", timeout=60, start_method="spawn") as impl:
        np.testing.assert_allclose(impl.forward(np.eye(2), np.ones(2), np.zeros(2), 1e-5),
                                   bnsym_forward(np.eye(2), np.ones(2), np.zeros(2), 1e-5))
        with pytest.raises(ImplementationCrashed, match=r"SIGABRT \(signal 6\) in forward"):
            impl.forward(np.ones((3, 1)), np.ones(1), np.zeros(1), 1e-5)
    assert_all_gone(loaded_pids(planted))


@pytest.mark.parametrize(("source", "message"), [
    ("missing.py:Name", "no such file"),
    ("{planted}:Nothing", "has no attribute 'Nothing'"),
])
def test_load_errors_are_target_errors(planted, source, message):
    with pytest.raises(TargetError, match=message):
        IsolatedImplementation(source.format(planted=planted))


def test_a_target_that_crashes_while_loading_is_a_target_error(tmp_path):
    path = tmp_path / "crashes_on_import.py"
    path.write_text("import ctypes\nctypes.string_at(0)\n")
    with pytest.raises(TargetError, match=r"crashed with SIGSEGV \(signal 11\)"):
        IsolatedImplementation(f"{path}:forward")


def test_unpicklable_object_is_refused_with_advice():
    with pytest.raises(TypeError, match="pass a target string"):
        IsolatedImplementation(lambda x, gamma, beta, eps: x)
    assert pickle.dumps(bnsym_forward)  # while a module-level function is fine


def test_the_stack_of_the_implementation_is_read_from_a_faulthandler_dump():
    dump = textwrap.dedent('''\
        Fatal Python error: Segmentation fault

        Thread 0x00007f85db7ff6c0 (most recent call first):
          File "/x/bnsym/testing/isolation.py", line 238 in watch

        Current thread 0x00007f85e37cab80 (most recent call first):
          File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at
          File "/tmp/kernel.py", line 18 in forward
          File "/x/bnsym/testing/isolation.py", line 292 in _answer
          File "/x/bnsym/testing/isolation.py", line 270 in _serve
        ''')
    assert implementation_stack(dump) == ("/tmp/kernel.py:18 in forward > /usr/lib/python3.11/ctypes/__init__.py:519 "
                                          "in string_at")
    assert implementation_stack("Fatal Python error: Aborted\n") == ""
    deep = "Current thread 0x1 (most recent call first):\n" + "".join(
        f'  File "/lib/torch/f{i}.py", line {i} in f{i}\n' for i in range(5)) + \
        '  File "/tmp/kernel.py", line 7 in forward\n  File "/x/bnsym/testing/isolation.py", line 292 in _answer\n'
    assert implementation_stack(deep, limit=3) == "/tmp/kernel.py:7 in forward > ... > /lib/torch/f1.py:1 in f1 > " \
                                                  "/lib/torch/f0.py:0 in f0"


# ----- isolation changes nothing else -----

TRANSPARENT = ["in_place_centring", "single_value_nan", "half_sum_of_squares", "statistics_updated_in_eval",
               "double_backward_missing_term"]


@pytest.mark.parametrize("name", TRANSPARENT)
def test_an_isolated_check_reports_exactly_what_an_in_process_check_reports(name):
    """Planted bugs that write into their inputs, return NaN, compute in float16, write the running buffers in
    eval mode, or get the double backward wrong: the same failures, messages and minimal counterexamples."""
    from tests.testing import zoo, zoo_layer

    bug = {b.name: b for b in (*zoo.BUGS, *zoo_layer.BUGS)}[name]
    options = {"dtype": getattr(bug, "dtype", "float64"), **getattr(bug, "options", {})}

    def outcome(impl, **isolation):
        with pytest.raises(CheckFailed) as failed:
            check_batchnorm(impl, properties=list(bug.caught_by), max_examples=budget.ISOLATED, **options, **isolation)
        return [(r.name, r.status, r.reason, r.counterexample.example.describe() if r.counterexample else "")
                for r in failed.value.report.results]

    assert outcome(bug.impl, isolate=True, timeout=60) == outcome(bug.impl())


def test_a_segfault_without_isolate_says_where_and_what_isolate_does(planted, tmp_path):
    """Without --isolate a segfault ends the run (exit -11/139); with stdout piped the report is lost, but stderr has
    the traceback down to the implementation's line, and the hint that --isolate makes it a finding."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "bnsym.tools.cli", "check", f"{planted}:Segfault", "--property",
                             "forward_reference", "--save-dir", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode in (-11, 139), (result.returncode, result.stderr)
    assert "Fatal Python error: Segmentation fault" in result.stderr, result.stderr
    assert re.search(rf'File "{re.escape(str(planted))}", line \d+ in forward', result.stderr), result.stderr
    assert "With --isolate it runs in a child process" in result.stderr, result.stderr
