"""A batch norm whose native kernel crashes the process on batches of three samples or more (standing in for a
C extension that reads out of bounds): what `bnsym check --isolate` turns into a reported failure.

    bnsym check examples/crashing_kernel.py:CrashingBatchNorm --isolate --property shapes_and_dtypes

Without --isolate the crash ends the checker (its traceback and a hint go to stderr).
"""

import os

import numpy as np


class CrashingBatchNorm:
    def forward(self, x, gamma, beta, eps):
        if x.shape[0] >= 3:
            os.abort()  # what a segfaulting kernel does to the process: a fatal signal
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (gamma.reshape(shape) * (x - mean) / np.sqrt(var + eps) + beta.reshape(shape)).astype(x.dtype)
