"""Peak extra memory of bnsym's forward and backward kernels, for every backend and array library.

Run from the repository root::

    python benchmarks/memory.py                      # every library installed (about a minute)
    python benchmarks/memory.py --library numpy      # one library (numpy, torch or jax; repeatable)

The figure is the most memory that one call allocates beyond what was allocated before it, results included, over
the size of x (so 1.0 is the output alone). Each case is called once first, so that nothing is measured that only a
first call allocates. How it is measured depends on the arrays:

* NumPy arrays (``backend="numpy"``, ``"numba"`` when installed, ``"array_api"``): ``tracemalloc``, which NumPy
  reports its buffers to;
* PyTorch CPU tensors (``backend="array_api"``): PyTorch's allocations are not seen by tracemalloc, so this is the
  rise of the process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs`` before each call),
  in a child process started with ``MALLOC_MMAP_THRESHOLD_=65536``: every large buffer is then a mapping of its
  own, returned to the system when it is freed (Linux only; elsewhere the library is skipped);
* JAX arrays (``backend="array_api"`` under ``jax.jit``): XLA's plan for the compiled call
  (``memory_analysis()``: temporaries plus outputs), float64 with ``jax_enable_x64``.

Benchmarks are never timed or memory-asserting tests.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracing import peak_extra  # noqa: E402

import bnsym  # noqa: E402

EPS = 1e-5
DTYPES = (np.float32, np.float64)


def _cases():
    """(layer, shape of x, options): the layouts each layer's kernels treat differently, at benchmark sizes."""
    return [
        ("batch norm", (32, 64, 56, 56), dict(axis=1)),
        ("batch norm", (4096, 1024), dict(axis=1)),
        ("batch norm", (32, 56, 56, 64), dict(axis=-1)),
        ("layer norm", (4096, 1024), dict(axis=-1)),
        ("layer norm", (32, 64, 56, 56), dict(axis=(1, 2, 3))),
        ("RMS norm", (4096, 1024), dict(axis=-1)),
        ("group norm", (32, 64, 56, 56), dict(groups=32, axis=1)),
    ]


def _arrays(label, shape, options, dtype, convert):
    """x, dy, gamma, beta of one case, made by ``convert`` from NumPy arrays."""
    rng = np.random.default_rng(0)
    axis = options["axis"]
    if label in ("batch norm", "group norm"):
        parameter_shape = (shape[axis],)
    else:
        axes = (axis,) if isinstance(axis, int) else axis
        parameter_shape = tuple(shape[a] for a in axes)
    x, dy = (convert(rng.normal(3, 2, size=shape).astype(dtype)), convert(rng.normal(size=shape).astype(dtype)))
    gamma = convert(rng.uniform(0.5, 2, size=parameter_shape).astype(dtype))
    beta = convert(rng.normal(size=parameter_shape).astype(dtype))
    return x, dy, gamma, beta


def _functions(label, options, backend):
    """forward(x, gamma, beta) -> outputs, backward(dy, x, gamma, outputs of forward) -> gradients."""
    axis = options["axis"]
    if label == "batch norm":
        return (lambda x, g, b: bnsym.batch_norm_forward(x, g, b, EPS, axis, backend=backend),
                lambda dy, x, g, y, mean, invstd: bnsym.batch_norm_backward(dy, x, g, mean, invstd, axis,
                                                                             backend=backend))
    if label == "layer norm":
        module = bnsym.layer_norm
        return (lambda x, g, b: module.forward(x, g, b, EPS, axis, backend=backend),
                lambda dy, x, g, y, mean, invstd: module.backward(dy, x, g, mean, invstd, axis, backend=backend))
    if label == "RMS norm":
        module = bnsym.rms_norm
        return (lambda x, g, b: module.forward(x, g, EPS, axis, backend=backend),
                lambda dy, x, g, y, invrms: module.backward(dy, x, g, invrms, axis, backend=backend))
    groups = options["groups"]
    module = bnsym.group_norm
    return (lambda x, g, b: module.forward(x, g, b, groups, EPS, axis=axis, backend=backend),
            lambda dy, x, g, y, mean, invstd: module.backward(dy, x, g, mean, invstd, groups, axis=axis,
                                                              backend=backend))


def _peak_tracemalloc(function, size):
    function()  # warm-up: compilation and lazy imports are not the call's memory
    return peak_extra(function, size)


def _status():
    text = Path("/proc/self/status").read_text()
    return (int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) * 1024,
            int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024)


def _peak_resident(function, size):
    function()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident size starts again from the current one
    _, before = _status()
    result = function()
    peak, _ = _status()
    del result
    return (peak - before) / size


def _row(library, backend, dtype, label, shape, options, measure, convert):
    forward, backward = _functions(label, options, backend)
    x, dy, gamma, beta = _arrays(label, shape, options, dtype, convert)
    outputs = forward(x, gamma, beta)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    peak_forward = measure(lambda: forward(x, gamma, beta), size)
    peak_backward = measure(lambda: backward(dy, x, gamma, *outputs), size)
    print(f"| {library} | {backend} | {np.dtype(dtype).name} | {_where(label, shape, options)} | {peak_forward:.2f} | "
          f"{peak_backward:.2f} |", flush=True)


def _where(label, shape, options) -> str:
    groups = f", {options['groups']} groups" if "groups" in options else ""
    return f"{label} {shape}{groups}, axis={options['axis']}"


def numpy_rows():
    backends = ["numpy", "array_api"]
    try:
        import numba  # noqa: F401

        backends.insert(1, "numba")
    except ImportError:
        pass
    for dtype in DTYPES:
        for label, shape, options in _cases():
            for backend in backends:
                _row("numpy", backend, dtype, label, shape, options, _peak_tracemalloc, lambda a: a)


def torch_rows():
    import torch

    torch.set_num_threads(1)
    for dtype in DTYPES:
        for label, shape, options in _cases():
            _row("torch", "array_api", dtype, label, shape, options, _peak_resident, torch.from_numpy)


def jax_rows():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    for dtype in DTYPES:
        for label, shape, options in _cases():
            forward, backward = _functions(label, options, "array_api")
            x, dy, gamma, beta = _arrays(label, shape, options, dtype, jnp.asarray)
            outputs = jax.jit(forward)(x, gamma, beta)
            peak_forward = _planned(forward, x.nbytes, x, gamma, beta)
            peak_backward = _planned(backward, x.nbytes, dy, x, gamma, *outputs)
            print(f"| jax (jit) | array_api | {np.dtype(dtype).name} | {_where(label, shape, options)} | "
                  f"{peak_forward:.2f} | {peak_backward:.2f} |", flush=True)


def _planned(function, size, *arguments):
    """XLA's temporaries plus outputs for ``jax.jit(function)(*arguments)``, over ``size`` bytes."""
    import jax

    analysis = jax.jit(function).lower(*arguments).compile().memory_analysis()
    return (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", action="append", choices=["numpy", "torch", "jax"],
                        help="measure only these libraries (repeatable; default: every one installed)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    libraries = arguments.library or ["numpy", "torch", "jax"]
    if arguments.child:  # the torch measurement, in a process with the allocator settings it needs
        torch_rows()
        return
    print("Peak extra memory of one call (results included) / size of x.\n")
    print("| arrays | backend | dtype | case | forward | backward |")
    print("|---|---|---|---|---|---|", flush=True)
    for library in libraries:
        if library == "numpy":
            numpy_rows()
        elif library == "torch":
            if not Path("/proc/self/clear_refs").exists():
                print("| torch | skipped: the peak resident size is read from /proc (Linux) |||||")
                continue
            environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            subprocess.run([sys.executable, __file__, "--child"], env=environment, check=True)
        else:
            try:
                import jax  # noqa: F401
            except ImportError:
                print("| jax (jit) | skipped: jax is not installed |||||")
                continue
            jax_rows()


if __name__ == "__main__":
    main()
