"""Properties of the rest of the layer: eval mode, running statistics, and the double backward.

They join :data:`bnsym.testing.properties.REGISTRY` when this module is imported (``bnsym.testing`` does), and the
options of a check select them (:mod:`bnsym.testing.options`): ``--mode eval`` the eval-mode ones,
``--convention`` the running-statistics ones, ``--order 2`` the double-backward ones of the mode.

Notation. Eval mode normalises with running statistics r_mean, r_var: s_r = 1/sqrt(r_var + eps) and
x_hat = (x - r_mean) s_r. The running statistics of an example are drawn from ``example.rng`` around the batch's
own (so a saved example replays them) and rounded to the dtype under test. References are bnsym's public
functions in float64; tolerances come from the derived closed forms by :mod:`bnsym.testing.magnitude`, with the
errors of x_hat and of s that :mod:`bnsym.testing.tolerance` derives (training) or that one subtraction and one
reciprocal square root make (eval: a few u times s (|x| + |r_mean|), which also covers the fused form
x * (gamma s) + (beta - r_mean gamma s) that PyTorch's CPU kernel uses).

Running statistics: the expected update is :func:`bnsym.update_running_stats` in the chosen convention; its bound
propagates the batch statistics' errors (:attr:`Bound.mean_error`, :attr:`Bound.var_error`) through
(1 - f) r + f b, plus a few roundings of the update itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import bnsym
from bnsym.conventions import CONVENTIONS
from bnsym.symbolic import batch_norm as bn
from bnsym.symbolic.reduction import is_field_expr
from bnsym.testing import reference
from bnsym.testing.magnitude import compiled
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import _STEP, PropertyFailure, Worst, _axes, compare, register
from bnsym.testing.protocol import check_layout, output_array, output_arrays
from bnsym.testing.strategies import Example
from bnsym.testing.tolerance import SAFETY, Bound, growth, unit_roundoff

__all__ = ["running_statistics"]

def _eval_mode(options: CheckOptions) -> bool:
    return options.mode == "eval"


def _eval_or_convention(options: CheckOptions) -> bool:
    return options.mode == "eval" or options.convention is not None


def _second_order(options: CheckOptions) -> bool:
    return options.order == 2 and options.mode == "train"


def _eval_second_order(options: CheckOptions) -> bool:
    return options.order == 2 and options.mode == "eval"


def _has_convention(options: CheckOptions) -> bool:
    return options.convention is not None


def _channel(values, ndim: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def running_statistics(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """Running mean and variance for ``example``, shape (C,), in its dtype: near the batch's own statistics (a
    trained layer's), drawn from ``example.rng`` so that a saved example replays them."""
    ref = reference.forward(example)
    rng = example.rng(20)
    sigma = np.sqrt(ref.var).reshape(-1)
    mean = ref.mean.reshape(-1) + rng.normal(0, 1, example.channels) * np.maximum(sigma, 1e-3)
    var = ref.var.reshape(-1) * rng.uniform(0.25, 4, example.channels) + example.eps * rng.uniform(0, 1)
    limit = float(np.finfo(example.dtype).max) / 4
    return (np.clip(mean, -limit, limit).astype(example.dtype), np.clip(var, 0, limit).astype(example.dtype))


# ----- calling the optional methods -----

def _call(impl, method: str, *args):
    try:
        return getattr(impl, method)(*args)
    except Exception as error:
        raise PropertyFailure(f"{method} raised {type(error).__name__}: {error}") from None


def _triple(result, method: str, names: tuple[str, str, str]):
    return output_arrays(result, method, names)


def _inputs(example: Example, dtype, **replaced):
    """Copies of x, gamma, beta (and dy) in ``dtype``, with some replaced."""
    return {name: np.array(replaced.get(name, getattr(example, name)), dtype=dtype)
            for name in ("x", "gamma", "beta", "dy")}


def _eval_forward(impl, example: Example, running, dtype=None, **replaced) -> np.ndarray:
    dtype = np.dtype(dtype or example.dtype)
    a = _inputs(example, dtype, **replaced)
    rm, rv = (np.array(r, dtype=dtype) for r in running)
    y = output_array(_call(impl, "eval_forward", a["x"], a["gamma"], a["beta"], float(example.eps), rm, rv),
                     "y from eval_forward", method="eval_forward", expects="y alone, an array shaped like x")
    check_layout(y, a["x"].shape, "y from eval_forward", "the shape of x")
    return y


def _eval_backward(impl, example: Example, running, dtype=None, **replaced):
    dtype = np.dtype(dtype or example.dtype)
    a = _inputs(example, dtype, **replaced)
    rm, rv = (np.array(r, dtype=dtype) for r in running)
    result = _call(impl, "eval_backward", a["dy"], a["x"], a["gamma"], a["beta"], float(example.eps), rm, rv)
    return _triple(result, "eval_backward", ("dx", "dgamma", "dbeta"))


def _double_backward(impl, example: Example, cotangents, running=None, dtype=None, **replaced):
    dtype = np.dtype(dtype or example.dtype)
    a = _inputs(example, dtype, **replaced)
    gg = [np.array(c, dtype=dtype) for c in cotangents]
    args = (*gg, a["dy"], a["x"], a["gamma"], a["beta"], float(example.eps))
    if running is None:
        result = _call(impl, "double_backward", *args)
        method = "double_backward"
    else:
        result = _call(impl, "eval_double_backward", *args, *(np.array(r, dtype=dtype) for r in running))
        method = "eval_double_backward"
    return _triple(result, method, ("gx", "ggamma", "gdy"))


# ----- references and bounds -----

@dataclass(frozen=True)
class _Atoms:
    """Values of the closed forms' atoms (float64, broadcastable) and bounds on their errors in the dtype."""

    values: dict
    errors: dict
    bound: Bound

    def tolerance(self, expr, *, extra: dict | None = None) -> np.ndarray:
        values = dict(self.values, **(extra or {}))
        needed = {s.name: values[s.name] for s in compiled(expr).atoms}
        reference_ = self.bound.reference
        raw = compiled(expr).bound(needed, self.errors, u=self.bound.u, k=self.bound.k, count=reference_.count,
                                   ndim=reference_.y.ndim)
        return SAFETY * raw + self.bound.tiny


def _training_atoms(example: Example) -> _Atoms:
    ref = reference.forward(example)
    bound = Bound.of(ref, example.dtype, example.gamma, example.beta)
    ndim = example.x.ndim
    values = {"x_hat": ref.x_hat, "invstd": ref.invstd, "mean": ref.mean, "gamma": _channel(example.gamma, ndim),
              "dy": example.dy.astype(np.float64)}
    errors = {"x_hat": bound.delta * (1 + np.abs(ref.x_hat)), "invstd": bound.delta * ref.invstd}
    return _Atoms(values, errors, bound)


def _eval_atoms(example: Example, running) -> _Atoms:
    ref = reference.forward(example)
    bound = Bound.of(ref, example.dtype, example.gamma, example.beta)
    ndim = example.x.ndim
    x = example.x.astype(np.float64)
    rm, rv = (_channel(r, ndim) for r in running)
    s = 1 / np.sqrt(rv + example.eps)
    x_hat = (x - rm) * s
    u = bound.u
    values = {"x_hat": x_hat, "invstd": s, "gamma": _channel(example.gamma, ndim), "dy": example.dy.astype(np.float64)}
    errors = {"x_hat": 4 * u * (s * (np.abs(x) + np.abs(rm)) + np.abs(x_hat)), "invstd": 4 * u * s}
    return _Atoms(values, errors, bound)


def _closed(derivation) -> list:
    program, closed = derivation()
    return [closed[name] for name in program.outputs]


def _tolerances(atoms: _Atoms, derivation, shape, extra=None) -> list[np.ndarray]:
    """Bounds on each output of a derivation: shaped like x for a per-element output, (C,) for a per-channel one."""
    return [np.broadcast_to(atoms.tolerance(e, extra=extra), shape) if is_field_expr(e)
            else np.reshape(atoms.tolerance(e, extra=extra), -1) for e in _closed(derivation)]


def _second_dy(example: Example, salt: int) -> np.ndarray:
    rng = example.rng(salt)
    return (10.0 ** rng.uniform(-1, 1) * rng.standard_normal(example.x.shape)).astype(example.dtype)


def _cotangents(example: Example, salt: int):
    """Random ggx (like x), gggamma and ggbeta (shape (C,)) in the dtype: never ones, never zero."""
    rng = example.rng(salt)
    return (rng.standard_normal(example.x.shape).astype(example.dtype),
            rng.standard_normal(example.channels).astype(example.dtype),
            rng.standard_normal(example.channels).astype(example.dtype))


# ----- eval mode -----

@register("eval_shapes_and_dtypes", "eval", needs=("eval_forward",), when=_eval_mode, selected_by="--mode eval")
def _eval_shapes_and_dtypes(impl, example):
    """eval_forward returns y with the shape and dtype of x."""
    y = _eval_forward(impl, example, running_statistics(example))
    if y.shape != example.x.shape or y.dtype != example.dtype:
        raise PropertyFailure(f"eval y has shape {y.shape} and dtype {y.dtype}, expected shape {example.x.shape} "
                              f"and dtype {example.dtype}")


@register("eval_forward_reference", "eval", needs=("eval_forward",), when=_eval_mode, selected_by="--mode eval")
def _eval_forward_reference(impl, example):
    """The eval-mode y agrees with bnsym's float64 batch_norm_inference on the running statistics."""
    running = running_statistics(example)
    atoms = _eval_atoms(example, running)
    expected = bnsym.batch_norm_inference(*(a.astype(np.float64) for a in (example.x, example.gamma, example.beta,
                                                                          *running)), eps=example.eps)
    program = bn.inference_forward()
    s = bn.SYMBOLS
    tolerance = atoms.tolerance(program[s.y], extra={"beta": _channel(example.beta, example.x.ndim)})
    compare("eval y", _eval_forward(impl, example, running), expected, tolerance)


@register("eval_backward_reference", "eval", needs=("eval_backward",), when=_eval_mode, selected_by="--mode eval")
def _eval_backward_reference(impl, example):
    """Eval-mode dx, dgamma, dbeta agree with bnsym's float64 batch_norm_inference_backward."""
    running = running_statistics(example)
    atoms = _eval_atoms(example, running)
    expected = bnsym.batch_norm_inference_backward(
        *(a.astype(np.float64) for a in (example.dy, example.x, example.gamma, *running)), eps=example.eps)
    actual = _eval_backward(impl, example, running)
    tolerances = _tolerances(atoms, bn.inference_backward, example.x.shape)
    for name, a, e, t in zip(("dx", "dgamma", "dbeta"), actual, expected, tolerances):
        compare(f"eval {name}", a, e, t)


def _pair(gradients, direction) -> float:
    return math.fsum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(gradients, direction))


def _central(along):
    """Central differences at h and 2h: (estimate, truncation bound |D(2h) - D(h)|)."""
    d = {h: (along(h) - along(-h)) / (2 * h) for h in (_STEP, 2 * _STEP)}
    return d[_STEP], abs(d[2 * _STEP] - d[_STEP])


@register("eval_backward_finite_differences", "eval", needs=("eval_forward", "eval_backward"), when=_eval_mode,
          selected_by="--mode eval", requires=("float64_arithmetic",))
def _eval_backward_finite_differences(impl, example):
    """Eval-mode backward equals central differences of eval_forward along a random direction (float64)."""
    ex = example.replace(**{n: getattr(example, n).astype(np.float64) for n in ("x", "gamma", "beta", "dy")})
    running = tuple(r.astype(np.float64) for r in running_statistics(example))
    rng = example.rng(21)
    scale = _channel(np.sqrt(running[1] + ex.eps), ex.x.ndim)
    ux = rng.standard_normal(ex.x.shape) * scale
    ug, ub = rng.standard_normal(ex.channels), rng.standard_normal(ex.channels)
    atoms = _eval_atoms(ex, running)
    y_tol = atoms.tolerance(bn.inference_forward()[bn.SYMBOLS.y], extra={"beta": _channel(ex.beta, ex.x.ndim)})

    def along(h):
        y = _eval_forward(impl, ex, running, x=ex.x + h * ux, gamma=ex.gamma + h * ug, beta=ex.beta + h * ub)
        return math.fsum((ex.dy * y.astype(np.float64)).ravel())

    estimate, truncation = _central(along)
    gradients = _eval_backward(impl, ex, running)
    tolerances = _tolerances(atoms, bn.inference_backward, ex.x.shape)
    error = SAFETY * (truncation + float(np.sum(np.abs(ex.dy) * y_tol)) / _STEP)
    error += sum(float(np.sum(t * np.abs(d))) for t, d in zip(tolerances, (ux, ug, ub)))
    compare("<eval_backward(dy), u> against central differences of eval_forward along u",
            _pair(gradients, (ux, ug, ub)), estimate, error,
            labels=("central differences of eval_forward give", "its eval_backward gives"))


@register("eval_leaves_running_stats_unchanged", "running statistics", needs=("eval_forward",),
          when=_eval_or_convention, selected_by="--mode eval or --convention")
def _eval_leaves_running_stats_unchanged(impl, example):
    """An eval forward leaves running_mean and running_var bit-identical."""
    running = running_statistics(example)
    buffers = [r.copy() for r in running]
    a = _inputs(example, example.dtype)
    _call(impl, "eval_forward", a["x"], a["gamma"], a["beta"], float(example.eps), *buffers)
    for name, before, after in zip(("running_mean", "running_var"), running, buffers):
        if not np.array_equal(before, after, equal_nan=True):
            index = (int(np.argwhere(before != after)[0][0]),)
            raise PropertyFailure(f"eval_forward changed {name}",
                                  Worst(name, index, float(before[index]), float(after[index]), 0.0))


@register("eval_sample_independence", "running statistics", needs=("eval_forward",), when=_eval_or_convention,
          selected_by="--mode eval or --convention")
def _eval_sample_independence(impl, example):
    """In eval mode the output for one sample does not depend on the rest of the batch."""
    running = running_statistics(example)
    rng = example.rng(22)
    others = example.x.astype(np.float64).copy()
    limit = float(np.finfo(example.dtype).max) / 8
    others[1:] = np.clip(others[1:] * rng.uniform(2, 4) + rng.normal(0, 10), -limit, limit)
    alone = _eval_forward(impl, example, running, x=example.x[:1])
    together = _eval_forward(impl, example, running, x=others.astype(example.dtype))
    if alone.shape != example.x[:1].shape or together.shape != example.x.shape:
        raise PropertyFailure(f"eval y has shapes {alone.shape} and {together.shape}, expected "
                              f"{example.x[:1].shape} and {example.x.shape}")
    atoms = _eval_atoms(example, running)
    tolerance = atoms.tolerance(bn.inference_forward()[bn.SYMBOLS.y],
                                extra={"beta": _channel(example.beta, example.x.ndim)})[:1]
    compare("eval y of sample 0, alone vs. with other samples", together[:1].astype(np.float64), alone, 2 * tolerance)


# ----- running statistics -----

def _convention_momentum(convention: str, example: Example, salt: int, full: bool = False):
    """(momentum, num_batches_tracked) to pass: random but away from 1/2 (where flipping a convention is
    invisible), or putting all weight on the batch when ``full``."""
    conv = CONVENTIONS[convention]
    rng = example.rng(salt)
    if conv.cumulative:
        return None, (0 if full else int(rng.integers(1, 6)))
    weight = 1.0 if full else float(rng.choice([0.1, 0.2, 0.3, 0.8]))
    momentum = weight if conv.momentum_weighs == "new" else 1 - weight
    if conv.debiased:  # the first batch gets all the weight whatever the momentum; a momentum of 1 divides by 0
        return (0.9 if full else momentum), (0 if full else int(rng.integers(0, 6)))
    return momentum, int(rng.integers(0, 6))


def _reads(convention, momentum) -> bool:
    """Whether an implementation of ``convention`` can take this momentum (None only for the cumulative one)."""
    conv = CONVENTIONS[convention]
    if conv.cumulative or momentum is None:
        return conv.cumulative
    return not (conv.debiased and momentum >= 1)


def _expected_update(convention, running, ref, momentum, num_batches_tracked):
    conv = CONVENTIONS[convention]
    return bnsym.update_running_stats(*(np.asarray(r, np.float64) for r in running), ref.mean.reshape(-1),
                                      ref.var.reshape(-1), ref.count,
                                      momentum=None if conv.cumulative else momentum, convention=convention,
                                      num_batches_tracked=num_batches_tracked + 1 if conv.uses_batch_count else None)


def _batch_weight(convention, momentum, num_batches_tracked) -> float:
    """f, the weight of the batch in (1 - f) r + f b: the update itself evaluated on r = 0, b = 1, so that the
    weight is the generated one and never typed here."""
    zero, one = np.zeros(1), np.ones(1)
    conv = CONVENTIONS[convention]
    new_mean, _ = bnsym.update_running_stats(zero, zero, one, zero, 2, convention=convention,
                                             momentum=None if conv.cumulative else momentum,
                                             num_batches_tracked=num_batches_tracked + 1)
    return float(new_mean[0])


def _update_error(convention, running, bound: Bound, momentum, num_batches_tracked, previous=(0.0, 0.0)):
    """Bounds on the new running mean and variance: the batch statistics' errors through (1 - f) r + f b, the
    errors ``previous`` already in r, and a few roundings of the update (several more where f itself is computed
    from a power, as the debiased weight is)."""
    conv = CONVENTIONS[convention]
    ref = bound.reference
    weight = _batch_weight(convention, momentum, num_batches_tracked)
    correction = ref.count / (ref.count - 1) if conv.unbiased else 1.0
    r_mean, r_var = (np.abs(np.asarray(r, np.float64)) for r in running)
    mean, var = np.abs(ref.mean.reshape(-1)), ref.var.reshape(-1)
    u = bound.u * (4 + (2 * num_batches_tracked + 4 if conv.debiased else 0))
    mean_error = (weight * bound.mean_error.reshape(-1) + abs(1 - weight) * previous[0]
                  + u * (abs(1 - weight) * r_mean + weight * mean))
    var_error = (weight * correction * bound.var_error.reshape(-1) + abs(1 - weight) * previous[1]
                 + u * (abs(1 - weight) * r_var + weight * correction * var))
    return SAFETY * mean_error + bound.tiny, SAFETY * var_error + bound.tiny


class _Unrepresentable(Exception):
    """The expected running statistics overflow the dtype under test."""


def _train_step(impl, example: Example, x, running, momentum, num_batches_tracked):
    a = _inputs(example, example.dtype, x=x)
    buffers = [np.array(r, dtype=example.dtype) for r in running]
    result = _call(impl, "train_forward", a["x"], a["gamma"], a["beta"], float(example.eps), *buffers, momentum,
                   num_batches_tracked)
    y, new_mean, new_var = _triple(result, "train_forward", ("y", "new_running_mean", "new_running_var"))
    for name, array in (("new_running_mean", new_mean), ("new_running_var", new_var)):
        if array.shape != (example.channels,):
            raise PropertyFailure(f"train_forward returned {name} of shape {array.shape}, expected "
                                  f"({example.channels},)")
    return y, new_mean, new_var


def _within(actual, expected, tolerance) -> bool:
    actual = np.asarray(actual, np.float64)
    return actual.shape == np.shape(expected) and bool(np.all(np.abs(actual - expected) <= tolerance))


def _followed_convention(example, running, ref, bound, momentum, batches, actual, previous, tried: str) -> str:
    """What to say about running statistics that do not follow ``tried``: the presets that they do follow."""
    followed = []
    for name, conv in CONVENTIONS.items():
        if name == tried or conv.choices() == CONVENTIONS[tried].choices() or not _reads(name, momentum):
            continue
        expected = _expected_update(name, running, ref, momentum, batches)
        tolerance = _update_error(name, running, bound, momentum, batches, previous)
        if all(_within(a, e, t) for a, e, t in zip(actual, expected, tolerance)):
            followed.append(name)
    if not followed:
        return f"they follow none of bnsym's conventions ({', '.join(CONVENTIONS)})"
    conv = CONVENTIONS[followed[0]]
    return (f"these running statistics follow the {' (or '.join(followed)}{')' * (len(followed) - 1)} convention "
            f"({conv.describe()})")


def _check_step(impl, example, options, x, running, momentum, batches, what, previous=(0.0, 0.0)):
    ref = reference.forward(example, x=x)
    bound = Bound.of(ref, example.dtype, example.gamma, example.beta)
    expected = _expected_update(options.convention, running, ref, momentum, batches)
    if not all(np.all(np.abs(e) <= float(np.finfo(example.dtype).max)) for e in expected):
        raise _Unrepresentable  # the dtype cannot hold the statistics (float16, wide dynamic range): nothing to check
    tolerance = _update_error(options.convention, running, bound, momentum, batches, previous)
    _, *actual = _train_step(impl, example, x, running, momentum, batches)
    label = f"{what} ({options.convention} convention, momentum {momentum}, {batches} batches before)"
    try:
        compare(f"running_mean after {label}", actual[0], expected[0], tolerance[0])
        compare(f"running_var after {label}", actual[1], expected[1], tolerance[1])
    except PropertyFailure as failure:
        verdict = _followed_convention(example, running, ref, bound, momentum, batches, actual, previous,
                                       options.convention)
        raise PropertyFailure(failure.message, failure.worst, verdict) from None
    return tuple(actual), tolerance


def _needs_two_values(example: Example) -> bool:
    return example.count >= 2  # the unbiased variance of one value is undefined


@register("running_stats_one_step_from_zero", "running statistics", needs=("train_forward",),
          when=_has_convention, selected_by="--convention", takes_options=True)
def _running_stats_one_step(impl, example, options):
    """One training step from zero running statistics gives the convention's weight times the batch statistics."""
    if not _needs_two_values(example):
        return
    momentum, batches = _convention_momentum(options.convention, example, 23)
    zeros = np.zeros(example.channels, example.dtype)
    try:
        _check_step(impl, example, options, example.x, (zeros, zeros), momentum, batches, "one step from zero")
    except _Unrepresentable:
        return


@register("running_stats_full_momentum", "running statistics", needs=("train_forward",), when=_has_convention,
          selected_by="--convention", takes_options=True)
def _running_stats_full_momentum(impl, example, options):
    """With all the weight on the batch (torch momentum 1, keras/flax momentum 0, the first cumulative batch), the
    running variance is the batch variance with the convention's correction (Bessel's for torch)."""
    if not _needs_two_values(example):
        return
    momentum, batches = _convention_momentum(options.convention, example, 24, full=True)
    try:
        _check_step(impl, example, options, example.x, running_statistics(example), momentum, batches,
                    "a step with all weight on the batch")
    except _Unrepresentable:
        return


@register("running_stats_several_steps", "running statistics", needs=("train_forward",), when=_has_convention,
          selected_by="--convention", takes_options=True)
def _running_stats_several_steps(impl, example, options):
    """Three training steps on different batches, from PyTorch's initial statistics (mean 0, var 1), follow the
    convention after every step."""
    if not _needs_two_values(example):
        return
    momentum, batches = _convention_momentum(options.convention, example, 25)
    rng = example.rng(26)
    running = (np.zeros(example.channels, example.dtype), np.ones(example.channels, example.dtype))
    previous = (0.0, 0.0)
    x64 = example.x.astype(np.float64)
    limit = float(np.finfo(example.dtype).max) / 8
    for step in range(3):
        x = np.clip(x64 * rng.uniform(0.5, 2) + rng.normal(0, 2), -limit, limit).astype(example.dtype)
        try:
            running, previous = _check_step(impl, example, options, x, running, momentum, batches + step,
                                            f"step {step + 1} of 3", previous)
        except _Unrepresentable:
            return


@register("train_forward_batch_statistics", "running statistics", needs=("train_forward",), when=_has_convention,
          selected_by="--convention", takes_options=True)
def _train_forward_batch_statistics(impl, example, options):
    """The y of train_forward is the training forward: normalised with the batch's own statistics."""
    if not _needs_two_values(example):
        return
    momentum, batches = _convention_momentum(options.convention, example, 27)
    running = running_statistics(example)
    y, new_mean, new_var = _train_step(impl, example, example.x, running, momentum, batches)
    ref = reference.forward(example)
    try:
        compare("y from train_forward", y, ref.y, Bound.of(ref, example.dtype, example.gamma, example.beta).forward())
    except PropertyFailure as failure:
        raise PropertyFailure(failure.message, failure.worst, _what_train_forward_normalises_with(
            example, y, running, (new_mean, new_var))) from None


def _what_train_forward_normalises_with(example, y, running, updated) -> str:
    """Which statistics a wrong training y was normalised with, when it is one of the running ones."""
    beta = {"beta": _channel(example.beta, example.x.ndim)}
    for statistics, what in ((updated, "the updated running statistics it returns (as Equinox's BatchNorm does in "
                                       "its default 'ema' mode)"),
                             (running, "the running statistics it was given")):
        statistics = tuple(np.asarray(r, np.float64) for r in statistics)
        if not all(np.all(np.isfinite(r)) and r.shape == (example.channels,) for r in statistics) \
                or np.any(statistics[1] < 0):
            continue
        expected = bnsym.batch_norm_inference(*(a.astype(np.float64) for a in (example.x, example.gamma, example.beta)),
                                              *statistics, eps=example.eps)
        tolerance = _eval_atoms(example, statistics).tolerance(bn.inference_forward()[bn.SYMBOLS.y], extra=beta)
        if _within(y, expected, tolerance):
            return f"train_forward normalises with {what}, not with the batch's statistics"
    return ""


# ----- double backward -----

def _double_backward_reference(example: Example, cotangents, running=None):
    f64 = [np.asarray(c, np.float64) for c in cotangents]
    x, gamma, dy = (a.astype(np.float64) for a in (example.x, example.gamma, example.dy))
    if running is None:
        _, mean, invstd = bnsym.batch_norm_forward(x, gamma, example.beta.astype(np.float64), eps=example.eps)
        return bnsym.batch_norm_double_backward(*f64, dy, x, gamma, mean, invstd)
    rm, rv = (np.asarray(r, np.float64) for r in running)
    return bnsym.batch_norm_double_backward(*f64, dy, x, gamma, rm, 1 / np.sqrt(rv + example.eps), training=False)


def _double_backward_tolerances(example: Example, cotangents, running=None):
    """Bounds on gx (like x), ggamma (shape (C,)) and gdy (like x), from the derived closed forms."""
    atoms = _training_atoms(example) if running is None else _eval_atoms(example, running)
    ndim = example.x.ndim
    extra = {"ggx": np.asarray(cotangents[0], np.float64), "gggamma": _channel(cotangents[1], ndim),
             "ggbeta": _channel(cotangents[2], ndim)}
    derivation = bn.double_backward if running is None else bn.inference_double_backward
    return _tolerances(atoms, derivation, example.x.shape, extra)


def _check_double_backward_reference(impl, example, running):
    cotangents = _cotangents(example, 30)
    expected = _double_backward_reference(example, cotangents, running)
    tolerances = _double_backward_tolerances(example, cotangents, running)
    actual = _double_backward(impl, example, cotangents, running)
    for name, a, e, t in zip(("gx", "ggamma", "gdy"), actual, expected, tolerances):
        compare(name, a, e, t)


def _check_double_backward_fd(impl, example, running):
    """<gx, ux> + <ggamma, ug> + <gdy, udy> against central differences of the first-order backward."""
    ex = example.replace(**{n: getattr(example, n).astype(np.float64) for n in ("x", "gamma", "beta", "dy")})
    run64 = None if running is None else tuple(r.astype(np.float64) for r in running)
    cotangents = [np.asarray(c, np.float64) for c in _cotangents(example, 31)]
    rng = example.rng(32)
    ref = reference.forward(ex)
    scale = np.sqrt(ref.var + ex.eps) if running is None else _channel(np.sqrt(run64[1] + ex.eps), ex.x.ndim)
    ux, ug = rng.standard_normal(ex.x.shape) * scale, rng.standard_normal(ex.channels)
    udy = rng.standard_normal(ex.x.shape)
    bound = Bound.of(ref, np.float64, ex.gamma, ex.beta)

    def first(h):
        moved = dict(x=ex.x + h * ux, gamma=ex.gamma + h * ug, dy=ex.dy + h * udy)
        if running is None:
            a = _inputs(ex, np.float64, **moved)
            result = _call(impl, "backward", a["dy"], a["x"], a["gamma"], a["beta"], float(ex.eps))
            return _triple(result, "backward", ("dx", "dgamma", "dbeta"))
        return _eval_backward(impl, ex, run64, **moved)

    def along(h):
        return _pair(first(h), cotangents)

    estimate, truncation = _central(along)
    tol_first = (bound.backward(ex.dy) if running is None
                 else _tolerances(_eval_atoms(ex, run64), bn.inference_backward, ex.x.shape))
    rounding = sum(float(np.sum(np.abs(c) * np.asarray(t))) for c, t in zip(cotangents, tol_first)) / _STEP
    gradients = _double_backward(impl, ex, cotangents, run64)
    tolerances = _double_backward_tolerances(example, cotangents, running)
    error = SAFETY * (truncation + rounding)
    error += sum(float(np.sum(t * np.abs(d))) for t, d in zip(tolerances, (ux, ug, udy)))
    compare("<double_backward, (u_x, u_gamma, u_dy)> - central differences of backward",
            _pair(gradients, (ux, ug, udy)), estimate, error)


def _check_hessian_symmetry(impl, example, running):
    """gx is the Hessian of <dy, y> applied to ggx: <gx(ggx = u), v> = <gx(ggx = v), u> per channel."""
    u, v = _second_dy(example, 33), _second_dy(example, 34)
    zeros = np.zeros(example.channels, example.dtype)
    gx_u = _double_backward(impl, example, (u, zeros, zeros), running)[0]
    gx_v = _double_backward(impl, example, (v, zeros, zeros), running)[0]
    for gx in (gx_u, gx_v):
        compare("gx", gx, np.zeros(example.x.shape), np.inf)
    axes = _axes(example.x.ndim)
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    tol_u = _double_backward_tolerances(example, (u, zeros, zeros), running)[0]
    tol_v = _double_backward_tolerances(example, (v, zeros, zeros), running)[0]
    ref_u = _double_backward_reference(example, (u, zeros, zeros), running)[0]
    ref_v = _double_backward_reference(example, (v, zeros, zeros), running)[0]
    slack = SAFETY * growth(example.count) * unit_roundoff(np.float64) * (
        np.sum(np.abs(ref_u * v64), axis=axes) + np.sum(np.abs(ref_v * u64), axis=axes))
    compare("<gx(u), v> - <gx(v), u> per channel",
            np.sum(gx_u.astype(np.float64) * v64, axis=axes) - np.sum(gx_v.astype(np.float64) * u64, axis=axes),
            np.sum(ref_u * v64, axis=axes) - np.sum(ref_v * u64, axis=axes),
            np.sum(tol_u * np.abs(v64), axis=axes) + np.sum(tol_v * np.abs(u64), axis=axes) + slack)


@register("double_backward_reference", "second order", needs=("double_backward",), when=_second_order,
          selected_by="--order 2")
def _double_backward_reference_property(impl, example):
    """gx, ggamma, gdy agree with bnsym's generated double backward in float64."""
    _check_double_backward_reference(impl, example, None)


@register("double_backward_finite_differences", "second order", needs=("backward", "double_backward"),
          when=_second_order, selected_by="--order 2", requires=("float64_arithmetic",))
def _double_backward_fd_property(impl, example):
    """The double backward equals central differences of the implementation's own backward (float64)."""
    _check_double_backward_fd(impl, example, None)


@register("hessian_symmetry", "second order", needs=("double_backward",), when=_second_order,
          selected_by="--order 2")
def _hessian_symmetry_property(impl, example):
    """The per-channel Jacobian of dx with respect to x (the Hessian of <dy, y>) is symmetric."""
    _check_hessian_symmetry(impl, example, None)


@register("eval_double_backward_reference", "second order", needs=("eval_double_backward",),
          when=_eval_second_order, selected_by="--mode eval --order 2")
def _eval_double_backward_reference_property(impl, example):
    """Eval-mode gx, ggamma, gdy agree with bnsym's generated eval double backward in float64."""
    _check_double_backward_reference(impl, example, running_statistics(example))


@register("eval_double_backward_finite_differences", "second order", needs=("eval_backward", "eval_double_backward"),
          when=_eval_second_order, selected_by="--mode eval --order 2", requires=("float64_arithmetic",))
def _eval_double_backward_fd_property(impl, example):
    """The eval double backward equals central differences of the implementation's eval backward (float64)."""
    _check_double_backward_fd(impl, example, running_statistics(example))


@register("eval_hessian_symmetry", "second order", needs=("eval_double_backward",), when=_eval_second_order,
          selected_by="--mode eval --order 2")
def _eval_hessian_symmetry_property(impl, example):
    """In eval mode too, <gx(ggx = u), v> = <gx(ggx = v), u> per channel."""
    _check_hessian_symmetry(impl, example, running_statistics(example))
