"""Hypothesis profiles: CI runs derandomised, so every CI run tries the same examples. And no background
compilation: backend="auto" would otherwise start a process compiling kernels that no test waits for (the tests of
that switch turn it on for their own subprocesses)."""

import os

os.environ.setdefault("BNSYM_BACKGROUND_COMPILE", "0")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
