"""Benchmark bnsym's backends against PyTorch's native CPU kernels and hand-written NumPy.

Run from the repository root::

    python benchmarks/run.py            # every table (several minutes)
    python benchmarks/run.py --quick    # fewer repeats, for a first look

It prints, in one run (so that every ratio compares figures measured minutes apart on the same machine):

1. the machine and the **copy bandwidth**: ``numpy.copyto`` of 256 MB (one thread) and ``Tensor.copy_`` of 256 MB
   (PyTorch's parallel copy) on 1 and 2 threads, in GB/s of bytes read plus bytes written;
2. **the NumPy backend** (``backend="numpy"``, one operation per pass) against ``torch.ops.aten.native_batch_norm``
   and ``native_batch_norm_backward`` on one thread, with the staged "computational graph" NumPy backward of the
   tutorials and compact hand-written NumPy (``baselines.py``), float32 and float64, and tracemalloc's peak extra
   memory during one call (results included) over the size of x;
3. **every backend** against PyTorch's native kernels, float32, on 1 and 2 threads (``torch.set_num_threads`` and
   ``numba.set_num_threads`` together): the compiled backend (``backend="numba"``) and the array-API backend on
   torch tensors (``backend="array_api"``), each with the fraction of the copy bandwidth (same thread count) that
   it reaches, counting the bytes each pass must move (forward: x read three times and y written, 16 bytes per
   float32 element; backward: dy and x read twice and dx written, 20 bytes);
4. the normalisation family (layer norm and RMS norm on (4096, 1024) and (8, 1024, 4096), group norm on
   (32, 64, 56, 56) NCHW and (32, 56, 56, 64) NHWC with 32 groups, instance norm on the same two shapes) against
   ``native_layer_norm``, ``_fused_rms_norm`` (its backward: autograd through ``F.rms_norm``, as PyTorch 2.13 has
   no CPU kernel for it), ``native_group_norm`` and ``F.instance_norm`` (its backward: autograd), when bnsym has
   them (``bnsym.layer_norm.forward`` ...); a missing one is reported and skipped;
5. **the variants** (Gemma's RMS norm, adaptive layer norm, batch renormalisation: ``VARIANTS``, one row of data
   each) on (4096, 4096) float32, compiled (``backend="numba"``), against PyTorch eager's composition of ops for the
   same variant (its forward, and autograd's backward through it with a random dy), as people write them: PyTorch
   has no fused CPU kernel for any of them; on 1 and 2 threads;
6. **first-call latency** in a fresh process with an empty Numba disk cache: every layer's forward and backward
   with ``backend="auto"`` (NumPy kernels at once, the compiled ones prepared in a background process; and when
   that finished, the same calls compiled), with ``backend="numba"`` (compiled on the spot), and with ``"numba"``
   from the disk cache; and the time to regenerate every derivation (``python -m bnsym.tools.cli derive --check``).

Within each table the implementations and thread counts take turns within every repeat (the order rotates from
one repeat to the next) and every figure is a median over the repeats. NHWC tensors are handed to PyTorch as
channels-last views of the same memory. Benchmarks are never timed tests.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# PyTorch and Numba each keep a pool of OpenMP threads, and by default a thread that finishes spins for a while
# waiting for more work. With two pools taking turns on a machine of few cores, one pool's spinning threads take
# the cores the other's threads need (a 0.2 ms call measured 40 ms). Sleeping at once is fair to both; it is set
# before either library loads OpenMP, and printed with the machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

try:
    import torch
except ImportError:  # the comparison with PyTorch's native kernels is what this benchmark is for
    sys.exit("benchmarks/run.py compares bnsym with PyTorch's native kernels and needs PyTorch: "
             "pip install torch==2.13.0 (or pip install -e '.[test]', which installs it and the optional backends)")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
from tracing import peak_extra  # noqa: E402

import bnsym  # noqa: E402

SHAPES = [  # shape, channel axis, label
    ((256, 1024), 1, "(256, 1024)"),
    ((4096, 1024), 1, "(4096, 1024)"),
    ((32, 64, 56, 56), 1, "(32, 64, 56, 56) NCHW"),
    ((32, 56, 56, 64), -1, "(32, 56, 56, 64) NHWC"),
]
EPS = 1e-5
COPY_BYTES = 256 * 2**20
#: Bytes each pass of a batch-norm call must read and write, per element of x, in units of the element size.
FORWARD_TRAFFIC = 4  # x read by the mean, by the variance and by the output pass; y written
BACKWARD_TRAFFIC = 5  # dy and x read by the sums and by the output pass; dx written

try:
    import numba
except ImportError:
    numba = None


def _has_backends() -> bool:
    return "backend" in inspect.signature(bnsym.batch_norm_forward).parameters


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if numba is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"Python {platform.python_version()}", f"NumPy {np.__version__}", f"PyTorch {torch.__version__}"]
    if numba is not None:
        versions.append(f"Numba {numba.__version__}")
    try:
        import array_api_compat

        versions.append(f"array-api-compat {array_api_compat.__version__}")
    except ImportError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f"; load average {os.getloadavg()[0]:.2f} at the start"
    return (f"{model}, {os.cpu_count()} cores; {', '.join(versions)}; {datetime.date.today().isoformat()}{load}; "
            f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")


def _medians(functions: dict, repeats: int) -> dict:
    """Median seconds per call; the implementations take turns within each repeat, in a rotating order."""
    names = list(functions)
    times = {name: [] for name in names}
    for name in names:
        functions[name]()  # warm-up: first-touch page faults, lazy imports, compilation
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _threaded(threads: int, function):
    """``function`` run on ``threads`` threads (set before every call, so that thread counts can take turns)."""
    def run():
        _set_threads(threads)
        return function()
    return run


# ----- 1. copy bandwidth -----

def copy_bandwidth(repeats: int) -> dict:
    """GB/s (bytes read + written) of a 256 MB copy: {threads: bandwidth} for PyTorch's copy, and NumPy's."""
    source = np.ones(COPY_BYTES // 4, np.float32)
    target = np.empty_like(source)
    tsource, ttarget = torch.from_numpy(source), torch.from_numpy(target)
    functions = {"numpy.copyto": _threaded(1, lambda: np.copyto(target, source))}
    for threads in (1, 2):
        functions[f"torch copy_ {threads}"] = _threaded(threads, lambda: ttarget.copy_(tsource))
    seconds = _medians(functions, repeats)
    bandwidth = {name: 2 * source.nbytes / s / 1e9 for name, s in seconds.items()}
    print("Copy bandwidth, 256 MB, GB/s of bytes read + written: " + "; ".join(
        f"{name}: {value:.1f}" for name, value in bandwidth.items()))
    return {threads: max(bandwidth[f"torch copy_ {threads}"], bandwidth["numpy.copyto"]) for threads in (1, 2)}


# ----- 2. the NumPy backend against torch and NumPy baselines -----

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
        self.numpy = {"backend": "numpy"} if _has_backends() else {}
        _, self.mean, self.invstd = bnsym.batch_norm_forward(self.x, self.gamma, self.beta, EPS, axis, **self.numpy)
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
        # The array-API backend takes torch tensors in bnsym's own layout (NHWC with axis=-1).
        self.ax, self.ady = torch.from_numpy(self.x), torch.from_numpy(self.dy)

    def torch_forward(self):
        return torch.ops.aten.native_batch_norm(self.tx, self.tgamma, self.tbeta, None, None, True, 0.1, EPS)

    def torch_backward(self):
        return torch.ops.aten.native_batch_norm_backward(self.tdy, self.tx, self.tgamma, None, None, self.tmean,
                                                         self.tinvstd, True, EPS, [True, True, True])

    def bnsym_forward(self, backend):
        if backend == "array_api":
            return lambda: bnsym.batch_norm_forward(self.ax, self.tgamma, self.tbeta, EPS, self.axis,
                                                    backend=backend)
        kwargs = {"backend": backend} if _has_backends() else {}
        return lambda: bnsym.batch_norm_forward(self.x, self.gamma, self.beta, EPS, self.axis, **kwargs)

    def bnsym_backward(self, backend):
        if backend == "array_api":
            mean, invstd = torch.from_numpy(self.mean), torch.from_numpy(self.invstd)
            return lambda: bnsym.batch_norm_backward(self.ady, self.ax, self.tgamma, mean, invstd, self.axis,
                                                     backend=backend)
        kwargs = {"backend": backend} if _has_backends() else {}
        return lambda: bnsym.batch_norm_backward(self.dy, self.x, self.gamma, self.mean, self.invstd, self.axis,
                                                 **kwargs)

    def forward(self):
        return {
            "bnsym": self.bnsym_forward("numpy"),
            "torch": self.torch_forward,
            "compact": lambda: baselines.compact_forward(self.x, self.per_channel[0], self.per_channel[3], EPS,
                                                         self.axes, self.count),
        }

    def backward(self):
        gamma, mean, invstd, _ = self.per_channel
        return {
            "bnsym": self.bnsym_backward("numpy"),
            "torch": self.torch_backward,
            "staged": lambda: baselines.staged_backward(self.dy, self.x, gamma, mean, invstd, self.axes, self.count),
            "compact": lambda: baselines.compact_backward(self.dy, self.x, gamma, mean, invstd, self.axes,
                                                          self.count),
        }

    def check(self, backward: dict):
        """Every implementation computes the same dx (else the timings would mean nothing)."""
        tolerance = 1e-3 if self.x.dtype == np.float32 else 1e-9
        reference = self.bnsym_backward("numpy")()[0]
        scale = np.max(np.abs(reference))
        for name, run in backward.items():
            dx = run()[0]
            if isinstance(dx, torch.Tensor):
                dx = np.moveaxis(dx.numpy(), 1, -1) if name.startswith("torch") and self.axis == -1 else dx.numpy()
            error = np.max(np.abs(np.asarray(dx) - reference)) / scale
            if error > tolerance:
                raise AssertionError(f"{name} backward differs from bnsym by {error:.1e} on {self.x.shape}")


def numpy_backend_table(repeats: int) -> None:
    print("\n## The NumPy backend, one thread (PyTorch on one thread)\n")
    print("| dtype | shape | fwd bnsym | fwd torch | **fwd bnsym/torch** | fwd compact | bwd bnsym | bwd torch | "
          "**bwd bnsym/torch** | bwd staged | bwd compact | **staged/bnsym** | compact/bnsym | mem fwd | "
          "**mem bwd** |")
    print("|" + "---|" * 15)
    _set_threads(1)
    for dtype in (np.float32, np.float64):
        for shape, axis, label in SHAPES:
            problem = _Problem(shape, axis, dtype)
            problem.check(problem.backward())
            forward = _medians(problem.forward(), repeats)
            backward = _medians(problem.backward(), repeats)
            size = problem.x.nbytes
            memory_forward = peak_extra(problem.forward()["bnsym"], size)
            memory_backward = peak_extra(problem.backward()["bnsym"], size)
            ms = {k: 1e3 * v for k, v in backward.items()}
            fms = {k: 1e3 * v for k, v in forward.items()}
            print(f"| {np.dtype(dtype).name} | {label} | {fms['bnsym']:.2f} | {fms['torch']:.2f} | "
                  f"**{forward['bnsym'] / forward['torch']:.2f}x** | {fms['compact']:.2f} | {ms['bnsym']:.2f} | "
                  f"{ms['torch']:.2f} | **{backward['bnsym'] / backward['torch']:.2f}x** | {ms['staged']:.2f} | "
                  f"{ms['compact']:.2f} | **{backward['staged'] / backward['bnsym']:.1f}x** | "
                  f"{backward['compact'] / backward['bnsym']:.1f}x | {memory_forward:.2f} | "
                  f"**{memory_backward:.2f}** |", flush=True)


# ----- 3. every backend against torch, 1 and 2 threads -----

def _available_backends() -> list[str]:
    if not _has_backends():
        print("(skipped: this bnsym's public functions take no backend= argument)")
        return []
    backends = []
    if numba is not None:
        backends.append("numba")
    else:
        print('(backend="numba" skipped: Numba is not installed; pip install -e ".[fast]")')
    try:
        import array_api_compat  # noqa: F401

        backends.append("array_api")
    except ImportError:
        print('(backend="array_api" skipped: array-api-compat is not installed; pip install -e ".[array-api]")')
    return backends


def backends_table(repeats: int, bandwidth: dict, thread_counts: tuple[int, ...]) -> None:
    print("\n## Every backend against PyTorch's native kernels, float32 (threads: torch and numba alike)\n")
    backends = _available_backends()
    if not backends:
        return
    names = {"numba": "numba", "array_api": "array-API on torch"}
    header = ["threads", "shape", "fwd torch"]
    for backend in backends:
        header += [f"fwd {names[backend]}", f"**fwd {backend}/torch**"]
    header += ["bwd torch"]
    for backend in backends:
        header += [f"bwd {names[backend]}", f"**bwd {backend}/torch**"]
    header += ["fwd torch % copy", "bwd torch % copy"]
    for backend in backends:
        if backend == "numba":
            header += ["**fwd numba % copy**", "**bwd numba % copy**"]
    if "numba" in backends:
        header += ["mem bwd numba"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for shape, axis, label in SHAPES:
        problem = _Problem(shape, axis, np.float32)
        backward_runs = {"torch": problem.torch_backward}
        backward_runs.update({backend: problem.bnsym_backward(backend) for backend in backends})
        problem.check(backward_runs)
        forward_functions, backward_functions = {}, {}
        for threads in thread_counts:
            forward_functions[("torch", threads)] = _threaded(threads, problem.torch_forward)
            backward_functions[("torch", threads)] = _threaded(threads, problem.torch_backward)
            for backend in backends:
                forward_functions[(backend, threads)] = _threaded(threads, problem.bnsym_forward(backend))
                backward_functions[(backend, threads)] = _threaded(threads, problem.bnsym_backward(backend))
        forward = _medians(forward_functions, repeats)
        backward = _medians(backward_functions, repeats)
        memory = None
        if "numba" in backends:
            _set_threads(1)
            memory = peak_extra(problem.bnsym_backward("numba"), problem.x.nbytes)
        for threads in thread_counts:
            def fraction(seconds, traffic, threads=threads, size=problem.x.nbytes):
                return 100 * traffic * size / seconds / 1e9 / bandwidth[threads]
            row = [str(threads), label, f"{1e3 * forward[('torch', threads)]:.2f}"]
            for backend in backends:
                seconds = forward[(backend, threads)]
                row += [f"{1e3 * seconds:.2f}", f"**{seconds / forward[('torch', threads)]:.2f}x**"]
            row.append(f"{1e3 * backward[('torch', threads)]:.2f}")
            for backend in backends:
                seconds = backward[(backend, threads)]
                row += [f"{1e3 * seconds:.2f}", f"**{seconds / backward[('torch', threads)]:.2f}x**"]
            row += [f"{fraction(forward[('torch', threads)], FORWARD_TRAFFIC):.0f}%",
                    f"{fraction(backward[('torch', threads)], BACKWARD_TRAFFIC):.0f}%"]
            if "numba" in backends:
                row += [f"**{fraction(forward[('numba', threads)], FORWARD_TRAFFIC):.0f}%**",
                        f"**{fraction(backward[('numba', threads)], BACKWARD_TRAFFIC):.0f}%**"]
                row.append(f"{memory:.2f}")
            print("| " + " | ".join(row) + " |", flush=True)


# ----- 4. the normalisation family -----

#: The family table's backend: the compiled one, named (under "auto" a call runs the NumPy kernels until the
#: compiled one is ready, which would make the first repeats time another backend).
FAMILY_BACKEND = "numba" if numba is not None else "numpy"


def _family_cases():
    """(label, bnsym module name, bnsym calls, torch calls, size of x in bytes) for each family layer and shape, the
    bnsym calls built lazily."""
    rng = np.random.default_rng(0)
    cases = []
    for shape in ((4096, 1024), (8, 1024, 4096)):
        features = shape[-1]
        x = rng.normal(3, 2, size=shape).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        gamma = rng.uniform(0.5, 2, size=features).astype(np.float32)
        beta = rng.normal(size=features).astype(np.float32)
        tx, tdy, tg, tb = (torch.from_numpy(a) for a in (x, dy, gamma, beta))
        _, tmean, trstd = torch.ops.aten.native_layer_norm(tx, [features], tg, tb, EPS)
        # PyTorch 2.13 has no CPU kernel for _fused_rms_norm_backward: its CPU backward is autograd through
        # F.rms_norm, timed alone (the graph built once and kept).
        rx, rg = tx.clone().requires_grad_(), tg.clone().requires_grad_()
        ry = torch.nn.functional.rms_norm(rx, [features], rg, EPS)

        def layer_norm(x=x, dy=dy, gamma=gamma, beta=beta):
            module = bnsym.layer_norm
            _, mean, invstd = module.forward(x, gamma, beta, EPS, -1, backend=FAMILY_BACKEND)
            return (lambda: module.forward(x, gamma, beta, EPS, -1, backend=FAMILY_BACKEND),
                    lambda: module.backward(dy, x, gamma, mean, invstd, -1, backend=FAMILY_BACKEND))

        def rms_norm(x=x, dy=dy, gamma=gamma):
            module = bnsym.rms_norm
            _, invrms = module.forward(x, gamma, EPS, -1, backend=FAMILY_BACKEND)
            return (lambda: module.forward(x, gamma, EPS, -1, backend=FAMILY_BACKEND),
                    lambda: module.backward(dy, x, gamma, invrms, -1, backend=FAMILY_BACKEND))

        cases.append((f"layer norm {shape}", "layer_norm", layer_norm,
                      (lambda tx=tx, tg=tg, tb=tb, f=features: torch.ops.aten.native_layer_norm(tx, [f], tg, tb, EPS),
                       lambda tdy=tdy, tx=tx, tg=tg, tb=tb, m=tmean, r=trstd, f=features:
                       torch.ops.aten.native_layer_norm_backward(tdy, tx, [f], m, r, tg, tb, [True, True, True])),
                      x.nbytes))
        cases.append((f"RMS norm {shape}", "rms_norm", rms_norm,
                      (lambda tx=tx, tg=tg, f=features: torch.ops.aten._fused_rms_norm(tx, [f], tg, EPS),
                       lambda tdy=tdy, ry=ry, rx=rx, rg=rg: torch.autograd.grad(ry, (rx, rg), tdy, retain_graph=True)),
                      x.nbytes))
    groups = 32
    for shape, axis, layout in (((32, 64, 56, 56), 1, "NCHW"), ((32, 56, 56, 64), -1, "NHWC")):
        x = rng.normal(3, 2, size=shape).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        channels = shape[axis]
        gamma = rng.uniform(0.5, 2, size=channels).astype(np.float32)
        beta = rng.normal(size=channels).astype(np.float32)
        # PyTorch gets NHWC as a channels-last view of the same memory (its kernels have a channels-last path)
        as_nchw = (lambda a: torch.from_numpy(a)) if axis == 1 else (lambda a: torch.from_numpy(a).permute(0, 3, 1, 2))
        tx, tdy = as_nchw(x), as_nchw(dy)
        tg, tb = torch.from_numpy(gamma), torch.from_numpy(beta)
        n, c, hw = tx.shape[0], tx.shape[1], tx.shape[2] * tx.shape[3]
        _, tmean, trstd = torch.ops.aten.native_group_norm(tx, tg, tb, n, c, hw, groups, EPS)
        # PyTorch's instance norm is batch norm on an (1, N*C, H, W) view, with no kernel of its own: its forward is
        # F.instance_norm, its backward autograd through it (the graph built once and kept).
        ix, ig, ib = tx.clone().requires_grad_(), tg.clone().requires_grad_(), tb.clone().requires_grad_()
        iy = torch.nn.functional.instance_norm(ix, weight=ig, bias=ib, eps=EPS)

        def group_norm(x=x, dy=dy, gamma=gamma, beta=beta, axis=axis):
            module = bnsym.group_norm
            _, mean, invstd = module.forward(x, gamma, beta, groups, EPS, axis=axis, backend=FAMILY_BACKEND)
            return (lambda: module.forward(x, gamma, beta, groups, EPS, axis=axis, backend=FAMILY_BACKEND),
                    lambda: module.backward(dy, x, gamma, mean, invstd, groups, axis=axis,
                                                   backend=FAMILY_BACKEND))

        def instance_norm(x=x, dy=dy, gamma=gamma, beta=beta, axis=axis):
            module = bnsym.instance_norm
            _, mean, invstd = module.forward(x, gamma, beta, EPS, axis=axis, backend=FAMILY_BACKEND)
            return (lambda: module.forward(x, gamma, beta, EPS, axis=axis, backend=FAMILY_BACKEND),
                    lambda: module.backward(dy, x, gamma, mean, invstd, axis=axis, backend=FAMILY_BACKEND))

        cases.append((f"group norm {shape} {layout}, {groups} groups", "group_norm", group_norm,
                      (lambda tx=tx, tg=tg, tb=tb, n=n, c=c, hw=hw:
                       torch.ops.aten.native_group_norm(tx, tg, tb, n, c, hw, groups, EPS),
                       lambda tdy=tdy, tx=tx, m=tmean, r=trstd, tg=tg, n=n, c=c, hw=hw:
                       torch.ops.aten.native_group_norm_backward(tdy, tx, m, r, tg, n, c, hw, groups,
                                                                 [True, True, True])),
                      x.nbytes))
        cases.append((f"instance norm {shape} {layout}", "instance_norm", instance_norm,
                      (lambda tx=tx, tg=tg, tb=tb: torch.nn.functional.instance_norm(tx, weight=tg, bias=tb, eps=EPS),
                       lambda tdy=tdy, iy=iy, ix=ix, ig=ig, ib=ib:
                       torch.autograd.grad(iy, (ix, ig, ib), tdy, retain_graph=True)),
                      x.nbytes))
    return cases


def family_table(repeats: int, bandwidth: dict, thread_counts: tuple[int, ...]) -> None:
    """Each family layer against PyTorch's kernel, with the fraction of the copy bandwidth reached (a forward must
    read x and write y, a backward read dy and x and write dx: 8 and 12 bytes per float32 element, the traffic of
    one pass over memory) and tracemalloc's peak extra memory of bnsym's backward over the size of x."""
    print("\n## The normalisation family against PyTorch's native kernels, float32 "
          f"(backend={FAMILY_BACKEND!r})\n")
    print("| threads | layer, shape | fwd torch | fwd bnsym | **fwd bnsym/torch** | bwd torch | bwd bnsym | "
          "**bwd bnsym/torch** | fwd torch % copy | bwd torch % copy | **fwd bnsym % copy** | **bwd bnsym % copy** "
          "| mem bwd bnsym |")
    print("|" + "---|" * 13)
    for label, module, make, (torch_forward, torch_backward), size in _family_cases():
        if not hasattr(bnsym, module):
            print(f"| | {label} | skipped: bnsym.{module} does not exist in this version |||||||||||")
            continue
        try:
            bnsym_forward, bnsym_backward = make()
            bnsym_forward()
            bnsym_backward()
        except (AttributeError, TypeError) as error:
            print(f"| | {label} | skipped: bnsym.{module}'s functions take other arguments ({error}) |||||||||||")
            continue
        forward_functions, backward_functions = {}, {}
        for threads in thread_counts:
            forward_functions[("torch", threads)] = _threaded(threads, torch_forward)
            forward_functions[("bnsym", threads)] = _threaded(threads, bnsym_forward)
            backward_functions[("torch", threads)] = _threaded(threads, torch_backward)
            backward_functions[("bnsym", threads)] = _threaded(threads, bnsym_backward)
        forward = _medians(forward_functions, repeats)
        backward = _medians(backward_functions, repeats)
        memory = peak_extra(bnsym_backward, size)
        for threads in thread_counts:
            ft, fb = forward[("torch", threads)], forward[("bnsym", threads)]
            bt, bb = backward[("torch", threads)], backward[("bnsym", threads)]

            def copy(seconds, arrays, threads=threads, size=size):
                return 100 * arrays * size / seconds / 1e9 / bandwidth[threads]

            print(f"| {threads} | {label} | {1e3 * ft:.2f} | {1e3 * fb:.2f} | **{fb / ft:.2f}x** | {1e3 * bt:.2f} | "
                  f"{1e3 * bb:.2f} | **{bb / bt:.2f}x** | {copy(ft, 2):.0f}% | {copy(bt, 3):.0f}% | "
                  f"**{copy(fb, 2):.0f}%** | **{copy(bb, 3):.0f}%** | {memory:.2f} |", flush=True)


# ----- 5. the variants -----

def _gemma_rms_norm(x, gamma, eps):
    """Hugging Face's GemmaRMSNorm in float32: x * rsqrt(mean(x^2) + eps) * (1 + weight), the last axis."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + gamma)


def _fused_add_rms_norm(x, residual, gamma, eps):
    """The residual add, then Llama's RMS norm in float32 (Hugging Face's LlamaRMSNorm): (y, h = x + residual)."""
    h = x + residual
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * gamma, h


def _adaptive_layer_norm(x, scale, shift, eps):
    """DiT's modulate(norm(x), shift, scale): F.layer_norm without affine parameters (PyTorch's layer-norm kernel),
    then x * (1 + scale) + shift with scale and shift (N, D) broadcast over the tokens of (N, ..., D)."""
    view = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    normalised = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=eps)
    return normalised * (1 + scale.view(view)) + shift.view(view)


def _batch_renorm(x, gamma, beta, running_mean, running_std, eps, r_max=3.0, d_max=5.0):
    """Batch renormalisation (Ioffe 2017, Algorithm 1) of (N, C) as people write it in eager PyTorch: the batch's
    biased var_mean over N, then r and d from the running mean and stddev, held constant by ``.detach()``. r_max and
    d_max are bnsym's defaults (the paper's final values)."""
    var, mean = torch.var_mean(x, dim=0, correction=0, keepdim=True)
    sigma = torch.sqrt(var + eps)
    r = (sigma / running_std).clamp(1 / r_max, r_max).detach()
    d = ((mean - running_mean) / running_std).clamp(-d_max, d_max).detach()
    return gamma * (r * (x - mean) / sigma + d) + beta


def _renorm_running_statistics(rng, shape):
    """Running statistics per channel (the last axis) around the benchmark's batches (mean 3, stddev 2): r and d
    are clipped in some channels and not in others, as during training."""
    channels = shape[-1]
    return {"running_mean": (3 + 2 * rng.normal(0, 3, channels)).astype(np.float32),
            "running_std": (2 * 10.0 ** rng.uniform(-0.8, 0.8, channels)).astype(np.float32)}


@dataclass(frozen=True)
class Variant:
    """One row of the variants' table: the bnsym layer ``layer`` (its public module ``bnsym.<layer>``; its eps,
    field inputs and outputs, parameters and saved statistics from its specification) on x of ``shape``, against
    ``composition``, PyTorch's eager ops for the same variant, ``composition(*arrays, eps) -> y`` (or a tuple of y
    and the field outputs), where ``arrays`` are those bnsym's forward takes, in its order (x, its field inputs, its
    parameters, ...); ``per_sample``: the parameters hold one row per sample, (N, D), else (D,); ``extra(rng,
    shape)``: any other arrays bnsym's functions take, by name (running statistics, say)."""

    label: str
    layer: str
    shape: tuple[int, ...]
    composition: Callable
    per_sample: bool = False
    extra: Callable | None = None


#: The variants' rows: a variant added to bnsym is one more row here (a row whose layer this bnsym does not have is
#: reported as skipped).
VARIANTS = (
    Variant("Gemma RMS norm (4096, 4096)", "gemma_rms_norm", (4096, 4096), _gemma_rms_norm),
    Variant("fused residual add + RMS norm (4096, 4096)", "fused_add_rms_norm", (4096, 4096), _fused_add_rms_norm),
    Variant("adaptive layer norm (4096, 4096)", "adaptive_layer_norm", (4096, 4096), _adaptive_layer_norm,
            per_sample=True),
    Variant("adaptive layer norm (16, 256, 4096) (DiT: N, T, D)", "adaptive_layer_norm", (16, 256, 4096),
            _adaptive_layer_norm, per_sample=True),
    Variant("batch renormalisation (4096, 4096) as (N, C)", "batch_renorm", (4096, 4096), _batch_renorm,
            extra=_renorm_running_statistics),
)


def _compiled_loops(layer) -> str:
    """Which kernels backend="numba" runs for this layer's forward and backward: its compiled loops, or the NumPy
    kernels the generated compiled module hands over to (a layout no loop strategy covers)."""
    import importlib

    numpy_kernels = importlib.import_module(layer.kernels_module)
    compiled = importlib.import_module(f"{layer.kernels_module}_numba")
    handed_over = [verb for verb in ("forward", "backward")
                   if getattr(compiled, f"{layer.name}_{verb}") is getattr(numpy_kernels, f"{layer.name}_{verb}")]
    return "compiled loops" if not handed_over else "NumPy kernels (" + ", ".join(handed_over) + ")"


def _positional(function) -> list[str]:
    """The names of ``function``'s arguments that have no default (the arrays of a bnsym public function)."""
    return [name for name, p in inspect.signature(function).parameters.items()
            if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]


def _variant_calls(row: Variant):
    """(bnsym forward, bnsym backward, torch forward, torch backward, check, size of x in bytes, which kernels bnsym
    runs): the four timed calls on the same float32 data, and ``check``, which raises when bnsym and the
    composition disagree (else the times would mean nothing).

    Everything is read from the layer's specification and bnsym's signatures, by name: the forward takes x, the
    layer's other field inputs (shaped like x; a residual) and its parameters; it returns y, the other field outputs
    and the saved statistics; the backward takes an upstream gradient ``d<output>`` for y and each field output
    (random, never ones) and whichever of those arrays it names. The composition takes the forward's arrays in the
    same order and returns y, or y and the field outputs; autograd differentiates it with the same upstream
    gradients."""
    from bnsym.spec import spec

    layer = spec(row.layer)
    module = getattr(bnsym, row.layer)
    field_inputs = tuple(getattr(layer, "field_inputs", ()))
    outputs = ("y", *getattr(layer, "field_outputs", ()))
    rng = np.random.default_rng(0)
    arrays = {name: rng.normal(3, 2, size=row.shape).astype(np.float32) for name in ("x", *field_inputs)}
    parameter_shape = (row.shape[0], row.shape[-1]) if row.per_sample else (row.shape[-1],)
    arrays.update({name: (0.5 * rng.normal(size=parameter_shape)).astype(np.float32) for name in layer.parameters})
    arrays.update({"d" + name: rng.normal(size=row.shape).astype(np.float32) for name in outputs})
    arrays.update(row.extra(rng, row.shape) if row.extra else {})

    def bound(function):
        missing = [name for name in _positional(function) if name not in arrays]
        if missing:
            raise ValueError(f"{row.label}: bnsym.{row.layer}.{function.__name__} takes {missing}, which the "
                             f"benchmark does not make (Variant.extra can)")
        return [arrays[name] for name in _positional(function)]

    inputs = ("x", *field_inputs, *layer.parameters)  # what the gradients are of
    forward_arguments = bound(module.forward)
    options = {"eps": layer.eps, "backend": FAMILY_BACKEND}
    arrays.update(zip((*outputs, *layer.saved), module.forward(*forward_arguments, **options)))
    backward_arguments = bound(module.backward)

    tensors = [torch.from_numpy(np.asarray(a)) for a in forward_arguments]
    cotangents = [torch.from_numpy(arrays["d" + name]) for name in outputs]
    # autograd's backward alone: the graph is built once and kept (retain_graph), as for RMS norm in table 4
    differentiated = [name in inputs for name in _positional(module.forward)]
    arguments = [t.clone().requires_grad_() if d else t for t, d in zip(tensors, differentiated)]
    leaves = [t for t, d in zip(arguments, differentiated) if d]
    graph = row.composition(*arguments, layer.eps)
    graph = list(graph) if isinstance(graph, tuple) else [graph]

    def torch_backward():
        return torch.autograd.grad(graph, leaves, cotangents, retain_graph=True)

    def check():
        y = module.forward(*forward_arguments, **options)[0]
        gradients = module.backward(*backward_arguments, backend=FAMILY_BACKEND)
        expected = [graph[0].detach().numpy()] + [g.numpy() for g in torch_backward()]
        names = ("y", *("d" + name for name in _positional(module.forward) if name in inputs))
        for name, got, want in zip(names, (y, *gradients), expected, strict=True):
            error = np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want))
            if np.shape(got) != want.shape or not error <= 1e-3:
                raise AssertionError(f"{row.label}: bnsym's {name} differs from PyTorch's composition by {error:.1e}")

    return (lambda: module.forward(*forward_arguments, **options),
            lambda: module.backward(*backward_arguments, backend=FAMILY_BACKEND),
            lambda: row.composition(*tensors, layer.eps),
            torch_backward, check, arrays["x"].nbytes, _compiled_loops(layer))


def variants_table(repeats: int, bandwidth: dict, thread_counts: tuple[int, ...]) -> None:
    """Each variant against PyTorch eager's composition of ops, with the fraction of the copy bandwidth reached
    (one pass over memory: a forward reads x and writes y, a backward reads dy and x and writes dx: 8 and 12 bytes
    per float32 element, the parameters not counted) and tracemalloc's peak extra memory of bnsym's backward."""
    print("\n## The variants against PyTorch eager's composition of ops, float32 "
          f"(backend={FAMILY_BACKEND!r}; PyTorch has no fused CPU kernel for them)\n")
    print("| threads | variant, shape | bnsym runs | fwd torch | fwd bnsym | **fwd bnsym/torch** | bwd torch | "
          "bwd bnsym | **bwd bnsym/torch** | fwd torch % copy | bwd torch % copy | **fwd bnsym % copy** | "
          "**bwd bnsym % copy** | mem bwd bnsym |")
    print("|" + "---|" * 14)
    for row in VARIANTS:
        if not hasattr(bnsym, row.layer):
            print(f"| | {row.label} | skipped: bnsym.{row.layer} does not exist in this version ||||||||||||")
            continue
        bnsym_forward, bnsym_backward, torch_forward, torch_backward, check, size, runs = _variant_calls(row)
        check()
        forward_functions, backward_functions = {}, {}
        for threads in thread_counts:
            forward_functions[("torch", threads)] = _threaded(threads, torch_forward)
            forward_functions[("bnsym", threads)] = _threaded(threads, bnsym_forward)
            backward_functions[("torch", threads)] = _threaded(threads, torch_backward)
            backward_functions[("bnsym", threads)] = _threaded(threads, bnsym_backward)
        forward = _medians(forward_functions, repeats)
        backward = _medians(backward_functions, repeats)
        _set_threads(1)
        memory = peak_extra(bnsym_backward, size)
        for threads in thread_counts:
            ft, fb = forward[("torch", threads)], forward[("bnsym", threads)]
            bt, bb = backward[("torch", threads)], backward[("bnsym", threads)]

            def copy(seconds, arrays, threads=threads, size=size):
                return 100 * arrays * size / seconds / 1e9 / bandwidth[threads]

            print(f"| {threads} | {row.label} | {runs} | {1e3 * ft:.2f} | {1e3 * fb:.2f} | **{fb / ft:.2f}x** | "
                  f"{1e3 * bt:.2f} | {1e3 * bb:.2f} | **{bb / bt:.2f}x** | {copy(ft, 2):.0f}% | {copy(bt, 3):.0f}% | "
                  f"**{copy(fb, 2):.0f}%** | **{copy(bb, 3):.0f}%** | {memory:.2f} |", flush=True)


# ----- 6. first-call latency and regeneration time -----

_FIRST_CALL = """
import json, sys, time
start = time.perf_counter()
import numpy as np, bnsym
from bnsym.runtime import background as _background
backend = sys.argv[1]
rng = np.random.default_rng(0)
images = rng.normal(size=(32, 64, 8, 8)).astype(np.float32)   # NCHW, the README's first snippet
rows = rng.normal(size=(256, 1024)).astype(np.float32)
channels, features = np.ones(64, np.float32), np.ones(1024, np.float32)
imported = time.perf_counter() - start
calls = {
    "batch norm": (bnsym.batch_norm, images, channels, {"axis": 1}),
    "layer norm": (bnsym.layer_norm, rows, features, {}),
    "RMS norm": (bnsym.rms_norm, rows, features, {}),
    "group norm": (bnsym.group_norm, images, channels, {"num_groups": 8}),
    "instance norm": (bnsym.instance_norm, images, channels, {}),
}
def run(module, x, gamma, options):
    affine = (gamma,) if module is bnsym.rms_norm else (gamma, gamma * 0)
    t0 = time.perf_counter()
    y, *saved = module.forward(x, *affine, **options, backend=backend)
    t1 = time.perf_counter()
    module.backward(x[::-1].copy(), x, gamma, *saved, **options, backend=backend)
    return t1 - t0, time.perf_counter() - t1
times = {}
for layer, call in calls.items():
    times[layer] = run(*call)
result = {"imported": imported, "first": times, "total": time.perf_counter() - start}
if backend == "auto":
    waited = time.perf_counter()
    result["background"] = _background.wait(1800) and time.perf_counter() - start
    result["then"] = {layer: run(*call) for layer, call in calls.items()}
print(json.dumps(result))
"""


def compile_times() -> None:
    """First calls of every layer's forward and backward in fresh processes with an empty Numba disk cache:
    ``auto`` (NumPy kernels at once, the compiled ones prepared in the background), ``numba`` (compiled on the
    spot), and ``numba`` again from the disk cache that run left."""
    if numba is None or not _has_backends():
        print("\nCompiled backend: first-call time not measured (Numba is not installed, or no backend= argument)")
        return
    runs = {}
    with tempfile.TemporaryDirectory() as auto_cache, tempfile.TemporaryDirectory() as numba_cache:
        for label, backend, cache in (("auto, empty cache", "auto", auto_cache),
                                      ("numba, empty cache", "numba", numba_cache),
                                      ("numba, from the disk cache", "numba", numba_cache)):
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, BNSYM_BACKGROUND_COMPILE="1")
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", _FIRST_CALL, backend], cwd=ROOT, env=env,
                                 capture_output=True, text=True, check=True, timeout=1800)
            runs[label] = json.loads(run.stdout.splitlines()[-1]) | {"wall": time.perf_counter() - started}
    print("\nFirst call in a fresh process (float32; batch, group and instance norm on (32, 64, 8, 8) NCHW, layer and "
          "RMS norm on (256, 1024)); seconds, forward / backward:\n")
    print("| layer | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for layer in runs["auto, empty cache"]["first"]:
        print(f"| {layer} | " + " | ".join("{:.2f} / {:.2f}".format(*r["first"][layer]) for r in runs.values()) + " |")
    print("| all ten calls, import included | " + " | ".join(f"{r['total']:.2f}" for r in runs.values()) + " |")
    auto = runs["auto, empty cache"]
    then = ", ".join("{} {:.3f} / {:.3f}".format(layer, *t) for layer, t in auto["then"].items())
    print(f"\nauto: every background compilation finished {auto['background']:.1f} s after the process started; "
          f"the same calls then ran compiled: {then}")


def _regeneration_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bnsym.tools.cli", "derive", "--check"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 15")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (overrides --quick)")
    parser.add_argument("--threads", default="1,2", help="thread counts for tables 3, 4 and 5 (default 1,2)")
    parser.add_argument("--only", choices=["copy", "numpy", "backends", "family", "variants", "compile"],
                        action="append",
                        help="run only these tables (repeatable; the copy bandwidth is always measured)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 15)
    thread_counts = tuple(int(t) for t in args.threads.split(","))
    chosen = set(args.only or ["copy", "numpy", "backends", "family", "variants", "compile"])
    print(f"Machine: {_machine()}")
    print(f"Medians of {repeats} interleaved repeats; times in ms; memory: peak extra / input size.\n")
    bandwidth = copy_bandwidth(repeats)
    if "numpy" in chosen:
        numpy_backend_table(repeats)
    if "backends" in chosen:
        backends_table(repeats, bandwidth, thread_counts)
    if "family" in chosen:
        family_table(repeats, bandwidth, thread_counts)
    if "variants" in chosen:
        variants_table(repeats, bandwidth, thread_counts)
    if "compile" in chosen:
        compile_times()
        print(f"\nRegenerating every derivation (`python -m bnsym.tools.cli derive --check`, fresh process): "
              f"{_regeneration_seconds():.1f} s")


if __name__ == "__main__":
    main()
