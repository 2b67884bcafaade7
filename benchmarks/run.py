"""Benchmark bnsym's generated batch norm against PyTorch's native CPU kernels and hand-written NumPy.

Run from the repository root::

    python benchmarks/run.py            # the full table (a few minutes)
    python benchmarks/run.py --quick    # fewer repeats, for a first look

For each dtype and shape it times, interleaved within every repeat (the order rotates from one repeat to the
next) and reported as medians over the repeats:

* forward: ``bnsym.batch_norm_forward``; ``torch.ops.aten.native_batch_norm``; a compact NumPy forward;
* backward: ``bnsym.batch_norm_backward``; ``torch.ops.aten.native_batch_norm_backward``; the staged
  "computational graph" NumPy backward of the tutorials; a compact hand-written NumPy backward.

PyTorch runs on one thread (``torch.set_num_threads(1)``), as NumPy's elementwise code does. NHWC tensors are
handed to PyTorch as channels-last views of the same memory. The ratios come from the same run. Peak extra
memory is tracemalloc's peak during one call, over the input's size (outputs included). Finally it times
``python -m bnsym.cli derive --check`` in a fresh process: rendering every derivation from scratch.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

try:
    import torch
except ImportError:  # the comparison with PyTorch's native kernels is what this benchmark is for
    sys.exit("benchmarks/run.py compares bnsym with PyTorch's native kernels and needs PyTorch: "
             "pip install torch==2.13.0 (or pip install -e '.[test]', which installs it)")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402

import bnsym  # noqa: E402

SHAPES = [  # shape, channel axis, label
    ((256, 1024), 1, "(256, 1024)"),
    ((4096, 1024), 1, "(4096, 1024)"),
    ((32, 64, 56, 56), 1, "(32, 64, 56, 56) NCHW"),
    ((32, 56, 56, 64), -1, "(32, 56, 56, 64) NHWC"),
]
EPS = 1e-5


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}, "
            f"PyTorch {torch.__version__} ({torch.get_num_threads()} thread); "
            f"{datetime.date.today().isoformat()}")


class _Problem:
    """One dtype and shape: the arrays for every implementation, and the callables to time."""

    def __init__(self, shape, axis, dtype):
        rng = np.random.default_rng(0)
        self.x = rng.normal(3, 2, size=shape).astype(dtype)
        self.dy = rng.normal(size=shape).astype(dtype)
        channels = shape[axis]
        self.gamma = rng.uniform(0.5, 2, size=channels).astype(dtype)
        self.beta = rng.normal(size=channels).astype(dtype)
        self.axis = axis
        _, self.mean, self.invstd = bnsym.batch_norm_forward(self.x, self.gamma, self.beta, EPS, axis)
        ndim = len(shape)
        self.axes = tuple(i for i in range(ndim) if i != axis % ndim)
        self.count = self.x.size // channels
        broadcast = [1] * ndim
        broadcast[axis] = channels
        self.per_channel = [a.reshape(broadcast) for a in (self.gamma, self.mean, self.invstd, self.beta)]
        # PyTorch wants the channel axis at 1: NHWC becomes a channels-last view of the same memory, no copy.
        as_nchw = (lambda a: torch.from_numpy(np.moveaxis(a, -1, 1))) if axis == -1 else torch.from_numpy
        self.tx, self.tdy = as_nchw(self.x), as_nchw(self.dy)
        self.tgamma, self.tbeta = torch.from_numpy(self.gamma), torch.from_numpy(self.beta)
        _, self.tmean, self.tinvstd = torch.ops.aten.native_batch_norm(self.tx, self.tgamma, self.tbeta, None, None,
                                                                       True, 0.1, EPS)

    def forward(self):
        return {
            "bnsym": lambda: bnsym.batch_norm_forward(self.x, self.gamma, self.beta, EPS, self.axis),
            "torch": lambda: torch.ops.aten.native_batch_norm(self.tx, self.tgamma, self.tbeta, None, None, True,
                                                              0.1, EPS),
            "compact": lambda: baselines.compact_forward(self.x, self.per_channel[0], self.per_channel[3], EPS,
                                                         self.axes, self.count),
        }

    def backward(self):
        gamma, mean, invstd, _ = self.per_channel
        return {
            "bnsym": lambda: bnsym.batch_norm_backward(self.dy, self.x, self.gamma, self.mean, self.invstd, self.axis),
            "torch": lambda: torch.ops.aten.native_batch_norm_backward(
                self.tdy, self.tx, self.tgamma, None, None, self.tmean, self.tinvstd, True, EPS, [True, True, True]),
            "staged": lambda: baselines.staged_backward(self.dy, self.x, gamma, mean, invstd, self.axes, self.count),
            "compact": lambda: baselines.compact_backward(self.dy, self.x, gamma, mean, invstd, self.axes,
                                                          self.count),
        }

    def check(self):
        """Every implementation computes the same thing (else the timings would mean nothing)."""
        tolerance = 1e-3 if self.x.dtype == np.float32 else 1e-9
        reference = self.backward()["bnsym"]()[0]
        scale = np.max(np.abs(reference))
        for name, run in self.backward().items():
            dx = run()[0]
            dx = np.moveaxis(dx.numpy(), 1, -1) if name == "torch" and self.axis == -1 else np.asarray(dx)
            error = np.max(np.abs(dx - reference)) / scale
            if error > tolerance:
                raise AssertionError(f"{name} backward differs from bnsym by {error:.1e} on {self.x.shape}")


def _medians(functions: dict, repeats: int) -> dict:
    """Median seconds per call; the implementations take turns within each repeat, in a rotating order."""
    names = list(functions)
    times = {name: [] for name in names}
    for name in names:
        functions[name]()  # warm-up: first-touch page faults, lazy imports
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _peak_extra(function, size: int) -> float:
    """tracemalloc's peak during one call (results included), as a multiple of ``size`` bytes."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    result = function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return (peak - before) / size


def _regeneration_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bnsym.cli", "derive", "--check"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 15")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (overrides --quick)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 15)
    torch.set_num_threads(1)
    print(f"Machine: {_machine()}")
    print(f"Medians of {repeats} interleaved repeats; times in ms; memory: peak extra / input size.\n")
    print("| dtype | shape | fwd bnsym | fwd torch | **fwd bnsym/torch** | fwd compact | bwd bnsym | bwd torch | "
          "**bwd bnsym/torch** | bwd staged | bwd compact | **staged/bnsym** | compact/bnsym | mem fwd | "
          "**mem bwd** |")
    print("|" + "---|" * 15)
    for dtype in (np.float32, np.float64):
        for shape, axis, label in SHAPES:
            problem = _Problem(shape, axis, dtype)
            problem.check()
            forward = _medians(problem.forward(), repeats)
            backward = _medians(problem.backward(), repeats)
            size = problem.x.nbytes
            memory_forward = _peak_extra(problem.forward()["bnsym"], size)
            memory_backward = _peak_extra(problem.backward()["bnsym"], size)
            ms = {k: 1e3 * v for k, v in backward.items()}
            fms = {k: 1e3 * v for k, v in forward.items()}
            print(f"| {np.dtype(dtype).name} | {label} | {fms['bnsym']:.2f} | {fms['torch']:.2f} | "
                  f"**{forward['bnsym'] / forward['torch']:.2f}x** | {fms['compact']:.2f} | {ms['bnsym']:.2f} | "
                  f"{ms['torch']:.2f} | **{backward['bnsym'] / backward['torch']:.2f}x** | {ms['staged']:.2f} | "
                  f"{ms['compact']:.2f} | **{backward['staged'] / backward['bnsym']:.1f}x** | "
                  f"{backward['compact'] / backward['bnsym']:.1f}x | {memory_forward:.2f} | "
                  f"**{memory_backward:.2f}** |", flush=True)
    print(f"\nRegenerating every derivation (`python -m bnsym.cli derive --check`, fresh process): "
          f"{_regeneration_seconds():.1f} s")


if __name__ == "__main__":
    main()
