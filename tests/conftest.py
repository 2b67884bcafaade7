"""Settings for the whole suite.

* Hypothesis profiles: CI runs derandomised, so every CI run tries the same examples.
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
"""

import importlib.util
import os

os.environ.setdefault("BNSYM_BACKGROUND_COMPILE", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by OpenMP when it loads: before any kernel runs

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

if importlib.util.find_spec("numba") is not None:
    import numba

    numba.set_num_threads(1)
