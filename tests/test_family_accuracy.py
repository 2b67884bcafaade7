"""float32 with a large common offset against float64, for the other layers of the family, on every backend.

The contract of tests/test_accuracy.py: with x = offset + N(0, std), a float32 layer cannot do better than the
rounding of the mean itself, about eps32 * |offset| relative to std, and every result must stay within ``UNITS``
times that. The shapes are chosen so that every level of the compiled loops' sums is used: groups longer than one
float32 piece (1024 values), parameter gradients summed over more groups than one float32 block (64), group norm's
runs of H*W values per parameter (S > 1), instance norm's per-group parameter sums, and channel-last group and
instance norm (the compiled backend's sample-wise loops), on many rows and on samples of only 64 rows (where a
channel's float32 sum of its 64 terms, with nothing to pair them up, once measured 3.7 units).
"""

import numpy as np
import pytest

import bnsym
from tests.backends import JIT, VIAS

EPS32 = float(np.finfo(np.float32).eps)
UNITS = 2.0

CASES = [  # layer, shape, options, parameter shape, offset, std
    ("layer_norm", (300, 3000), {"axis": -1}, (3000,), 1e4, 1.0),
    ("layer_norm", (70, 3, 40), {"axis": (-2, -1)}, (3, 40), -3e3, 0.5),
    ("rms_norm", (300, 3000), {"axis": -1}, (3000,), 1e2, 1.0),
    ("group_norm", (4, 8, 40, 40), {"num_groups": 2, "axis": 1}, (8,), 1e4, 1.0),
    ("group_norm", (300, 64), {"num_groups": 2, "axis": 1}, (64,), 1e4, 1.0),
    ("instance_norm", (70, 4, 48, 48), {"axis": 1}, (4,), 1e4, 1.0),
    ("group_norm", (4, 40, 40, 8), {"num_groups": 2, "axis": -1}, (8,), 1e4, 1.0),
    ("instance_norm", (20, 48, 48, 4), {"axis": -1}, (4,), 1e4, 1.0),
    ("group_norm", (32, 8, 8, 64), {"num_groups": 32, "axis": -1}, (64,), 1e4, 1.0),
    ("instance_norm", (64, 8, 8, 32), {"axis": -1}, (32,), 1e4, 1.0),
]


def _relative_error(actual, expected):
    return np.max(np.abs(np.asarray(actual, np.float64) - expected)) / np.max(np.abs(expected))


def _errors(layer, module, shape, options, parameter_shape, offset, std):
    """{result name: error in units of eps32 * (1 + |offset|/std)} of forward and backward."""
    rng = np.random.default_rng(sum(shape))
    x = (offset + std * rng.normal(size=shape)).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)  # random, never ones
    gamma = rng.uniform(0.5, 2, size=parameter_shape).astype(np.float32)
    beta = rng.normal(size=parameter_shape).astype(np.float32)
    rms = layer == "rms_norm"
    affine = (gamma,) if rms else (gamma, beta)
    forward = module.forward(x, *affine, **options)
    backward = module.backward(dy, x, gamma, *forward[1:], **options)
    as64 = lambda a: a.astype(np.float64)  # noqa: E731  the same float32 inputs, computed in float64
    exact = getattr(bnsym, layer)
    forward64 = exact.forward(as64(x), *map(as64, affine), **options, backend="numpy")
    backward64 = exact.backward(as64(dy), as64(x), as64(gamma), *forward64[1:], **options, backend="numpy")
    names = (("y", "invrms") if rms else ("y", "mean", "invstd")) + (("dx", "dgamma") if rms else
                                                                      ("dx", "dgamma", "dbeta"))
    unit = EPS32 * (1 + abs(offset) / std)
    errors = {}
    for name, actual, expected in zip(names, forward + backward, forward64 + backward64):
        if name == "mean":
            errors[name] = np.max(np.abs(np.asarray(actual, np.float64) - expected)) / std / unit
        else:
            errors[name] = _relative_error(actual, expected) / unit
    return errors


@pytest.mark.parametrize("via", VIAS + [JIT], ids=str)
@pytest.mark.parametrize(("layer", "shape", "options", "parameter_shape", "offset", "std"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_family_float32_large_offset_matches_float64(layer, shape, options, parameter_shape, offset, std, via):
    """Every layer and backend (JAX inside jax.jit, float64 off: compensated totals) within UNITS units."""
    errors = _errors(layer, getattr(via, layer), shape, options, parameter_shape, offset, std)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= UNITS, (f"{via}, {layer} {shape}: {worst}: error {errors[worst]:.2f} units of "
                                    f"eps32*(1+|offset|/std) exceeds {UNITS} (all: "
                                    f"{ {k: round(float(v), 2) for k, v in errors.items()} })")
