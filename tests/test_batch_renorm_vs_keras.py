"""Batch renormalisation against Keras's ``BatchNormalization(renorm=True)`` (Keras 3 on its JAX backend).

Keras runs in a subprocess (``tests/keras_batch_renorm.py``, KERAS_BACKEND=jax), so that importing it touches no
other test. Where Keras is Ioffe's algorithm (``momentum == renorm_momentum``, ``renorm_clipping`` given with
``rmin = 1/rmax``, the renorm stddev above sqrt(eps)), bnsym's ``batch_renorm`` must agree with it on the training
forward, the gradients (``jax.vjp`` through the layer's stateless call), both sets of running statistics after each
step and the eval output, to float32 accuracy (Keras computes in float32 whatever the input's dtype). Elsewhere the
tests pin down each way Keras differs (docs/batch-renorm.md): each fails if Keras stops differing, or differs in
another way.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import bnsym.batch_renorm as br
import numpy as np
import pytest

EPS = 1e-3
HERE = Path(__file__).parent
#: Keras computes in float32: a difference of a few float32 roundings of the largest value, with room for the
#: cancellation of a mean 9 standard deviations away from zero.
TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    # Found, not imported: importing Keras here would pick its backend for the whole test process.
    for module in ("keras", "jax"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    path = tmp_path_factory.mktemp("keras") / "renorm.npz"
    done = subprocess.run([sys.executable, str(HERE / "keras_batch_renorm.py"), str(path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"the Keras run failed:\n{done.stderr[-3000:]}"
    return dict(np.load(path))


def _f64(value):
    return np.asarray(value, dtype=np.float64)


def _close(what, keras_value, bnsym_value, tolerance=TOLERANCE):
    keras_value, bnsym_value = _f64(keras_value), _f64(bnsym_value)
    error = np.max(np.abs(keras_value - bnsym_value))
    scale = 1 + np.max(np.abs(bnsym_value))
    assert error <= tolerance * scale, f"{what}: Keras and bnsym differ by {error:.3g} (scale {scale:.3g})"


def _chained(run, case, steps, momentum, r_max, d_max, renorm_momentum=None):
    """Check every step of ``case`` against bnsym, its running statistics chained from the case's initial state
    (bnsym's own update, Keras's convention: new = momentum old + (1 - momentum) batch)."""
    state = {key.rsplit("/", 1)[1]: _f64(value) for key, value in run.items() if key.startswith(f"{case}/state/")}
    gamma, beta = state["gamma"], state["beta"]
    running_mean, running_std = state["renorm_mean"], state["renorm_stddev"]
    for step in range(steps):
        k = {key.split("/", 2)[2]: value for key, value in run.items() if key.startswith(f"{case}/{step}/")}
        x, dy = _f64(k["x"]), _f64(k["dy"])
        options = dict(eps=EPS, axis=-1, r_max=r_max, d_max=d_max)
        y, mean, invstd = br.forward(x, gamma, beta, running_mean, running_std, **options)
        _close(f"{case} step {step} y", k["y"], y)
        options.pop("eps")
        dx, dgamma, dbeta = br.backward(dy, x, gamma, mean, invstd, running_mean, running_std, **options)
        _close(f"{case} step {step} dx", k["dx"], dx)
        _close(f"{case} step {step} dgamma", k["dgamma"], dgamma)
        _close(f"{case} step {step} dbeta", k["dbeta"], dbeta)
        var = invstd**-2 - EPS
        count = x.size // x.shape[-1]
        running_mean, running_std = br.update_running_stats(running_mean, running_std, mean, var, count,
                                                            momentum=momentum, convention="keras", eps=EPS)
        _close(f"{case} step {step} renorm_mean", k["new/renorm_mean"], running_mean)
        _close(f"{case} step {step} renorm_stddev", k["new/renorm_stddev"], running_std)
        _close(f"{case} step {step} moving_mean", k["new/moving_mean"], running_mean)
        _close(f"{case} step {step} moving_stddev", k["new/moving_stddev"], running_std)
        y_eval = br.inference(_f64(k["x_eval"]), gamma, beta, running_mean, running_std, EPS, axis=-1)
        _close(f"{case} step {step} eval y", k["eval"], y_eval)


def test_keras_where_it_is_ioffes_algorithm_agrees_with_bnsym(keras_run):
    """r clipped at 1/r_max and r_max and d at d_max on some channels (a channel of spread 0.1 and one of 6 against
    running stddevs near 1, one of mean 9): forward, gradients, running statistics and eval over two steps."""
    _chained(keras_run, "paper_clipped", 2, momentum=0.9, r_max=3.0, d_max=5.0)
    _chained(keras_run, "paper_unclipped", 2, momentum=0.8, r_max=2.0, d_max=1.0)


def test_the_clipped_case_clips_r_and_d_on_both_sides(keras_run):
    """The agreement above covers the clipping: on the first step r is below 1/3 on one channel and above 3 on
    another, and |d| above 5 on a third."""
    state = {key.rsplit("/", 1)[1]: _f64(v) for key, v in keras_run.items() if key.startswith("paper_clipped/state/")}
    x = _f64(keras_run["paper_clipped/0/x"])
    sigma = np.sqrt(x.var(0) + EPS)
    r = sigma / state["renorm_stddev"]
    d = (x.mean(0) - state["renorm_mean"]) / state["renorm_stddev"]
    assert r.min() < 1 / 3 and r.max() > 3 and np.abs(d).max() > 5, (r, d)


def _first_step(run, case, **options):
    state = {key.rsplit("/", 1)[1]: _f64(v) for key, v in run.items() if key.startswith(f"{case}/state/")}
    x = _f64(run[f"{case}/0/x"])
    y, _, _ = br.forward(x, state["gamma"], state["beta"], state["renorm_mean"], state["renorm_stddev"], EPS,
                         axis=-1, **options)
    return _f64(run[f"{case}/0/y"]), y, x, state


def test_finding_keras_clips_nothing_by_default(keras_run):
    """``renorm_clipping=None`` (the default) is no clipping at all: Keras's y is bnsym's with unbounded r_max and
    d_max, and far from the paper's final r_max = 3, d_max = 5."""
    keras_y, unclipped, _, _ = _first_step(keras_run, "default_clipping", r_max=1e30, d_max=1e30)
    _close("default renorm_clipping against no clipping", keras_y, unclipped)
    _, clipped, _, _ = _first_step(keras_run, "default_clipping")
    assert np.max(np.abs(keras_y - clipped)) > 0.5, "Keras's default now clips r and d"


def test_finding_keras_does_not_clip_r_from_below_without_rmin(keras_run):
    """``{"rmax": 3, "dmax": 5}`` without ``rmin`` leaves r < 1/3 as it is (the paper clips r to [1/r_max, r_max]):
    the channel whose r is below 1/3 differs, the others agree."""
    keras_y, y, x, state = _first_step(keras_run, "no_rmin", r_max=3.0, d_max=5.0)
    r = np.sqrt(x.var(0) + EPS) / state["renorm_stddev"]
    low = r < 1 / 3
    assert low.any(), r
    assert np.max(np.abs(keras_y - y)[:, low]) > 0.1, "Keras now clips r from below without rmin"
    _close("channels with r >= 1/3", keras_y[:, ~low], y[:, ~low])


def test_finding_keras_keeps_two_sets_of_running_statistics(keras_run):
    """With momentum 0.9 and renorm_momentum 0.5, r and d follow the renorm statistics (rate 0.5) and eval the
    moving ones (rate 0.9): training agrees with bnsym at momentum 0.5 and eval with bnsym at momentum 0.9, so no
    single set of bnsym's running statistics is both."""
    run = keras_run
    state = {key.rsplit("/", 1)[1]: _f64(v) for key, v in run.items() if key.startswith("two_momenta/state/")}
    gamma, beta = state["gamma"], state["beta"]
    by_rate = {m: (state["renorm_mean"], state["renorm_stddev"]) for m in (0.5, 0.9)}
    for step in range(2):
        x = _f64(run[f"two_momenta/{step}/x"])
        y, mean, invstd = br.forward(x, gamma, beta, *by_rate[0.5], EPS, axis=-1)
        _close(f"step {step} y with the renorm statistics", run[f"two_momenta/{step}/y"], y)
        var = invstd**-2 - EPS
        for m in by_rate:
            by_rate[m] = br.update_running_stats(*by_rate[m], mean, var, x.shape[0], momentum=m,
                                                 convention="keras", eps=EPS)
    x_eval = _f64(run["two_momenta/1/x_eval"])
    keras_eval = _f64(run["two_momenta/1/eval"])
    _close("eval with the moving statistics", keras_eval, br.inference(x_eval, gamma, beta, *by_rate[0.9], EPS,
                                                                       axis=-1))
    other = br.inference(x_eval, gamma, beta, *by_rate[0.5], EPS, axis=-1)
    assert np.max(np.abs(keras_eval - other)) > 0.05, "Keras's eval now reads the renorm statistics"


def test_finding_keras_floors_the_renorm_stddev_at_sqrt_eps(keras_run):
    """r = sigma_B / max(renorm_stddev, sqrt(eps)): channels whose renorm stddev (1e-3, 0.02) is below sqrt(eps)
    = 0.0316 agree with bnsym given sqrt(eps) as the running stddev, not their own; the third (0.5) agrees as is."""
    keras_y, y, x, state = _first_step(keras_run, "stddev_floor", r_max=1e6, d_max=1e6)
    floored = np.maximum(state["renorm_stddev"], np.sqrt(EPS))
    y_floored, _, _ = br.forward(x, state["gamma"], state["beta"], state["renorm_mean"], floored, EPS, axis=-1,
                                 r_max=1e6, d_max=1e6)
    _close("renorm stddev floored at sqrt(eps)", keras_y, y_floored)
    assert np.max(np.abs(keras_y - y)[:, :2]) > 1, "Keras no longer floors the renorm stddev"
    _close("the channel above the floor", keras_y[:, 2], y[:, 2])


def test_finding_a_fresh_keras_layer_divides_by_sqrt_one_plus_eps_in_eval(keras_run):
    """Before any training step Keras's eval reads moving_variance = 1 and divides by sqrt(1 + eps); the running
    stddev it starts from is 1, so the paper (and bnsym with running_std = 1) divides by 1."""
    x = _f64(keras_run["fresh/x"])
    ones, zeros = np.ones(3), np.zeros(3)
    _close("fresh eval against 1/sqrt(1 + eps)", keras_run["fresh/eval"], x / np.sqrt(1 + EPS), 1e-6)
    y = br.inference(x, ones, zeros, zeros, ones, EPS, axis=-1)
    assert np.max(np.abs(_f64(keras_run["fresh/eval"]) - y)) > 1e-4 * np.max(np.abs(y))


def test_finding_keras_computes_a_float64_layer_in_float32(keras_run):
    """A float64 layer with JAX's x64 enabled: y comes back float64, but a relative change of 1e-12 in x does not
    change it, and it is float32-representable; bnsym's float64 y changes."""
    y, perturbed = keras_run["float64/y"], keras_run["float64/y_perturbed"]
    assert y.dtype == np.float64
    assert np.array_equal(y, perturbed) and np.array_equal(y, y.astype(np.float32).astype(np.float64))
    x = keras_run["float64/x"]
    ones, zeros = np.ones(3), np.zeros(3)
    ours = br.forward(x, ones, zeros, zeros, ones, EPS, axis=-1)[0]
    ours_perturbed = br.forward(x * (1 + 1e-12), ones, zeros, zeros, ones, EPS, axis=-1)[0]
    assert not np.array_equal(ours, ours_perturbed)
    _close("float64 layer", y, ours, 1e-5)
