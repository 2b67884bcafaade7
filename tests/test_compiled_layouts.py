"""Which layouts the compiled family kernels run their own loops on, and that those loops agree with the NumPy
kernels there: group-local loops for groups that are contiguous runs (channel-first, trailing normalised axes),
sample-wise loops for channel-last group and instance norm (bnsym.runtime.fused.InterleavedLayout), and batch norm's
(rows, channels, inner) loops for NCHW, NHWC and (N, C) (bnsym.runtime.fused.FusedLayout), eval mode included.

A fallback to the NumPy kernel is correct but slow (channel-last group norm took 30 times PyTorch's time before it
had loops of its own), so these tests make the fallback raise to prove that the loops ran.
"""

import importlib

import numpy as np
import pytest

import bnsym
from bnsym.runtime.fused import InterleavedLayout
from bnsym.runtime.reduce import Reducer

numba = pytest.importorskip("numba", reason="the compiled backend needs numba (the `fast` extra)")


class _NoFallback:
    """Stands in for a generated module's NumPy kernels: any call is a test failure."""

    def __init__(self, layer):
        self.layer = layer

    def __getattr__(self, name):
        def refuse(*args):
            shape = next(a.shape for a in args if isinstance(a, np.ndarray))
            raise AssertionError(f"{name} ran the NumPy kernel for shape {shape}: the compiled loops did not "
                                 f"cover this layout of {self.layer}")
        return refuse


def _arguments(layer, shape, options, dtype, seed=0):
    rng = np.random.default_rng(seed)
    axis = options["axis"]
    channels = shape[axis]
    field = lambda: (3 + 2 * rng.normal(size=shape)).astype(dtype)  # noqa: E731
    vector = lambda: rng.normal(size=channels).astype(dtype)  # noqa: E731
    return dict(x=field(), dy=field(), ggx=field(), tx=field(), gamma=vector(), beta=vector(), ggg=vector(),
                ggb=vector(), running_mean=vector(), running_var=rng.uniform(0.5, 2.0, size=channels).astype(dtype))


def _all_kernels(module, a, options, kernels):
    """{kernel: its results} for the kernels named, each on the same arguments."""
    _, mean, invstd = module.forward(a["x"], a["gamma"], a["beta"], backend="numpy", **options)
    calls = {
        "forward": lambda backend: module.forward(a["x"], a["gamma"], a["beta"], backend=backend, **options),
        "backward": lambda backend: module.backward(a["dy"], a["x"], a["gamma"], mean, invstd, backend=backend,
                                                    **options),
        "double_backward": lambda backend: module.double_backward(a["ggx"], a["ggg"], a["ggb"], a["dy"], a["x"],
                                                                  a["gamma"], mean, invstd, backend=backend,
                                                                  **options),
        "jvp": lambda backend: module.jvp(a["x"], a["gamma"], a["beta"], a["tx"], a["ggg"], a["ggb"],
                                          backend=backend, **options),
        # eval mode, for the layers with running statistics (a single result comes back as a tuple of one here)
        "inference": lambda backend: (module.inference(a["x"], a["gamma"], a["beta"], a["running_mean"],
                                                       a["running_var"], backend=backend, **options),),
        "inference_backward": lambda backend: module.inference_backward(a["dy"], a["x"], a["gamma"],
                                                                        a["running_mean"], a["running_var"],
                                                                        backend=backend, **options),
        "inference_double_backward": lambda backend: module.double_backward(
            a["ggx"], a["ggg"], a["ggb"], a["dy"], a["x"], a["gamma"], a["running_mean"],
            1 / np.sqrt(a["running_var"] + 1e-5), backend=backend, training=False, **options),
    }
    return {kernel: calls[kernel] for kernel in kernels}


ALL = ("forward", "backward", "double_backward", "jvp")
EVAL = ("inference", "inference_backward", "inference_double_backward")

# layer, shape, options, the kernels that run compiled loops
CASES = [
    ("group_norm", (3, 70, 9, 8), {"num_groups": 4, "axis": -1}, ALL),  # channel-last, C/G = 2
    ("group_norm", (2, 130, 6), {"num_groups": 6, "axis": 2}, ALL),  # channel-last, C/G = 1
    ("group_norm", (3, 100, 6), {"num_groups": 1, "axis": -1}, ALL),  # channel-last, one group
    ("group_norm", (2, 1, 1, 8), {"num_groups": 4, "axis": -1}, ALL),  # one spatial position
    ("group_norm", (1, 5, 7, 6), {"num_groups": 3, "axis": -1}, ALL),  # one sample
    ("group_norm", (2, 5, 8, 1), {"num_groups": 4, "axis": 2}, ALL),  # channel axis before a spatial axis of 1
    ("group_norm", (2, 8, 5, 5), {"num_groups": 2, "axis": 1}, ALL),  # channel-first: group-local loops
    ("instance_norm", (3, 70, 9, 5), {"axis": -1}, ALL),
    ("instance_norm", (2, 1, 3, 8), {"axis": -1}, ALL),
    ("instance_norm", (3, 5, 70, 9), {"axis": 1}, ALL),
    ("batch_norm", (3, 5, 7, 6), {"axis": 1}, ALL + EVAL),  # NCHW: channels of runs of H*W values
    ("batch_norm", (3, 7, 6, 5), {"axis": -1}, ALL + EVAL),  # NHWC: channels side by side in every row
    ("batch_norm", (20, 5), {"axis": 1}, ALL + EVAL),  # (N, C)
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("layer", "shape", "options", "kernels"), CASES,
                         ids=[f"{c[0]}-{c[1]}-axis{c[2]['axis']}" for c in CASES])
def test_compiled_loops_cover_the_layout_and_match_numpy(monkeypatch, layer, shape, options, kernels, dtype):
    """Channel-last group norm (C/G > 1, C/G == 1, one group, one position, one sample) and instance norm run
    sample-wise loops, channel-first ones group-local loops, batch norm its (rows, channels, inner) loops; all
    agree with the NumPy kernels."""
    module = getattr(bnsym, layer)
    generated = importlib.import_module(f"bnsym._generated.{layer}_numba")
    arguments = _arguments(layer, shape, options, dtype)
    calls = _all_kernels(module, arguments, options, kernels)
    expected = {kernel: call("numpy") for kernel, call in calls.items()}
    monkeypatch.setattr(generated, "numpy_kernels", _NoFallback(layer))
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    for kernel, call in calls.items():
        got = call("numba")
        for k, (actual, wanted) in enumerate(zip(got, expected[kernel])):
            assert actual.shape == wanted.shape and actual.dtype == wanted.dtype, (
                f"{layer} {kernel} result {k}: {actual.shape} {actual.dtype}, NumPy gives {wanted.shape} "
                f"{wanted.dtype}")
            scale = max(float(np.max(np.abs(wanted))), 1.0)
            error = float(np.max(np.abs(actual.astype(np.float64) - wanted))) / scale
            assert error <= tolerance, f"{layer} {shape} {kernel} result {k}: relative error {error:.2e}"


def test_a_channel_axis_before_longer_spatial_axes_runs_the_numpy_kernel_and_matches():
    """(N, H, C, W) with W > 1: the groups are neither contiguous runs nor interleaved along the last axis, so the
    compiled wrapper runs the NumPy kernel (InterleavedLayout refuses it), with the same results."""
    options = {"num_groups": 4, "axis": 2}
    a = _arguments("group_norm", (2, 5, 8, 3), options, np.float64)
    _, mean, invstd = bnsym.group_norm.forward(a["x"], a["gamma"], a["beta"], backend="numpy", **options)
    for backend_result, numpy_result in zip(
            bnsym.group_norm.backward(a["dy"], a["x"], a["gamma"], mean, invstd, backend="numba", **options),
            bnsym.group_norm.backward(a["dy"], a["x"], a["gamma"], mean, invstd, backend="numpy", **options)):
        np.testing.assert_allclose(backend_result, numpy_result, rtol=1e-12, atol=1e-12)
    assert _layout((2, 5, 4, 2, 3), (1, 3, 4), (0, 1, 4)) is None


def test_compiled_channel_last_results_do_not_depend_on_the_thread_count():
    """The sample-wise loops add the samples' shares of dgamma and dbeta in sample order: bit-identical on one
    thread and on two."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here: nothing to compare")
    a = _arguments("group_norm", (9, 70, 3, 6), {"axis": -1}, np.float32, seed=2)
    options = {"num_groups": 3, "axis": -1}
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            _, mean, invstd = bnsym.group_norm.forward(a["x"], a["gamma"], a["beta"], backend="numba", **options)
            results.append(bnsym.group_norm.backward(a["dy"], a["x"], a["gamma"], mean, invstd, backend="numba",
                                                     **options))
    finally:
        numba.set_num_threads(before)
    for name, first, other in zip(("dx", "dgamma", "dbeta"), results[0], results[-1]):
        np.testing.assert_array_equal(first, other, err_msg=f"{name} differs between 1 and 2 threads")


def _layout(shape, reduced, parameter_axes, fields=None, per_group=(), reducer=None, parameter_dtype=np.float32):
    """InterleavedLayout.of for float32 fields of ``shape`` (or ``fields``, a tuple) and a parameter that varies
    on the axes not in ``parameter_axes``."""
    fields = (np.zeros(shape, np.float32),) if fields is None else fields
    gamma = np.zeros(tuple(1 if a in parameter_axes else n for a, n in enumerate(shape)), parameter_dtype)
    count = int(np.prod([shape[a] for a in reduced]))
    return InterleavedLayout.of(reducer or Reducer(reduced, count, parameter_axes), fields=fields,
                                per_group=per_group, parameters=(gamma,))


def test_interleaved_layout_reads_channel_last_group_norm():
    """(N, H, W, G, C/G) reduced over H, W and C/G: B = N samples of R = H*W rows of K = C values."""
    layout = _layout((2, 3, 4, 5, 2), (1, 2, 4), (0, 1, 2))
    assert (layout.B, layout.R, layout.G, layout.S) == (2, 12, 5, 2)
    assert layout.parameter(np.arange(10, dtype=np.float32).reshape(1, 1, 1, 5, 2)).shape == (10,)
    mean = np.arange(10, dtype=np.float32).reshape(2, 1, 1, 5, 1)
    np.testing.assert_array_equal(layout.per_group(mean), mean.reshape(2, 5))
    assert layout.per_group(1e-5).shape == (2, 5)


@pytest.mark.parametrize(("case", "shape", "reduced", "parameter_axes", "extra"), [
    ("channel-first: groups are contiguous runs (group-local loops)", (2, 5, 2, 3, 4), (2, 3, 4), (0, 3, 4), {}),
    ("batch norm over N: no leading kept axis", (6, 3, 4, 5), (0, 1, 2), (0, 1, 2), {}),
    ("a parameter that does not vary along C/G", (2, 3, 4, 5, 2), (1, 2, 4), (0, 1, 2, 4), {}),
    ("a field that is not C-contiguous", (2, 3, 4, 5), (1, 2), (0, 1, 2),
     {"fields": (np.zeros((5, 4, 3, 2), np.float32).transpose(),)}),
    ("a per-group value that varies along a reduced axis", (2, 3, 4, 5), (1, 2), (0, 1, 2),
     {"per_group": (np.zeros((2, 3, 1, 5), np.float32),)}),
    ("a per-group value of another dtype", (2, 3, 4, 5), (1, 2), (0, 1, 2),
     {"per_group": (np.zeros((2, 1, 1, 5), np.float64),)}),
    ("a parameter of another dtype", (2, 3, 4, 5), (1, 2), (0, 1, 2), {"parameter_dtype": np.float64}),
    ("fields of two dtypes", (2, 3, 4, 5), (1, 2), (0, 1, 2),
     {"fields": (np.zeros((2, 3, 4, 5), np.float32), np.zeros((2, 3, 4, 5), np.float64))}),
    ("float16 fields", (2, 3, 4, 5), (1, 2), (0, 1, 2), {"fields": (np.zeros((2, 3, 4, 5), np.float16),)}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_interleaved_layout_refuses_what_its_loops_do_not_cover(case, shape, reduced, parameter_axes, extra):
    assert _layout(shape, reduced, parameter_axes, **extra) is None, case


def test_interleaved_layout_refuses_a_sharded_reducer():
    """A sharded run's reducer adds the other shards' totals in its sums, which the loops would bypass."""

    class Sharded(Reducer):
        pass

    shape = (2, 3, 4, 5)
    assert _layout(shape, (1, 2), (0, 1, 2), reducer=Sharded((1, 2), 12, (0, 1, 2))) is None
