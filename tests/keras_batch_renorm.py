"""Runs Keras's ``BatchNormalization(renorm=True)`` on its JAX backend and saves what it computes, for
``tests/test_batch_renorm_vs_keras.py`` (which runs this file in a subprocess, so that importing Keras with
KERAS_BACKEND=jax affects no other test).

Usage: ``python tests/keras_batch_renorm.py OUT.npz``. Every case is one Keras layer, its state set from the inputs
below, and one or two training steps through ``layer.stateless_call`` (so the new state is returned, not assigned):
y, the gradients of <dy, y> by ``jax.vjp`` with respect to x, gamma and beta, the new non-trainable variables, and
the eval-mode output after the steps. The inputs are drawn here from a fixed seed and saved with the results, so
the test compares bnsym with Keras on exactly the values Keras saw (rounded to float32, as Keras computes).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # so that a float64 layer could compute in float64 (it does not)
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

EPS = 1e-3


def _layer(shape, **options):
    layer = keras.layers.BatchNormalization(axis=-1, epsilon=EPS, renorm=True, **options)
    layer.build(shape)
    return layer


def _set(layer, **values):
    by_name = {v.path.split("/")[-1]: v for v in layer.variables}
    for name, value in values.items():
        by_name[name].assign(np.asarray(value, np.float32))


def _step(layer, trainable, non_trainable, x, dy):
    """One training step: y, (dx, dgamma, dbeta) by jax.vjp of the stateless call, the new non-trainable state."""
    names = [v.path.split("/")[-1] for v in layer.non_trainable_variables]

    def call(x, gamma, beta):
        y, new = layer.stateless_call([gamma, beta], non_trainable, x, training=True)
        return y, new

    (y, new), pullback = jax.vjp(call, jnp.asarray(x), *trainable)
    zero_state = [jnp.zeros_like(v) for v in new]
    dx, dgamma, dbeta = pullback((jnp.asarray(dy, y.dtype), zero_state))
    return y, (dx, dgamma, dbeta), dict(zip(names, new)), new


def _eval(layer, trainable, non_trainable, x):
    y, _ = layer.stateless_call(trainable, non_trainable, jnp.asarray(x), training=False)
    return y


def run_case(out: dict, name: str, shape, x_scale, x_shift, steps: int = 2, seed: int = 0, state_override=None,
             **options):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    gamma = rng.normal(1, 0.3, channels).astype(np.float32)
    beta = rng.normal(0, 0.3, channels).astype(np.float32)
    running_mean = rng.normal(0, 0.5, channels).astype(np.float32)
    running_std = rng.uniform(0.7, 1.4, channels).astype(np.float32)
    state = dict(gamma=gamma, beta=beta, moving_mean=running_mean, moving_stddev=running_std,
                 moving_variance=np.maximum(running_std.astype(np.float64) ** 2 - EPS, 0).astype(np.float32),
                 renorm_mean=running_mean, renorm_stddev=running_std)
    state.update(state_override or {})
    layer = _layer(shape, **options)
    _set(layer, **state)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    for key, value in state.items():
        out[f"{name}/state/{key}"] = np.asarray(value)
    for step in range(steps):
        x = (rng.normal(size=shape) * x_scale + x_shift).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        y, (dx, dgamma, dbeta), new_state, non_trainable = _step(layer, trainable, non_trainable, x, dy)
        for key, value in {"x": x, "dy": dy, "y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}.items():
            out[f"{name}/{step}/{key}"] = np.asarray(value)
        for key, value in new_state.items():
            out[f"{name}/{step}/new/{key}"] = np.asarray(value)
        x_eval = (rng.normal(size=shape) * x_scale + x_shift).astype(np.float32)
        out[f"{name}/{step}/x_eval"] = x_eval
        out[f"{name}/{step}/eval"] = np.asarray(_eval(layer, trainable, non_trainable, x_eval))


def main(path: str) -> None:
    out: dict = {}
    paper = {"rmin": 1 / 3, "rmax": 3.0, "dmax": 5.0}
    # Where Keras is Ioffe's algorithm: momentum == renorm_momentum, rmin = 1/rmax, the clipping given.
    run_case(out, "paper_clipped", (16, 4), np.array([0.1, 1.0, 6.0, 1.0]), np.array([0.0, 0.3, -1.0, 9.0]),
             momentum=0.9, renorm_momentum=0.9, renorm_clipping=paper, seed=1)
    run_case(out, "paper_unclipped", (6, 3, 2, 5), 1.0, 0.1, momentum=0.8, renorm_momentum=0.8,
             renorm_clipping={"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}, seed=2)
    # The deviations (docs/batch-renorm.md).
    run_case(out, "default_clipping", (16, 4), np.array([0.1, 1.0, 6.0, 1.0]), np.array([0.0, 0.3, -1.0, 9.0]),
             steps=1, momentum=0.9, renorm_momentum=0.9, seed=1)
    run_case(out, "no_rmin", (16, 4), np.array([0.1, 1.0, 6.0, 1.0]), np.array([0.0, 0.3, -1.0, 9.0]),
             steps=1, momentum=0.9, renorm_momentum=0.9, renorm_clipping={"rmax": 3.0, "dmax": 5.0}, seed=1)
    run_case(out, "two_momenta", (16, 3), 1.5, 0.5, steps=2, momentum=0.9, renorm_momentum=0.5,
             renorm_clipping=paper, seed=3)
    run_case(out, "stddev_floor", (16, 3), 0.5, 0.0, steps=1, momentum=0.9, renorm_momentum=0.9,
             renorm_clipping={"rmin": 1e-6, "rmax": 1e6, "dmax": 1e6}, seed=4,
             state_override={"renorm_stddev": np.array([1e-3, 0.02, 0.5], np.float32)})
    fresh = _layer((8, 3))
    x = np.random.default_rng(5).normal(size=(8, 3)).astype(np.float32)
    out["fresh/x"] = x
    out["fresh/eval"] = np.asarray(_eval(fresh, [v.value for v in fresh.trainable_variables],
                                         [v.value for v in fresh.non_trainable_variables], x))
    # A float64 layer, float64 input: Keras computes in float32 all the same (a relative change of 1e-12 in x is
    # invisible in y).
    wide = keras.layers.BatchNormalization(axis=-1, epsilon=EPS, renorm=True, dtype="float64",
                                           renorm_clipping=paper)
    wide.build((8, 3))
    x64 = np.random.default_rng(6).normal(size=(8, 3)) * 3 + 1
    call = lambda x: wide.stateless_call([v.value for v in wide.trainable_variables],  # noqa: E731
                                         [v.value for v in wide.non_trainable_variables], jnp.asarray(x),
                                         training=True)[0]
    out["float64/x"] = x64
    out["float64/y"] = np.asarray(call(x64))
    out["float64/y_perturbed"] = np.asarray(call(x64 * (1 + 1e-12)))
    out["versions"] = np.array([keras.__version__, jax.__version__, keras.backend.backend()])
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
