"""Settings for the whole suite.

* Hypothesis profiles: CI runs derandomised, so every CI run tries the same examples; ``thorough`` draws four times
  as many examples in the property checks (tests/budget.py; their examples follow the check's seed) and new,
  random ones in the plain ``@given`` tests (400 where a test does not set its own count).
* No background compilation: backend="auto" would otherwise start a process compiling kernels that no test waits
  for (the tests of that switch turn it on for their own subprocesses).
* One Numba thread per test process. The suite already runs one process per core (pytest-xdist, ``-n auto``), so
  a second thread per process only competes for the same cores, and the tests' arrays are small: with two
  processes of two OpenMP threads each on two cores, a parallel kernel's fork and join cost milliseconds, and a
  Hypothesis test of the compiled backend ran 3-4 times slower than with one thread (measured on
  test_correct_layer_passes_every_option: 21 s against 6 s in one process). The pool keeps its
  ``NUMBA_NUM_THREADS`` threads, and the tests that compare thread counts (test_backends.py,
  test_compiled_layouts.py) still switch to two; the kernels compiled are the same, whatever the thread count.
  Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY``), here and in the subprocesses the tests
  start, for the same reason.
* JAX's persistent compilation cache, in ``.pytest_cache/jax`` of the checkout (ignored by git), here and in the
  subprocesses the tests start: JAX compiles every new shape and dtype, eagerly op by op or under jit, and the
  suite's JAX tests compile the same programs on every run. With every compilation cached (JAX caches only those of
  a second or more by default), a second run loads them instead: measured on two of
  test_zoo_family.py::test_torch_and_jax_pass's jax cases, 11.9 s of CPU without the cache, 11.1 s on the run that
  fills it, 7.1 s on the next. A cache entry is keyed by the program, the options and JAX's version; a variable
  set by the caller wins.
"""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("BNSYM_BACKGROUND_COMPILE", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by OpenMP when it loads: before any kernel runs
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # read by JAX when it is imported: after this file, in every test
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
# Random draws in the @given tests, and four times the examples in the checks (tests/budget.py reads the name).
settings.register_profile("thorough", deadline=None, print_blob=True, max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

if importlib.util.find_spec("numba") is not None:
    import numba

    numba.set_num_threads(1)
