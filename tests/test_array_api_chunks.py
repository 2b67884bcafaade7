"""The array-API backend forms products chunk by chunk (bnsym.runtime.array_api): chunked results equal whole ones.

Chunking only happens on arrays larger than ``MIN_CHUNK`` bytes; here ``MIN_CHUNK`` is lowered so that small arrays
of awkward shapes are cut into many chunks: a leading axis that the chunk length does not divide, a length-1 axis,
a leading axis too short to give small enough chunks (the next axis is sliced too), a large result (a parameter's
gradient, reduced piece by piece along a kept axis), runs longer than ``RUN`` in equal pieces or not. Memory
itself is measured in benchmarks/memory.py, not here.
"""

import math

import numpy as np
import pytest

import bnsym
from bnsym.runtime import array_api as _array_api
from bnsym.runtime.reduce import Reducer

pytest.importorskip("array_api_compat", reason="the array-API backend needs array-api-compat")

CASES = [  # shape, reduced axes, parameter axes
    ((67, 5), (0,), ()),  # (N, C): 67 rows, not a multiple of any chunk length
    ((5, 67), (1,), (0,)),  # rows kept (layer norm): chunks are placed side by side
    ((3, 1, 7, 11), (0, 2, 3), ()),  # NCHW with a length-1 channel axis
    ((2, 3, 1500), (0, 2), ()),  # a short leading axis: one slice is too large, the next axis is sliced too
    ((2, 3, 1031), (0, 2), ()),  # runs of a prime length above RUN: a piece of RUN values and a short one
    ((4, 6, 5, 3), (1, 2, 3), (0,)),  # layer norm over (C, H, W) with an elementwise affine: a large result
    ((5, 6, 7), (1,), ()),  # kept axes on both sides of the reduced one
]


def _exact(product: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    kept = [i for i in range(product.ndim) if i not in axes]
    columns = np.moveaxis(product, kept, range(len(kept))).reshape(math.prod(product.shape[i] for i in kept), -1)
    totals = np.array([math.fsum(column) for column in columns])
    return totals.reshape([1 if i in axes else n for i, n in enumerate(product.shape)])


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of at most 1/8 of an array and at least 64 bytes: every array here is cut into several."""
    monkeypatch.setattr(_array_api, "MIN_CHUNK", 64)
    monkeypatch.setattr(_array_api, "CHUNKS", 8)


@pytest.mark.parametrize(("shape", "axes", "parameter_axes"), CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_sums_keep_the_accuracy_contract(shape, axes, parameter_axes, dtype, small_chunks):
    """Sums and parameter sums of one, two and three factors (one of them broadcast, as gamma is) equal the
    correctly rounded sums to a few units of the dtype, as the NumPy reducer's do, offset included."""
    rng = np.random.default_rng(len(shape))
    x = (1e3 + rng.normal(size=shape)).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    gamma = rng.uniform(0.5, 2, size=[1 if i in axes else n for i, n in enumerate(shape)]).astype(dtype)
    xp = _array_api.namespace(x)
    reducer = _array_api.ArrayAPIReducer(xp, axes, math.prod(shape[i] for i in axes), parameter_axes)
    numpy_reducer = Reducer(axes, reducer.count, parameter_axes)
    terms = [(x,), (dy, x), (dy, x, gamma), (gamma, dy)]
    tolerance = 8 * np.finfo(dtype).eps
    for method, over in (("sums", axes), ("parameter_sums", parameter_axes)):
        if not over:
            continue
        got = getattr(reducer, method)(*terms)
        reference = getattr(numpy_reducer, method)(*terms)
        for term, total, numpy_total in zip(terms, got, reference):
            product = math.prod(factor.astype(np.float64) for factor in term)
            expected = _exact(np.broadcast_to(product, shape), over)
            scale = np.max(np.abs(product).sum(axis=over))
            assert total.dtype == dtype and total.shape == expected.shape, (method, len(term), total.shape)
            assert np.max(np.abs(total - expected)) <= tolerance * scale, (method, len(term))
            assert np.max(np.abs(total - numpy_total)) <= tolerance * scale, (method, len(term))


def test_chunked_sums_are_really_chunked(small_chunks, monkeypatch):
    """The fixture does cut the arrays (else the test above would compare whole sums with whole sums)."""
    calls = []
    original = _array_api.ArrayAPIReducer._partials
    monkeypatch.setattr(_array_api.ArrayAPIReducer, "_partials",
                        lambda self, a, axes: calls.append(a.shape) or original(self, a, axes))
    x = np.ones((67, 5), np.float32)
    reducer = _array_api.ArrayAPIReducer(_array_api.namespace(x), (0,), 67)
    (total,) = reducer.sums((x, x))
    assert total.tolist() == [[67.0] * 5]
    assert len(calls) > 1 and sum(shape[0] for shape in calls) == 67, calls


@pytest.mark.parametrize("shape", [(67, 5), (3, 1, 7, 11), (2, 3, 1500)], ids=str)
def test_add_product_in_chunks_equals_the_whole_product(shape, small_chunks):
    """out += a * b * c chunk by chunk gives exactly the values of the whole product (same operations in the
    same order), with broadcast factors and a Python number among them."""
    rng = np.random.default_rng(0)
    out, a, b = rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=shape)
    c = rng.normal(size=(1,) * (len(shape) - 1) + (shape[-1],))
    whole = _array_api.add_product(out.copy(), a, c, b, 3, in_place=False)
    chunked = _array_api.add_product(out.copy(), a, c, b, 3, in_place=True)
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_allclose(whole, out + a * c * b * 3, rtol=1e-15)


def test_in_place_is_refused_for_jax_and_while_autograd_records():
    torch = pytest.importorskip("torch")
    x, w = torch.ones(3), torch.ones(3, requires_grad=True)
    assert _array_api.in_place_allowed(x, 1e-5, np.ones(3))
    assert not _array_api.in_place_allowed(x, w)
    with torch.no_grad():
        assert _array_api.in_place_allowed(x, w)
    jnp = pytest.importorskip("jax.numpy")
    assert not _array_api.in_place_allowed(jnp.ones(3))


def test_torch_autograd_through_chunked_kernels():
    """Arrays large enough to be chunked with the real sizes, with gamma requiring grad: autograd through bnsym's
    own layer-norm backward (dy requiring grad too) gives what bnsym's derived double backward gives, so no
    kernel wrote into an array that autograd saved."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    shape = (64, 600)  # 300 kB of float64: chunked (MIN_CHUNK is 256 kB)
    assert math.prod(shape) * 8 > _array_api.MIN_CHUNK
    x = torch.tensor(1 + rng.normal(size=shape))
    gamma = torch.tensor(rng.uniform(0.5, 2, size=shape[1]), requires_grad=True)
    dy = torch.tensor(rng.normal(size=shape), requires_grad=True)
    ggx = torch.tensor(rng.normal(size=shape))
    _, mean, invstd = bnsym.layer_norm.forward(x, gamma.detach(), None, backend="array_api")
    dx, _, _ = bnsym.layer_norm.backward(dy, x, gamma, mean, invstd, backend="array_api")
    gdy_autograd, ggamma_autograd = torch.autograd.grad((dx * ggx).sum(), (dy, gamma))
    _, ggamma, gdy = bnsym.layer_norm.double_backward(ggx.numpy(), None, None, dy.detach().numpy(), x.numpy(),
                                                      gamma.detach().numpy(), mean.numpy(), invstd.numpy(),
                                                      backend="numpy")
    np.testing.assert_allclose(gdy_autograd.numpy(), gdy, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ggamma_autograd.numpy(), ggamma, rtol=1e-9, atol=1e-9)
