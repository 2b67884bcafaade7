"""Batch norm's NumPy-backend results on a fixed set of inputs, for the bit-for-bit test (test_batch_norm_bits.py).

The inputs are made by integer arithmetic (exact in every float dtype, the same on every machine and NumPy
version); the results are every public batch-norm function's, on ``backend="numpy"``, for NCHW, NHWC, (N, C), a
batch of more than 64 rows (the reducer's blocked sums) and a run of more than 1024 values (its split runs), in
float16, float32 and float64. ``tests/data/batch_norm_numpy.npz`` holds them as computed by the code before batch
norm joined the family's runtime (commit 0e72ea8): the arrays of at most :data:`LARGEST` values themselves, the larger
ones as the SHA-256 of their bytes, dtype and shape (:func:`pack`). Running this module writes the file again from
the current code:

    PYTHONPATH=. python -m tests.batch_norm_reference tests/data/batch_norm_numpy.npz

It calls the public names only (``bnsym.batch_norm_*``, ``bnsym.update_running_stats``), which both runtimes have.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

import bnsym

#: (case name, shape, channel axis)
SHAPES = (
    ("nchw", (2, 3, 4, 5), 1),
    ("nhwc", (2, 4, 5, 3), -1),
    ("nc", (5, 3), 1),
    ("rows", (70, 2), 1),
    ("run", (1, 2, 1030), 1),
)
DTYPES = ("float16", "float32", "float64")
#: update_running_stats conventions, with their keyword arguments
CONVENTIONS = (
    ("torch", {}),
    ("keras", {}),
    ("chainer", {}),
    ("haiku", {"num_batches_tracked": 3}),
    ("cumulative", {"num_batches_tracked": 4}),
)


#: The most values an array stored whole may have; larger ones are stored as a digest.
LARGEST = 512


def digest(value: np.ndarray) -> str:
    """``sha256:<hex>`` of the dtype, the shape and the C-ordered bytes of ``value``."""
    value = np.ascontiguousarray(value)
    text = f"{value.dtype.str}{value.shape}".encode()
    return "sha256:" + hashlib.sha256(text + value.tobytes()).hexdigest()


def pack(results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference file's entries: ``names``, one line per result (``key dtype shape`` and, for a result of more
    than :data:`LARGEST` values, its :func:`digest`), and ``values``, the other results' values in that order,
    raveled and converted to float64 (exact for float16 and float32)."""
    names, values = [], []
    for key, value in results.items():
        value = np.asarray(value)
        line = f"{key} {value.dtype.str} {','.join(map(str, value.shape))}"
        if value.size > LARGEST:
            line += f" {digest(value)}"
        else:
            values.append(value.astype(np.float64).ravel())
        names.append(line)
    return {"names": np.asarray(names), "values": np.concatenate(values)}


def unpack(stored) -> dict[str, np.ndarray | str]:
    """The inverse of :func:`pack`: each key's array (of its dtype and shape), or its digest."""
    out: dict[str, np.ndarray | str] = {}
    values, offset = stored["values"], 0
    for line in stored["names"]:
        key, dtype, shape, *hashed = str(line).split(" ")
        shape = tuple(int(n) for n in shape.split(",") if n)
        if hashed:
            out[key] = hashed[0]
            continue
        size = int(np.prod(shape))
        out[key] = values[offset:offset + size].astype(dtype).reshape(shape)
        offset += size
    return out


def pattern(shape, dtype, multiplier: int, offset: float = 0.0, modulus: int = 97) -> np.ndarray:
    """Values k / 16 - 3 + offset for k = (i * multiplier) mod ``modulus``: exact in float16 for small offsets."""
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return ((index * multiplier) % modulus / 16.0 - 3.0 + offset).astype(dtype)


def inputs(shape, axis: int, dtype: str) -> dict[str, np.ndarray]:
    """The arguments of one case: fields shaped like x, per-channel arrays of shape (C,)."""
    channels = shape[axis]
    per_channel = (channels,)
    return {
        "x": pattern(shape, dtype, 37, offset=4.0),
        "dy": pattern(shape, dtype, 53),
        "ggx": pattern(shape, dtype, 29, modulus=89),
        "tx": pattern(shape, dtype, 41, modulus=83),
        "gamma": pattern(per_channel, dtype, 5, offset=3.5, modulus=13),
        "beta": pattern(per_channel, dtype, 7, modulus=11),
        "gggamma": pattern(per_channel, dtype, 3, modulus=7),
        "ggbeta": pattern(per_channel, dtype, 11, modulus=17),
        "tgamma": pattern(per_channel, dtype, 2, modulus=5),
        "tbeta": pattern(per_channel, dtype, 9, modulus=19),
        "running_mean": pattern(per_channel, dtype, 3, offset=4.0, modulus=23),
        "running_var": pattern(per_channel, dtype, 5, offset=5.0, modulus=29),
    }


def results() -> dict[str, np.ndarray]:
    """Every public function's results on every case, keyed ``<case>/<dtype>/<function>/<output>``."""
    out: dict[str, np.ndarray] = {}
    for case, shape, axis in SHAPES:
        for dtype in DTYPES:
            a = inputs(shape, axis, dtype)
            key = f"{case}/{dtype}"
            kw = {"axis": axis, "backend": "numpy"}
            y, mean, invstd = bnsym.batch_norm_forward(a["x"], a["gamma"], a["beta"], 1e-3, **kw)
            out.update({f"{key}/forward/y": y, f"{key}/forward/mean": mean, f"{key}/forward/invstd": invstd})
            names = ("dx", "dgamma", "dbeta")
            for name, value in zip(names, bnsym.batch_norm_backward(a["dy"], a["x"], a["gamma"], mean, invstd, **kw)):
                out[f"{key}/backward/{name}"] = value
            out[f"{key}/inference/y"] = bnsym.batch_norm_inference(a["x"], a["gamma"], a["beta"], a["running_mean"],
                                                                  a["running_var"], 1e-3, **kw)
            for name, value in zip(names, bnsym.batch_norm_inference_backward(
                    a["dy"], a["x"], a["gamma"], a["running_mean"], a["running_var"], 1e-3, **kw)):
                out[f"{key}/inference_backward/{name}"] = value
            eval_invstd = (1.0 / np.sqrt(a["running_var"].astype(np.float64) + 1e-3)).astype(mean.dtype)
            for training, statistics in ((True, (mean, invstd)), (False, (a["running_mean"], eval_invstd))):
                verb = "double_backward" if training else "double_backward_eval"
                gx, ggamma, gdy = bnsym.batch_norm_double_backward(a["ggx"], a["gggamma"], a["ggbeta"], a["dy"],
                                                                   a["x"], a["gamma"], *statistics, training=training,
                                                                   **kw)
                out.update({f"{key}/{verb}/gx": gx, f"{key}/{verb}/ggamma": ggamma, f"{key}/{verb}/gdy": gdy})
                # None cotangents mean zero
                gx, ggamma, gdy = bnsym.batch_norm_double_backward(a["ggx"], None, None, a["dy"], a["x"], a["gamma"],
                                                                   *statistics, training=training, **kw)
                out.update({f"{key}/{verb}_none/gx": gx, f"{key}/{verb}_none/ggamma": ggamma,
                            f"{key}/{verb}_none/gdy": gdy})
            y, ty = bnsym.batch_norm_jvp(a["x"], a["gamma"], a["beta"], a["tx"], a["tgamma"], a["tbeta"], 1e-3, **kw)
            out.update({f"{key}/jvp/y": y, f"{key}/jvp/ty": ty})
            y, ty = bnsym.batch_norm_jvp(a["x"], a["gamma"], a["beta"], a["tx"], None, None, 1e-3, **kw)
            out.update({f"{key}/jvp_none/y": y, f"{key}/jvp_none/ty": ty})
            var = np.maximum(1.0 / np.square(invstd.astype(np.float64)) - 1e-3, 0.0).astype(a["running_var"].dtype)
            count = int(np.prod(shape)) // shape[axis]
            for convention, options in CONVENTIONS:
                new_mean, new_var = bnsym.update_running_stats(a["running_mean"], a["running_var"],
                                                               mean.astype(a["running_mean"].dtype), var, count,
                                                               convention=convention, backend="numpy", **options)
                out.update({f"{key}/running_{convention}/mean": new_mean, f"{key}/running_{convention}/var": new_var})
    return out


if __name__ == "__main__":
    np.savez_compressed(sys.argv[1], **pack(results()))
