"""When the compiled backend compiles: never in the caller's thread under backend="auto" (the NumPy kernels run and
a background process compiles), on the spot and announced when backend="numba" is named, and ahead of time with
`bnsym compile`. The policies are tested on a toy Numba function (no normalisation layer), the switch and the
ahead-of-time compilation on bnsym's own kernels in subprocesses with an empty Numba cache of their own."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from bnsym.runtime import background as _background  # noqa: E402
from bnsym.runtime import compiled as _compiled  # noqa: E402
from bnsym.tools import precompile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@numba.njit
def _scaled_sum(values, scale):
    """A toy loop function: no cache, so never ready on disk."""
    total = 0.0
    for v in values:
        total += v * scale
    return total


@numba.njit
def _toy_maximum(values):
    best = values[0]
    for v in values:
        best = max(best, v)
    return best


def test_a_ready_kernel_runs_under_every_policy():
    values = np.arange(5.0)
    assert _compiled.run_compiled(_scaled_sum, values, 2.0) == 20.0  # WAIT, the default: compiles
    for name in (_compiled.BACKGROUND, _compiled.WAIT):
        with _compiled.policy(name):
            assert _compiled.run_compiled(_scaled_sum, values, 3.0) == 30.0, f"a compiled kernel under {name}"


def test_background_never_compiles_in_the_callers_thread(monkeypatch):
    asked = []
    monkeypatch.setattr(_background, "request", lambda dispatcher, types: asked.append((dispatcher, types)))
    values = np.arange(4, dtype=np.float32)
    with _compiled.policy(_compiled.BACKGROUND), pytest.raises(_compiled.NotCompiled, match="toy_maximum"):
        _compiled.run_compiled(_toy_maximum, values)
    assert (numba.typeof(values),) not in _toy_maximum.overloads, "BACKGROUND compiled in the caller's thread"
    assert asked == [(_toy_maximum, (numba.typeof(values),))], f"the background compiler was asked for {asked}"


def test_record_lists_without_compiling_even_inside_a_wait_block():
    values = np.arange(3, dtype=np.int64)
    _compiled.recorded.clear()
    with _compiled.policy(_compiled.RECORD), _compiled.policy(_compiled.WAIT):
        with pytest.raises(_compiled.NotCompiled):
            _compiled.run_compiled(_toy_maximum, values)
    assert _compiled.recorded == [(_toy_maximum, (numba.typeof(values),))]
    assert numba.typeof(values) not in {types[0] for types in _toy_maximum.overloads}, "RECORD compiled"
    _compiled.recorded.clear()
    ready = np.arange(3.0)
    _compiled.run_compiled(_scaled_sum, ready, 1.0)  # compiled and remembered as ready
    with _compiled.policy(_compiled.RECORD), pytest.raises(_compiled.NotCompiled):
        _compiled.run_compiled(_scaled_sum, ready, 1.0)
    assert len(_compiled.recorded) == 1, "RECORD skipped a kernel that was ready (bnsym compile would leave it out)"
    _compiled.recorded.clear()


def test_a_long_compilation_in_the_callers_thread_is_announced(monkeypatch, caplog):
    monkeypatch.setattr(_compiled, "ANNOUNCE_AFTER", 0.0)
    values = np.arange(3, dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="bnsym"):
        assert _compiled.run_compiled(_scaled_sum, values, np.float32(1.0)) == 3.0
    messages = [r.getMessage() for r in caplog.records]
    assert any("compiling test_compile_policy.scaled_sum (float32) with Numba, once" in m and "bnsym compile" in m
               for m in messages), f"no announcement of the compilation: {messages}"
    assert any(re.search(r"compiled .*scaled_sum.* in \d", m) for m in messages), f"no closing line: {messages}"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bnsym"):
        _compiled.run_compiled(_scaled_sum, values, np.float32(2.0))
    assert not caplog.records, f"a compiled kernel was announced again: {[r.getMessage() for r in caplog.records]}"


def test_the_switch_is_off_when_the_environment_says_so(monkeypatch):
    monkeypatch.setenv(_background.ENVIRONMENT_SWITCH, "0")
    assert not _background.enabled()
    monkeypatch.setenv(_background.ENVIRONMENT_SWITCH, "1")
    assert _background.enabled()


def test_a_worker_that_ends_turns_the_background_compilation_off(monkeypatch, caplog):
    """A compiling process that dies (killed, or an interpreter that cannot import bnsym) is said once, and auto
    then keeps to the NumPy kernels instead of starting process after process."""
    started = []

    def dying_worker():
        started.append(1)
        return subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    monkeypatch.setattr(_background, "_start_worker", dying_worker)
    service = _background._Service()
    values = np.arange(3.0)
    with caplog.at_level(logging.WARNING, logger="bnsym"):
        service.request(_toy_maximum, (numba.typeof(values),))
        assert service.wait(60), "a job whose worker died was left pending"
        service.request(_scaled_sum, (numba.typeof(values), numba.float64))
        assert service.wait(60)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "the process compiling kernels in the background ended" in messages[0], messages
    assert service.status()["pending"] == 0
    assert len(started) == 1, f"{len(started) - 1} more worker processes started after the first one died"
    service._pool.close()


def test_what_an_imported_module_prints_is_not_read_as_an_answer(tmp_path, monkeypatch):
    """A kernel's module that prints when imported (as Numba does with NUMBA_DEBUG_CACHE) must not break the
    worker's answers: they have a pipe of their own."""
    (tmp_path / "noisy_kernels.py").write_text(textwrap.dedent("""
        import numba
        print("imported noisy_kernels")

        @numba.njit
        def twice(values):
            return 2 * values
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import noisy_kernels

    outcomes = []
    done = __import__("threading").Event()
    pool = _background.CompilerPool(1, lambda outcome: (outcomes.append(outcome), done.set()))
    try:
        pool.submit(noisy_kernels.twice, (numba.typeof(np.arange(3.0)),))
        assert done.wait(120), "the worker gave no answer"
    finally:
        pool.close()
    assert outcomes[0].ok, f"the compilation failed: {outcomes[0].error}"


def test_the_backends_name_the_same_policies():
    from bnsym.runtime import backends as _backends

    assert (_backends._WAIT, _backends._BACKGROUND) == (_compiled.WAIT, _compiled.BACKGROUND)


def test_a_forked_child_leaves_its_parents_workers_alone():
    pool = _background.CompilerPool(1, lambda outcome: None)
    try:
        worker = pool._processes[0]
        pool._owner = -1  # as the pool looks from a forked child
        pool.close()
        assert worker.poll() is None, "closing the pool in a child stopped the parent's worker"
    finally:
        pool._owner = os.getpid()
        pool.close()
    assert worker.poll() is not None, "closing the pool in its own process left the worker running"


def _run(script: str, cache: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter with its own Numba cache and the background compilation on."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), _background.ENVIRONMENT_SWITCH: "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *(["-c", textwrap.dedent(script)] if script else []), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


_COMPILE_EVENTS = """
    import numba.core.event as events

    compiled = []

    class Count(events.Listener):
        def on_start(self, event):
            compiled.append(event.data["dispatcher"].py_func.__name__)

        def on_end(self, event):
            pass

    events.register("numba:compile", Count())
"""


def test_auto_runs_numpy_until_the_background_compilation_is_ready_then_the_compiled_kernel(tmp_path):
    script = _COMPILE_EVENTS + """
    import json
    import numpy as np
    import bnsym
    from bnsym.runtime import background as _background
    from bnsym.runtime import compiled as _compiled

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 300)) + 5).astype(np.float32)
    gamma = rng.normal(size=300).astype(np.float32)
    first = bnsym.rms_norm.forward(x, gamma)
    asked = _background.status()
    finished = _background.wait(300)
    later = bnsym.rms_norm.forward(x, gamma)
    numpy_ = bnsym.rms_norm.forward(x, gamma, backend="numpy")
    numba_ = bnsym.rms_norm.forward(x, gamma, backend="numba")
    same = lambda a, b: all(np.array_equal(p, q) for p, q in zip(a, b))
    print(json.dumps({"asked": asked, "finished": finished, "status": _background.status(),
                      "first_is_numpy": same(first, numpy_), "later_is_numba": same(later, numba_),
                      "largest_difference": float(np.max(np.abs(later[0] - first[0]))),
                      "compiled_here": compiled}))
    """
    done = _run(script, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["asked"]["pending"] == 1, f"the first call asked for no background compilation: {seen}"
    assert seen["finished"] and seen["status"]["failed"] == 0, f"the background compilation did not end: {seen}"
    assert seen["first_is_numpy"], "before the kernel was compiled, auto did not run the NumPy kernels"
    assert seen["later_is_numba"], "once the kernel was compiled, auto did not run it"
    # Both backends meet the same accuracy contract (tests/test_family_accuracy.py); y is O(1) here.
    assert seen["largest_difference"] < 1e-5, f"the switch changed y by {seen['largest_difference']}"
    assert seen["compiled_here"] == [], f"the caller's process compiled {seen['compiled_here']}"


def test_after_bnsym_compile_no_public_function_compiles(tmp_path):
    cache = tmp_path / "cache"
    done = _run("", cache, "-m", "bnsym.tools.cli", "compile", "--layer", "rms_norm", "--dtype", "float64")
    assert done.returncode == 0, done.stderr + done.stdout
    assert re.search(r"\[#+\] 4/4 ", done.stdout), f"no progress bar to the end:\n{done.stdout}"
    assert "to compile" in done.stdout and "failed" in done.stdout, done.stdout
    script = _COMPILE_EVENTS + """
    import json
    import numpy as np
    import bnsym

    rng = np.random.default_rng(1)
    x, dy, ggx, tx = (rng.normal(size=(6, 5, 40)) for _ in range(4))
    gamma, gggamma, tgamma = (rng.normal(size=40) for _ in range(3))
    for backend in ("numba", "auto"):
        y, invrms = bnsym.rms_norm.forward(x, gamma, backend=backend)
        bnsym.rms_norm.backward(dy, x, gamma, invrms, backend=backend)
        bnsym.rms_norm.double_backward(ggx, gggamma, dy, x, gamma, invrms, backend=backend)
        bnsym.rms_norm.jvp(x, gamma, tx, tgamma, backend=backend)
    from bnsym._generated import rms_norm_numba as kernels
    hits = sum(sum(getattr(kernels, name).stats.cache_hits.values()) for name in dir(kernels)
               if hasattr(getattr(kernels, name), "stats"))
    print(json.dumps({"compiled_here": compiled, "cache_hits": hits}))
    """
    done = _run(script, cache)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["compiled_here"] == [], f"compiled on first call after bnsym compile: {seen['compiled_here']}"
    assert seen["cache_hits"] >= 4, f"the kernels did not come from Numba's disk cache: {seen}"
    again = _run("", cache, "-m", "bnsym.tools.cli", "compile", "--layer", "rms_norm", "--dtype", "float64")
    assert "4 in Numba's disk cache already, 0 to compile" in again.stdout, again.stdout


def test_bnsym_compile_lists_every_compiled_loop_of_every_generated_module():
    """Every loop function that a generated wrapper can run is among the kernels `bnsym compile` compiles, in
    both dtypes: no layout is left to compile on a user's first call."""
    printed = set()
    for path in sorted((ROOT / "bnsym" / "_generated").glob("*_numba.py")):
        for called in re.findall(r"run_compiled\(([^,]+),", path.read_text()):  # one name, or one per nest
            printed |= {(path.stem, name) for name in re.findall(r"\b_\w+", called)}
    assert printed, "no generated module runs its loops through run_compiled"
    for dtype in precompile.DTYPES:
        listed = {(k.dispatcher.py_func.__module__.rsplit(".", 1)[1], k.dispatcher.py_func.__name__)
                  for k in precompile.kernels(dtypes=[dtype])}
        assert printed <= listed, f"bnsym compile leaves out, in {dtype}: {sorted(printed - listed)}"
        assert all(str(t.dtype) == dtype for k in precompile.kernels(dtypes=[dtype]) for t in k.types
                   if hasattr(t, "dtype") and t.ndim), f"a {dtype} kernel with arrays of another dtype"


@pytest.mark.parametrize(("arguments", "message"), [
    (["--layer", "batchnorm"], "invalid choice: 'batchnorm'"),
    (["--jobs", "0"], "must be at least 1"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
])
def test_bnsym_compile_refuses_bad_options(arguments, message, capsys):
    from bnsym.tools.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["compile", *arguments])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_kernels_refuses_an_unknown_layer():
    with pytest.raises(ValueError, match="unknown layer 'batchnorm': choose from batch_norm"):
        precompile.kernels(layers=["batchnorm"])
    with pytest.raises(TypeError, match=r"layers must be a list of names such as \['rms_norm'\]"):
        precompile.kernels(layers="rms_norm")


def test_bnsym_compile_lists_batch_norm_on_n_c_input_under_channel_first():
    """(N, C) input runs the loops of channels side by side, not those of NCHW's runs."""
    listed = {k.dispatcher.py_func.__name__ for k in precompile.kernels(["batch_norm"], ["float32"],
                                                                        ["channel-first"])}
    assert {"_batch_norm_forward_rows", "_batch_norm_forward_runs"} <= listed, sorted(listed)
