"""Choosing a backend, and what each backend promises beyond matching the others: libraries, devices, jit, caching.

The property library and the PyTorch comparisons run through every backend elsewhere (tests/backends.py lists the
variants); here each backend is checked against the NumPy backend on the layouts its loops treat differently.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bnsym
from bnsym.runtime import backends as _backends
from bnsym.runtime.reduce import Reducer
from tests.backends import JIT, VIAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numba():
    return pytest.importorskip("numba", reason="the compiled backend needs numba (the `fast` extra)")

LAYOUTS = [  # shape, channel axis: each (rows, groups, inner) case of bnsym.runtime.fused, and the fallbacks
    ((64, 5), 1),  # (N, C): rows, one block
    ((300, 7), 1),  # (N, C): several blocks and a partial one
    ((6, 4, 5, 3), 1),  # NCHW: runs of 15
    ((2, 3, 2500), 1),  # runs longer than RUN = 1024: pieces and a partial piece
    ((5, 4, 3, 6), -1),  # NHWC: rows of 6 groups
    ((3, 1, 4), 1),  # one channel
    ((4, 3, 5), 2),  # channel axis last of three
]


def _problem(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    return dict(
        x=rng.normal(2, 3, size=shape).astype(dtype), dy=rng.normal(size=shape).astype(dtype),
        ggx=rng.normal(size=shape).astype(dtype), tx=rng.normal(size=shape).astype(dtype),
        gamma=rng.normal(size=channels).astype(dtype), beta=rng.normal(size=channels).astype(dtype),
        running_mean=rng.normal(size=channels).astype(dtype),
        running_var=rng.uniform(0.5, 2, size=channels).astype(dtype),
        vector=rng.normal(size=channels).astype(dtype))


def _every_result(via, p, axis):
    """Every public function's results on problem ``p`` through ``via``, by name."""
    y, mean, invstd = via.batch_norm_forward(p["x"], p["gamma"], p["beta"], eps=1e-3, axis=axis)
    results = {"y": y, "mean": mean, "invstd": invstd}
    results.update(zip(("dx", "dgamma", "dbeta"), via.batch_norm_backward(p["dy"], p["x"], p["gamma"], mean, invstd,
                                                                          axis=axis)))
    args = (p["gamma"], p["beta"], p["running_mean"], p["running_var"])
    results["eval y"] = via.batch_norm_inference(p["x"], *args, eps=1e-3, axis=axis)
    eval_grads = via.batch_norm_inference_backward(p["dy"], p["x"], p["gamma"], *args[2:], eps=1e-3, axis=axis)
    results.update(zip(("eval dx", "eval dgamma", "eval dbeta"), eval_grads))
    for training in (True, False):
        second = via.batch_norm_double_backward(p["ggx"], p["vector"], p["beta"], p["dy"], p["x"], p["gamma"], mean,
                                                invstd, axis=axis, training=training)
        results.update(zip((f"gx {training}", f"ggamma {training}", f"gdy {training}"), second))
    results.update(zip(("jvp y", "ty"), via.batch_norm_jvp(p["x"], p["gamma"], p["beta"], p["tx"], p["vector"],
                                                           p["beta"], eps=1e-3, axis=axis)))
    count = p["x"].size // p["x"].shape[axis]
    new = via.update_running_stats(p["running_mean"], p["running_var"], mean, invstd, count, momentum=0.3)
    results.update(zip(("new_mean", "new_var"), new))
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("shape", "axis"), LAYOUTS, ids=str)
@pytest.mark.parametrize("via", [v for v in VIAS if v.name != "numpy"], ids=str)
def test_every_function_matches_the_numpy_backend(via, shape, axis, dtype):
    p = _problem(shape, axis, dtype)
    expected = _every_result(next(v for v in VIAS if v.name == "numpy"), p, axis)
    actual = _every_result(via, p, axis)
    tolerance = 2e-5 if dtype == np.float32 else 1e-12
    for name, value in expected.items():
        got = actual[name]
        assert got.shape == value.shape and got.dtype == value.dtype, \
            f"{via} {name}: shape {got.shape} {got.dtype}, expected {value.shape} {value.dtype}"
        error = np.max(np.abs(got.astype(np.float64) - value), initial=0) / max(np.max(np.abs(value)), 1)
        assert error <= tolerance, f"{via} {name}: relative difference {error:.1e} from the NumPy backend"


@pytest.mark.parametrize("via", [v for v in VIAS if v.name != "numpy"] + [JIT], ids=str)
def test_batch_norm_without_an_affine_part_matches_the_numpy_backend(via):
    """gamma=None and beta=None (no affine part) on every backend, eval mode included: the results of the NumPy
    backend, and None for the gradient of a parameter that is None."""
    axis = 1
    p = _problem((6, 4, 5, 3), axis, np.float64)
    numpy = next(v for v in VIAS if v.name == "numpy")

    def results(v):
        y, mean, invstd = v.batch_norm_forward(p["x"], None, None, axis=axis)
        dx, dgamma, dbeta = v.batch_norm_backward(p["dy"], p["x"], None, mean, invstd, axis=axis)
        assert dgamma is None, f"{v}: dgamma for gamma=None is {dgamma!r}"
        y_eval = v.batch_norm_inference(p["x"], None, None, p["running_mean"], p["running_var"], axis=axis)
        dx_eval, dgamma, _ = v.batch_norm_inference_backward(p["dy"], p["x"], None, p["running_mean"],
                                                             p["running_var"], axis=axis)
        assert dgamma is None, f"{v}: eval-mode dgamma for gamma=None is {dgamma!r}"
        gx, ggamma, gdy = v.batch_norm_double_backward(p["ggx"], None, p["beta"], p["dy"], p["x"], None, mean,
                                                       invstd, axis=axis)
        assert ggamma is None, f"{v}: ggamma for gamma=None is {ggamma!r}"
        return {"y": y, "mean": mean, "invstd": invstd, "dx": dx, "dbeta": dbeta, "eval y": y_eval,
                "eval dx": dx_eval, "gx": gx, "gdy": gdy}

    expected, actual = results(numpy), results(via)
    for name, value in expected.items():
        error = np.max(np.abs(actual[name].astype(np.float64) - value)) / max(np.max(np.abs(value)), 1)
        assert error <= 1e-12, f"{via} {name}: relative difference {error:.1e} from the NumPy backend"


def test_non_contiguous_input_runs_and_matches():
    """A transposed view is outside the compiled loops' layouts: the NumPy kernel runs, with the same results."""
    p = _problem((6, 5, 4), 1, np.float64)
    x = np.swapaxes(p["x"], 0, 2)  # (4, 5, 6), not C-contiguous
    for via in VIAS[:2]:
        via.require()
        y, mean, invstd = via.batch_norm_forward(x, p["gamma"], p["beta"], axis=1)
        y_ref, mean_ref, _ = bnsym.batch_norm_forward(np.ascontiguousarray(x), p["gamma"], p["beta"], axis=1,
                                                      backend="numpy")
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12, err_msg=str(via))
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, err_msg=str(via))


# ----- choosing a backend -----

def test_auto_chooses_numba_for_numpy_and_array_api_for_other_libraries():
    _numba()
    torch = pytest.importorskip("torch")
    assert _backends.resolve("auto", np.ones((2, 2))).name == "numba"
    assert _backends.resolve("auto", [[1.0, 2.0]]).name == "numba"
    assert _backends.resolve("auto", torch.ones(2, 2)).name == "array_api"


def test_auto_is_numpy_without_numba(monkeypatch):
    monkeypatch.setattr(_backends, "_installed", lambda backend: backend != "numba")
    assert _backends.resolve("auto", np.ones((2, 2))).name == "numpy"


@pytest.mark.parametrize(("backend", "extra"), [("numba", "fast"), ("array_api", "array-api")])
def test_a_missing_extra_is_an_import_error_that_names_it(monkeypatch, backend, extra):
    monkeypatch.setattr(_backends, "_installed", lambda name: False)
    x = np.ones((3, 2))
    with pytest.raises(ImportError, match=rf'pip install -e "\.\[{extra}\]" from a clone'):
        bnsym.batch_norm_forward(x, np.ones(2), np.zeros(2), backend=backend)


def test_auto_on_torch_without_array_api_compat_names_the_extra(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(_backends, "_installed", lambda name: False)
    with pytest.raises(ImportError, match=r'x is a torch\.Tensor: pip install -e "\.\[array-api\]"'):
        bnsym.batch_norm_forward(torch.ones(3, 2), torch.ones(2), torch.zeros(2))


def test_an_unknown_backend_is_a_value_error_listing_the_backends():
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'numpy', 'numba', 'array_api', got 'cuda'"):
        bnsym.batch_norm_forward(np.ones((3, 2)), np.ones(2), np.zeros(2), backend="cuda")


def test_a_numpy_backend_refuses_another_librarys_array():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match='backend="numba" computes on NumPy arrays, got x of type torch.Tensor'):
        bnsym.batch_norm_forward(torch.ones(3, 2), np.ones(2), np.zeros(2), backend="numba")


# ----- the array-API backend: libraries, dtypes, devices, jit -----

def test_torch_in_torch_out_in_the_input_dtype():
    torch = pytest.importorskip("torch")
    x = torch.randn(8, 3, 4, dtype=torch.float16)
    y, mean, invstd = bnsym.batch_norm_forward(x, torch.ones(3), torch.zeros(3))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float16 and y.shape == x.shape
    assert mean.dtype == torch.float32 and mean.shape == (3,)  # statistics stay in the compute dtype
    dx, dgamma, dbeta = bnsym.batch_norm_backward(torch.randn(8, 3, 4, dtype=torch.float16), x, torch.ones(3),
                                                  mean, invstd)
    assert dx.dtype == torch.float16 and dgamma.dtype == torch.float16 and dgamma.shape == (3,)


def test_torch_bad_input_is_a_clear_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\), one value per channel"):
        bnsym.batch_norm_forward(torch.ones(4, 3), torch.ones(2), torch.zeros(3))
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        bnsym.batch_norm_forward(torch.ones(4, 3, dtype=torch.int64), torch.ones(3), torch.zeros(3))


def test_torch_autograd_flows_through_the_array_api_kernels():
    """The kernels never write into an array that autograd saved: gradients of bnsym's own forward (computed by
    torch) equal bnsym's derived backward."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(6, 3, 4)), requires_grad=True)
    gamma, beta = torch.tensor(rng.normal(size=3)), torch.tensor(rng.normal(size=3))
    dy = torch.tensor(rng.normal(size=(6, 3, 4)))
    y, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta)
    (y * dy).sum().backward()
    dx, _, _ = bnsym.batch_norm_backward(dy, x.detach(), gamma, mean.detach(), invstd.detach())
    torch.testing.assert_close(x.grad, dx, rtol=1e-10, atol=1e-12)


def test_jax_traces_under_jit_without_a_host_round_trip():
    """make_jaxpr fails on any conversion of a traced value to a Python or NumPy value."""
    jax = pytest.importorskip("jax")
    x = jax.numpy.ones((8, 3, 5))
    jaxpr = jax.make_jaxpr(lambda x, g, b: bnsym.batch_norm_forward(x, g, b))(x, jax.numpy.ones(3),
                                                                              jax.numpy.zeros(3))
    assert "pure_callback" not in str(jaxpr) and "io_callback" not in str(jaxpr)


@pytest.mark.parametrize(("shape", "axis"), [((64, 5), 1), ((6, 4, 5, 3), 1), ((5, 4, 3, 6), -1)], ids=str)
def test_every_function_under_jax_jit_matches_the_numpy_backend(shape, axis):
    JIT.require()
    p = _problem(shape, axis, np.float32, seed=1)
    expected = _every_result(next(v for v in VIAS if v.name == "numpy"), p, axis)
    actual = _every_result(JIT, p, axis)
    for name, value in expected.items():
        error = np.max(np.abs(actual[name].astype(np.float64) - value)) / max(np.max(np.abs(value)), 1)
        assert error <= 2e-5, f"jit {name}: relative difference {error:.1e} from the NumPy backend"


def test_cuda_tensors_stay_on_the_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: the array-API backend on GPU tensors is not exercised")
    x = torch.randn(16, 4, 8, device="cuda")
    y, mean, invstd = bnsym.batch_norm_forward(x, torch.ones(4, device="cuda"), torch.zeros(4, device="cuda"))
    assert y.device == x.device and mean.device == x.device
    y_cpu, mean_cpu, _ = bnsym.batch_norm_forward(x.cpu().numpy(), np.ones(4, np.float32), np.zeros(4, np.float32),
                                                  backend="numpy")
    np.testing.assert_allclose(y.cpu().numpy(), y_cpu, rtol=1e-5, atol=1e-5)


def test_compensated_totals_are_as_accurate_as_float64_ones():
    """Without float64 (JAX by default), partials are added with their rounding errors carried along: the total
    of about 10^6 float32 values near 10^4 is the float64 one correctly rounded to float32; the same partials added
    plainly in float32 are more than a unit off (the test would catch a compensation that does nothing)."""
    from bnsym.runtime.array_api import ArrayAPIReducer, namespace

    x = (1e4 + np.random.default_rng(5).normal(size=(1, 1, 1024 * 1000))).astype(np.float32)
    xp = namespace(x)
    exact = x.astype(np.float64).sum()
    compensated = float(ArrayAPIReducer(xp, (0, 2), x.size, float64_totals=False).sums((x,))[0].item())
    assert abs(compensated - exact) <= 0.5 * np.spacing(np.float32(exact)), (compensated, exact)
    pieces = x.reshape(-1, 1024).sum(axis=1)  # the same float32 partials, then a plain running float32 total
    running = np.float32(0)
    for piece in pieces:
        running = np.float32(running + piece)
    assert abs(float(running) - exact) > np.spacing(np.float32(exact))  # 1.7 units here; compensated: 0.33


# ----- the compiled backend -----

def test_a_sharded_reducer_gets_the_sums():
    """A reducer other than the local one (a data-parallel run's) is always asked for the sums: the compiled
    loops would bypass it, so the NumPy kernel runs."""
    _numba()
    from bnsym._generated import batch_norm_numba

    class Counting(Reducer):
        calls = 0

        def sums(self, *terms):
            Counting.calls += 1
            return super().sums(*terms)

    x = np.random.default_rng(0).normal(size=(16, 3, 4))
    gamma = np.ones((1, 3, 1))
    y, mean, _ = batch_norm_numba.batch_norm_forward(x, gamma, 0 * gamma, 1e-5, Counting((0, 2), 64))
    assert Counting.calls == 2  # one per stage
    np.testing.assert_allclose(mean.reshape(-1), x.mean(axis=(0, 2)), rtol=1e-12)


def test_compiled_results_do_not_depend_on_the_thread_count():
    """Partials of fixed blocks are added in a fixed order, whatever the threads: bit-identical results."""
    numba = _numba()
    p = _problem((300, 7), 1, np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):  # one thread and the whole pool
            numba.set_num_threads(threads)
            results.append(bnsym.batch_norm_forward(p["x"], p["gamma"], p["beta"], backend="numba"))
    finally:
        numba.set_num_threads(before)
    for first, other in zip(results[0], results[-1]):
        np.testing.assert_array_equal(first, other)


@pytest.mark.parametrize(("layer", "shape", "parameter_shape", "options"),
                         [("layer_norm", (200, 30), (30,), {"axis": -1}),
                          ("group_norm", (70, 6, 5, 5), (6,), {"num_groups": 3, "axis": 1}),
                          ("adaptive_layer_norm", (3, 150, 30), (3, 30), {"axis": -1})],
                         ids=["layer_norm", "group_norm", "adaptive_layer_norm"])
def test_compiled_family_results_do_not_depend_on_the_thread_count(layer, shape, parameter_shape, options):
    """The group-local loops too: parameter gradients summed over 200 rows (four blocks of 64), over 70 samples,
    or per sample over its 150 rows (three blocks of 64; adaptive layer norm's parameters hold a row per sample)
    come out bit-identical on one thread and on all of them."""
    numba = _numba()
    rng = np.random.default_rng(1)
    x = (5 + rng.normal(size=shape)).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    gamma = rng.uniform(0.5, 2, size=parameter_shape).astype(np.float32)
    module = getattr(bnsym, layer)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):  # one thread and the whole pool
            numba.set_num_threads(threads)
            _, mean, invstd = module.forward(x, gamma, gamma, backend="numba", **options)
            results.append(module.backward(dy, x, gamma, mean, invstd, backend="numba", **options))
    finally:
        numba.set_num_threads(before)
    for first, other in zip(results[0], results[-1]):
        np.testing.assert_array_equal(first, other)


def test_compiled_kernels_load_from_the_disk_cache_in_a_new_process():
    """A process that finds the kernels in Numba's disk cache loads them and calls the loops (a regression: loaded
    from the cache, the drivers once called the parallel loops before Numba's thread pool existed). The first child
    compiles them unless the suite's cache has them already; the second must load them: it counts Numba's cache
    hits. The suite's own cache, not one of the test's: a second compilation of the same kernels would test nothing
    more."""
    _numba()
    script = textwrap.dedent("""
        import numpy as np, bnsym
        from bnsym._generated import batch_norm_numba as kernels
        x = np.array([[1.0], [3.0], [8.0]])
        y, mean, invstd = bnsym.batch_norm_forward(x, np.ones(1), np.zeros(1), backend="numba")
        hits = sum(sum(f.stats.cache_hits.values()) for f in vars(kernels).values() if hasattr(f, "stats"))
        print(float(mean[0]), hits)
    """)
    for attempt in ("compile or load", "load"):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert run.returncode == 0, f"{attempt}: exit {run.returncode}\n{run.stderr[-2000:]}"
        mean, hits = run.stdout.split()
        assert float(mean) == 4.0, run.stdout
    assert int(hits) > 0, f"the second process compiled the kernels instead of loading them: {run.stdout}"
