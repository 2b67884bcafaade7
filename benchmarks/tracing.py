"""Peak extra memory of one call, as the benchmarks report it (``run.py``'s tables and ``memory.py``)."""

from __future__ import annotations

import gc
import tracemalloc


def peak_extra(function, size: int) -> float:
    """tracemalloc's peak during one call of ``function`` (its results included), as a multiple of ``size`` bytes.

    NumPy's allocations and the compiled loops' are traced; a library with its own allocator (PyTorch) is not.
    """
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    result = function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return (peak - before) / size
