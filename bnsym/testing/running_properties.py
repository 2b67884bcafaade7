"""Properties of a layer that keeps running statistics (``spec.running_statistics``: batch norm, batch
renormalisation): eval mode, the running-statistics update in a framework's convention, and the eval-mode double
backward.

They join :data:`bnsym.testing.properties.PROPERTIES` when this module is imported (``bnsym.testing`` does), and the
options of a check select them (:mod:`bnsym.testing.options`): ``--mode eval`` the eval-mode ones, ``--convention``
the running-statistics ones, ``--mode eval --order 2`` the eval double backward. The eval-mode properties apply to
every layer that keeps running statistics, whatever they are: they read its eval mode from its derivation
(``derivation.inference_forward``: the declared one, ``LayerSpec.inference``, or the training forward with the
averaged steps frozen to the running statistics), never from a list of layers. The running-statistics update
properties are written for a running mean and variance that the training forward only updates (batch norm's); a
layer whose training forward reads its running statistics (``spec.reads_running``) has
``running_stats_read_and_updated`` instead.

Notation. Eval mode normalises each group with the running statistics (``spec.running_names``, shaped like the
layer's statistics, ``layout.statistics_shape``: one value per channel for batch norm): x_hat = (x - r_mean) s_r,
with s_r the scale its eval mode computes from them (batch norm: 1/sqrt(r_var + eps); batch renormalisation:
1/r_std). The running statistics of an example are drawn from ``example.rng`` around the batch's own value of the
step each one averages (so a saved example replays them) and rounded to the dtype under test. References are
bnsym's public functions in float64 (:mod:`bnsym.testing.reference`); tolerances come from the derived eval-mode
closed forms (:class:`bnsym.testing.reference.EvalBound`).

Running statistics: the expected update is the layer's ``update_running_stats`` in the chosen convention; its bound
propagates the batch statistics' errors (:attr:`bnsym.testing.tolerance.Bound.mean_error`, ``var_error``, per
group) through (1 - f) r + f b, plus a few roundings of the update itself.
"""

from __future__ import annotations

import numpy as np

from bnsym.conventions import CONVENTIONS
from bnsym.spec import LayerSpec
from bnsym.symbolic.invariances import EVAL_IS_TRAINING
from bnsym.testing import reference
from bnsym.testing.failures import PropertyFailure, Worst
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import (
    FINITE_DIFFERENCE_LABELS,
    SAFETY_FD,
    STEP,
    arguments,
    call,
    call_backward,
    call_double_backward,
    call_forward,
    central,
    compare,
    cotangents,
    float64_example,
    pair,
    register,
    rests_on,
    second_dy,
    unrepresentable,
)
from bnsym.testing.protocol import output_arrays
from bnsym.testing.protocols import protocol
from bnsym.testing.reference import EvalBound, LayerBound
from bnsym.testing.strategies import Example
from bnsym.testing.tolerance import SAFETY, Bound

__all__ = ["running_statistics"]


def _has_eval_mode(layer: LayerSpec) -> bool:
    # Every layer that keeps running statistics has an eval mode: its declared one (LayerSpec.inference) or its
    # training forward with the averaged steps frozen to the running statistics. The eval properties read it from
    # the derivation, whatever the running statistics are (batch renormalisation's running_std too).
    return layer.running_statistics


def _updates_running_mean_and_var(layer: LayerSpec) -> bool:
    # The running-statistics properties below are written for a running mean and variance that the training forward
    # only updates (batch norm's); a layer whose training forward reads its running statistics (batch
    # renormalisation) has running_stats_read_and_updated instead.
    return (layer.running_statistics and not layer.reads_running
            and layer.running_names == ("running_mean", "running_var"))


def _eval_mode(options: CheckOptions) -> bool:
    return options.mode == "eval"


def _eval_or_convention(options: CheckOptions) -> bool:
    return options.mode == "eval" or options.convention is not None


def _eval_second_order(options: CheckOptions) -> bool:
    return options.order == 2 and options.mode == "eval"


def _has_convention(options: CheckOptions) -> bool:
    return options.convention is not None


def _register(name, group, needs, when, selected_by, **keywords):
    return register(name, group, needs, applies=_updates_running_mean_and_var, when=when, selected_by=selected_by,
                    **keywords)


def _eval_register(name, group, needs, when, selected_by, **keywords):
    return register(name, group, needs, applies=_has_eval_mode, when=when, selected_by=selected_by, **keywords)


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def running_statistics(example: Example) -> tuple[np.ndarray, ...]:
    """The running statistics for ``example`` (``spec.running_names``: batch norm's running mean and variance,
    batch renormalisation's running mean and stddev), shaped like its statistics, in its dtype: near the batch's
    own value of the step each one averages (``spec.running``; a trained layer's), drawn from ``example.rng`` so
    that a saved example replays them. The running mean moves by about a standard deviation; every other running
    statistic (a spread: never negative) is scaled by 1/4 to 4 and gets up to eps added."""
    ref = reference.forward(example)
    shape = ref.layout.statistics_shape
    rng = example.rng(20)
    steps = LayerBound(example, ref).values  # the training forward's steps on this batch, by name
    limit = float(np.finfo(example.dtype).max) / 4
    drawn = []
    for name, step in example.spec.running:
        batch = np.broadcast_to(steps[step], ref.layout.statistics_broadcast).reshape(shape)
        if name == "running_mean":
            sigma = np.sqrt(ref.var).reshape(shape)
            value = np.clip(batch + rng.normal(0, 1, shape) * np.maximum(sigma, 1e-3), -limit, limit)
        else:
            value = np.clip(batch * rng.uniform(0.25, 4, shape) + example.eps * rng.uniform(0, 1), 0, limit)
        drawn.append(value.astype(example.dtype))
    return tuple(drawn)


def _running(example: Example, running) -> dict:
    return dict(zip(example.spec.running_names, running))


def _eval_forward(impl, example: Example, running, **replaced) -> np.ndarray:
    return call_forward(impl, example, method="eval_forward", **_running(example, running), **replaced)


def _eval_backward(impl, example: Example, running, **replaced):
    return call_backward(impl, example, method="eval_backward", **_running(example, running), **replaced)


# ----- eval mode -----

@_eval_register("eval_shapes_and_dtypes", "eval", ("eval_forward",), _eval_mode, "--mode eval")
def _eval_shapes_and_dtypes(impl, example):
    """eval_forward returns y with the shape and dtype of x."""
    y = _eval_forward(impl, example, running_statistics(example))
    if y.shape != example.x.shape or y.dtype != example.dtype:
        raise PropertyFailure(f"eval y has shape {y.shape} and dtype {y.dtype}, expected shape {example.x.shape} "
                              f"and dtype {example.dtype}")


@_eval_register("eval_forward_reference", "eval", ("eval_forward",), _eval_mode, "--mode eval")
def _eval_forward_reference(impl, example):
    """The eval-mode y agrees with bnsym's float64 eval-mode forward (``inference``) on the running statistics."""
    running = running_statistics(example)
    compare("eval y", _eval_forward(impl, example, running), reference.eval_forward(example, running),
            EvalBound(example, running).forward())


@_eval_register("eval_backward_reference", "eval", ("eval_backward",), _eval_mode, "--mode eval")
def _eval_backward_reference(impl, example):
    """Eval-mode dx and parameter gradients agree with bnsym's float64 ``inference_backward``."""
    running = running_statistics(example)
    tolerances = EvalBound(example, running).backward(example.dy)
    for name, a, e, t in zip(("dx", "dgamma", "dbeta"), _eval_backward(impl, example, running),
                             reference.eval_backward(example, running), tolerances):
        compare(f"eval {name}", a, e, t)


def _directions(example: Example, running, salt: int):
    """A random direction of (x, parameters): x's scaled per group by 1/s_r (eval mode's scale: sqrt(r_var + eps) for
    batch norm), so that a step h moves x_hat by about h."""
    layout = example.layout
    rng = example.rng(salt)
    scale = 1 / reference.eval_scale(example, running).reshape(layout.statistics_broadcast)
    ux = (rng.standard_normal(layout.grouped) * scale).reshape(layout.shape)
    return [ux] + [rng.standard_normal(example.gamma.shape) for _ in example.spec.parameters]


@_eval_register("eval_backward_finite_differences", "eval", ("eval_forward", "eval_backward"), _eval_mode,
           "--mode eval", requires=("float64_arithmetic",))
def _eval_backward_finite_differences(impl, example):
    """Eval-mode backward equals central differences of eval_forward along a random direction (float64)."""
    ex = float64_example(example)
    running = tuple(_f64(r) for r in running_statistics(example))
    directions = _directions(ex, running, 21)
    names = ex.spec.parameters
    bound = EvalBound(ex, running)

    def along(h):
        moved = {"x": ex.x + h * directions[0], **{n: getattr(ex, n) + h * d for n, d in zip(names, directions[1:])}}
        return float(np.sum(ex.dy * _f64(_eval_forward(impl, ex, running, **moved))))

    estimate, truncation = central(along)
    gradients = _eval_backward(impl, ex, running)
    error = SAFETY * (truncation + float(np.sum(np.abs(ex.dy) * bound.forward())) / STEP)
    error += sum(float(np.sum(t * np.abs(d))) for t, d in zip(bound.backward(ex.dy), directions))
    compare("<eval_backward(dy), u> against central differences of eval_forward along u",
            pair(gradients, directions), estimate, error,
            labels=("central differences of eval_forward give", "its eval_backward gives"))


@_eval_register("eval_leaves_running_stats_unchanged", "running statistics", ("eval_forward",), _eval_or_convention,
           "--mode eval or --convention")
def _eval_leaves_running_stats_unchanged(impl, example):
    """An eval forward leaves the running statistics (running_mean and running_var, or the layer's own)
    bit-identical."""
    running = running_statistics(example)
    buffers = [r.copy() for r in running]
    values = arguments(example, "eval_forward", example.dtype, _running(example, running))
    names = protocol(example.layer).signatures["eval_forward"]
    for name, buffer in zip(example.spec.running_names, buffers):  # the buffers themselves, not copies
        values[names.index(name)] = buffer
    try:
        impl.eval_forward(*values)
    except Exception as error:
        raise PropertyFailure(f"eval_forward raised {type(error).__name__}: {error}") from None
    for name, before, after in zip(example.spec.running_names, running, buffers):
        if not np.array_equal(before, after, equal_nan=True):
            index = tuple(int(i) for i in np.argwhere(before != after)[0])
            raise PropertyFailure(f"eval_forward changed {name}",
                                  Worst(name, index, float(before[index]), float(after[index]), 0.0))


@_eval_register("eval_sample_independence", "running statistics", ("eval_forward",), _eval_or_convention,
           "--mode eval or --convention")
def _eval_sample_independence(impl, example):
    """In eval mode the output for one sample does not depend on the rest of the batch."""
    running = running_statistics(example)
    rng = example.rng(22)
    others = _f64(example.x).copy()
    limit = float(np.finfo(example.dtype).max) / 8
    others[1:] = np.clip(others[1:] * rng.uniform(2, 4) + rng.normal(0, 10), -limit, limit)
    alone = _eval_forward(impl, example, running, x=example.x[:1])
    together = _eval_forward(impl, example, running, x=others.astype(example.dtype))
    tolerance = EvalBound(example, running).forward()[:1]
    compare("eval y of sample 0, alone vs. with other samples", _f64(together[:1]), alone, 2 * tolerance)


def _own_statistics(example: Example, ref) -> tuple[np.ndarray, ...]:
    """The batch's own value of each step its running statistics average (``spec.running``: the mean and biased
    variance for batch norm; batch renormalisation's mean and sigma = sqrt(var + eps)), statistics-shaped, rounded
    to the dtype under test."""
    steps = LayerBound(example, ref).values
    shape = ref.layout.statistics_shape
    return tuple(np.broadcast_to(steps[step], ref.layout.statistics_broadcast).reshape(shape).astype(example.dtype)
                 for _, step in example.spec.running)


@register("eval_is_training_at_batch_statistics", "eval", ("forward", "eval_forward"),
          applies=rests_on(EVAL_IS_TRAINING), when=_eval_mode, selected_by="--mode eval")
def _eval_is_training_at_batch_statistics(impl, example):
    """Eval mode given the batch's own statistics as its running statistics (the batch's value of each step they
    average) is the training forward on that batch: the implementation's eval y there equals its training y (whose
    forward reads those same running statistics, where it reads them: batch renormalisation's r = 1, d = 0).

    Applies where the layer's declaration proves the identity (``bnsym derive`` records it). The tolerance is both
    passes' error bounds plus the float64 references' own difference, which rounding the statistics to the dtype
    under test makes (zero in float64 up to rounding)."""
    ref = reference.forward(example)
    own = _own_statistics(example, ref)
    if not all(np.all(np.isfinite(r)) for r in own):
        return  # the dtype cannot hold the batch's statistics (float16, wide dynamic range): nothing to compare
    layer = example.spec
    read = dict(zip(layer.running_names, own)) if layer.reads_running else {}
    training = example.replace(constants=tuple((name, read.get(name, value)) for name, value in example.constants))
    ref_training = reference.forward(training)
    expected_eval = reference.eval_forward(example, own)
    tolerance = (EvalBound(example, own, ref=ref).forward() + LayerBound(training, ref_training).forward()
                 + np.abs(expected_eval - ref_training.y))
    compare("eval y on the batch's own statistics against the training y", _eval_forward(impl, example, own),
            _f64(call_forward(impl, training)), tolerance, labels=("its training forward gives", "its eval gives"))


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


def _expected_update(example, convention, running, ref, momentum, num_batches_tracked):
    conv = CONVENTIONS[convention]
    return reference.update_running_stats(
        example, running, ref, momentum=None if conv.cumulative else momentum, convention=convention,
        num_batches_tracked=num_batches_tracked + 1 if conv.uses_batch_count else None)


def _batch_weight(example, convention, momentum, num_batches_tracked) -> float:
    """f, the weight of the batch in (1 - f) r + f b: the update itself evaluated on r = 0, b = 1, so that the
    weight is the generated one and never typed here."""
    zero, one = np.zeros(1), np.ones(1)
    conv = CONVENTIONS[convention]
    new_mean, _ = reference.public_module(example.layer).update_running_stats(
        zero, zero, one, zero, 2, convention=convention, momentum=None if conv.cumulative else momentum,
        num_batches_tracked=num_batches_tracked + 1)
    return float(new_mean[0])


def _update_error(example, convention, running, ref, momentum, num_batches_tracked, previous=(0.0, 0.0)):
    """Bounds on the new running mean and variance: the batch statistics' errors through (1 - f) r + f b, the
    errors ``previous`` already in r, and a few roundings of the update (several more where f itself is computed
    from a power, as the debiased weight is)."""
    conv = CONVENTIONS[convention]
    bound = Bound(ref, np.dtype(example.dtype), None, None)  # the per-group model of the mean and the variance
    shape = ref.layout.statistics_shape
    weight = _batch_weight(example, convention, momentum, num_batches_tracked)
    correction = ref.count / (ref.count - 1) if conv.unbiased else 1.0
    r_mean, r_var = (np.abs(_f64(r)) for r in running)
    mean, var = np.abs(ref.mean.reshape(shape)), ref.var.reshape(shape)
    u = bound.u * (4 + (2 * num_batches_tracked + 4 if conv.debiased else 0))
    mean_error = (weight * bound.mean_error.reshape(shape) + abs(1 - weight) * previous[0]
                  + u * (abs(1 - weight) * r_mean + weight * mean))
    var_error = (weight * correction * bound.var_error.reshape(shape) + abs(1 - weight) * previous[1]
                 + u * (abs(1 - weight) * r_var + weight * correction * var))
    return SAFETY * mean_error + bound.tiny, SAFETY * var_error + bound.tiny


class _Unrepresentable(Exception):
    """The expected running statistics overflow the dtype under test."""


def _train_step(impl, example: Example, x, running, momentum, num_batches_tracked):
    result = call(impl, example, "train_forward", x=x, momentum=momentum, num_batches_tracked=num_batches_tracked,
                  **_running(example, running))
    y, new_mean, new_var = output_arrays(result, "train_forward", ("y", "new_running_mean", "new_running_var"))
    shape = example.layout.statistics_shape
    for name, array in (("new_running_mean", new_mean), ("new_running_var", new_var)):
        if array.shape != shape:
            raise PropertyFailure(f"train_forward returned {name} of shape {array.shape}, expected {shape}")
    return y, new_mean, new_var


def _within(actual, expected, tolerance) -> bool:
    actual = _f64(actual)
    return actual.shape == np.shape(expected) and bool(np.all(np.abs(actual - expected) <= tolerance))


def _followed_convention(example, running, ref, momentum, batches, actual, previous, tried: str) -> str:
    """What to say about running statistics that do not follow ``tried``: the presets that they do follow."""
    followed = []
    for name, conv in CONVENTIONS.items():
        if name == tried or conv.choices() == CONVENTIONS[tried].choices() or not _reads(name, momentum):
            continue
        expected = _expected_update(example, name, running, ref, momentum, batches)
        tolerance = _update_error(example, name, running, ref, momentum, batches, previous)
        if all(_within(a, e, t) for a, e, t in zip(actual, expected, tolerance)):
            followed.append(name)
    if not followed:
        return f"they follow none of bnsym's conventions ({', '.join(CONVENTIONS)})"
    conv = CONVENTIONS[followed[0]]
    return (f"these running statistics follow the {' (or '.join(followed)}{')' * (len(followed) - 1)} convention "
            f"({conv.describe()})")


def _check_step(impl, example, options, x, running, momentum, batches, what, previous=(0.0, 0.0)):
    ref = reference.forward(example, x=x)
    expected = _expected_update(example, options.convention, running, ref, momentum, batches)
    if not all(np.all(np.abs(e) <= float(np.finfo(example.dtype).max)) for e in expected):
        raise _Unrepresentable  # the dtype cannot hold the statistics (float16, wide dynamic range): nothing to check
    tolerance = _update_error(example, options.convention, running, ref, momentum, batches, previous)
    _, *actual = _train_step(impl, example, x, running, momentum, batches)
    label = f"{what} ({options.convention} convention, momentum {momentum}, {batches} batches before)"
    try:
        compare(f"running_mean after {label}", actual[0], expected[0], tolerance[0])
        compare(f"running_var after {label}", actual[1], expected[1], tolerance[1])
    except PropertyFailure as failure:
        verdict = _followed_convention(example, running, ref, momentum, batches, actual, previous,
                                       options.convention)
        raise PropertyFailure(failure.message, failure.worst, verdict) from None
    return tuple(actual), tolerance


def _needs_two_values(example: Example) -> bool:
    return example.count >= 2  # the unbiased variance of one value is undefined


def _zeros_and(example: Example, fill: float) -> tuple[np.ndarray, np.ndarray]:
    shape = example.layout.statistics_shape
    return np.zeros(shape, example.dtype), np.full(shape, fill, example.dtype)


@_register("running_stats_one_step_from_zero", "running statistics", ("train_forward",), _has_convention,
           "--convention", takes_options=True)
def _running_stats_one_step(impl, example, options):
    """One training step from zero running statistics gives the convention's weight times the batch statistics."""
    if not _needs_two_values(example):
        return
    momentum, batches = _convention_momentum(options.convention, example, 23)
    try:
        _check_step(impl, example, options, example.x, _zeros_and(example, 0.0), momentum, batches,
                    "one step from zero")
    except _Unrepresentable:
        return


@_register("running_stats_full_momentum", "running statistics", ("train_forward",), _has_convention,
           "--convention", takes_options=True)
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


@_register("running_stats_several_steps", "running statistics", ("train_forward",), _has_convention,
           "--convention", takes_options=True)
def _running_stats_several_steps(impl, example, options):
    """Three training steps on different batches, from PyTorch's initial statistics (mean 0, var 1), follow the
    convention after every step."""
    if not _needs_two_values(example):
        return
    momentum, batches = _convention_momentum(options.convention, example, 25)
    rng = example.rng(26)
    running = _zeros_and(example, 1.0)
    previous = (0.0, 0.0)
    x64 = _f64(example.x)
    limit = float(np.finfo(example.dtype).max) / 8
    for step in range(3):
        x = np.clip(x64 * rng.uniform(0.5, 2) + rng.normal(0, 2), -limit, limit).astype(example.dtype)
        try:
            running, previous = _check_step(impl, example, options, x, running, momentum, batches + step,
                                            f"step {step + 1} of 3", previous)
        except _Unrepresentable:
            return


@_register("train_forward_batch_statistics", "running statistics", ("train_forward",), _has_convention,
           "--convention", takes_options=True)
def _train_forward_batch_statistics(impl, example, options):
    """The y of train_forward is the training forward: normalised with the batch's own statistics."""
    if not _needs_two_values(example):
        return
    momentum, batches = _convention_momentum(options.convention, example, 27)
    running = running_statistics(example)
    y, new_mean, new_var = _train_step(impl, example, example.x, running, momentum, batches)
    ref = reference.forward(example)
    try:
        compare("y from train_forward", y, ref.y, reference.LayerBound(example, ref).forward())
    except PropertyFailure as failure:
        raise PropertyFailure(failure.message, failure.worst, _what_train_forward_normalises_with(
            example, y, running, (new_mean, new_var))) from None


def _what_train_forward_normalises_with(example, y, running, updated) -> str:
    """Which statistics a wrong training y was normalised with, when it is one of the running ones."""
    shape = example.layout.statistics_shape
    for statistics, what in ((updated, "the updated running statistics it returns (as Equinox's BatchNorm does in "
                                       "its default 'ema' mode)"),
                             (running, "the running statistics it was given")):
        statistics = tuple(_f64(r) for r in statistics)
        if not all(np.all(np.isfinite(r)) and r.shape == shape for r in statistics) or np.any(statistics[1] < 0):
            continue
        expected = reference.eval_forward(example, statistics)
        if _within(y, expected, EvalBound(example, statistics).forward()):
            return f"train_forward normalises with {what}, not with the batch's statistics"
    return ""


# ----- eval-mode double backward -----

def _eval_double_backward(impl, example, given, running, **replaced):
    return call_double_backward(impl, example, given, method="eval_double_backward",
                                **_running(example, running), **replaced)


@_eval_register("eval_double_backward_reference", "second order", ("eval_double_backward",), _eval_second_order,
           "--mode eval --order 2")
def _eval_double_backward_reference(impl, example):
    """Eval-mode gx, ggamma, gdy agree with bnsym's float64 eval double backward."""
    running = running_statistics(example)
    given = cotangents(example, 30)
    expected = reference.eval_double_backward(example, given, running)
    tolerances = EvalBound(example, running).double_backward(given, example.dy)
    for name, a, e, t in zip(("gx", "ggamma", "gdy"), _eval_double_backward(impl, example, given, running),
                             expected, tolerances):
        beyond = unrepresentable(example, e, t)
        compare(name, np.where(beyond, e, a) if a.shape == e.shape else a, e, t)


@_eval_register("eval_double_backward_finite_differences", "second order", ("eval_backward", "eval_double_backward"),
           _eval_second_order, "--mode eval --order 2", requires=("float64_arithmetic",))
def _eval_double_backward_finite_differences(impl, example):
    """The eval double backward equals central differences of the implementation's eval backward (float64)."""
    ex = float64_example(example)
    running = tuple(_f64(r) for r in running_statistics(example))
    given = [_f64(c) for c in cotangents(example, 31)]
    ux, ug = _directions(ex, running, 32)[:2]
    udy = example.rng(35).standard_normal(ex.x.shape)

    def along(h):
        gradients = _eval_backward(impl, ex, running, x=ex.x + h * ux, gamma=ex.gamma + h * ug, dy=ex.dy + h * udy)
        return pair(gradients, given)

    estimate, truncation = central(along)
    bound = EvalBound(ex, running)
    rounding = sum(float(np.sum(np.abs(c) * t)) for c, t in zip(given, bound.backward(ex.dy))) / STEP
    error = SAFETY_FD * (truncation + rounding)
    tolerances = EvalBound(example, running).double_backward(given, example.dy)
    error += sum(float(np.sum(t * np.abs(u))) for t, u in zip(tolerances, (ux, ug, udy)))
    compare("<eval_double_backward, (u_x, u_gamma, u_dy)> - central differences of eval_backward",
            pair(_eval_double_backward(impl, ex, given, running), (ux, ug, udy)), estimate, error,
            labels=FINITE_DIFFERENCE_LABELS)


@_eval_register("eval_hessian_symmetry", "second order", ("eval_double_backward",), _eval_second_order,
           "--mode eval --order 2")
def _eval_hessian_symmetry(impl, example):
    """In eval mode too, <gx(ggx = u), v> = <gx(ggx = v), u> per group."""
    running = running_statistics(example)
    u, v = second_dy(example, 33), second_dy(example, 34)
    zeros = [np.zeros(example.gamma.shape, example.dtype)] * len(example.spec.parameters)
    gx_u = _eval_double_backward(impl, example, [u, *zeros], running)[0]
    gx_v = _eval_double_backward(impl, example, [v, *zeros], running)[0]
    bound = EvalBound(example, running)
    ref = bound.ref
    axes, shape = ref.layout.axes, ref.layout.statistics_shape
    u64, v64 = ref.grouped(u), ref.grouped(v)

    def pairing(gx, other):
        return np.sum(ref.grouped(gx) * other, axis=axes).reshape(shape)

    tol_u = bound.double_backward([u, *zeros], example.dy)[0]
    tol_v = bound.double_backward([v, *zeros], example.dy)[0]
    ref_u = reference.eval_double_backward(example, [u, *zeros], running)[0]
    ref_v = reference.eval_double_backward(example, [v, *zeros], running)[0]
    if unrepresentable(example, ref_u, tol_u).any() or unrepresentable(example, ref_v, tol_v).any():
        return  # the dtype cannot hold gx: nothing to judge
    for gx in (gx_u, gx_v):
        compare("gx", gx, np.zeros(example.x.shape), np.inf)
    compare("<gx(u), v> - <gx(v), u> per group", pairing(gx_u, v64) - pairing(gx_v, u64),
            pairing(ref_u, v64) - pairing(ref_v, u64),
            pairing(tol_u, np.abs(v64)) + pairing(tol_v, np.abs(u64))
            + bound.slack(ref.grouped(ref_u) * v64, ref.grouped(ref_v) * u64))


# ----- a layer whose training forward reads its running statistics (batch renormalisation) -----

def _reads_running_statistics(layer: LayerSpec) -> bool:
    return layer.running_statistics and layer.reads_running


@register("running_stats_read_and_updated", "running statistics", ("train_forward",),
          applies=_reads_running_statistics, when=_has_convention, selected_by="--convention", takes_options=True)
def _running_stats_read_and_updated(impl, example, options):
    """One training step reads the running statistics before updating them: y is the forward's on the statistics
    given, and each running statistic becomes (1 - f) running + f (the batch's step it averages), the convention's f.

    For a layer whose training forward reads its running statistics (``spec.reads_running``: batch
    renormalisation's running mean and stddev, the stddev averaging sqrt(var + eps)). The expected update is bnsym's
    generated one (``update_running_stats``); its tolerance carries the error bound of each averaged step
    (:class:`~bnsym.testing.reference.LayerBound`) through the weights, plus a few roundings of the update."""
    conv = CONVENTIONS[options.convention]
    if conv.unbiased and not _needs_two_values(example):
        return
    layer = example.spec
    momentum, batches = _convention_momentum(options.convention, example, 41)
    ref = reference.forward(example)
    bound = LayerBound(example, ref)
    running = [_f64(getattr(example, name)) for name in layer.running_names]
    shape = ref.layout.statistics_shape
    expected = reference.public_module(example.layer).update_running_stats(
        *running, ref.mean.reshape(shape), ref.var.reshape(shape), ref.count, eps=example.eps,
        momentum=None if conv.cumulative else momentum, convention=options.convention,
        num_batches_tracked=batches + 1 if conv.uses_batch_count else None)
    if not all(np.all(np.abs(e) <= float(np.finfo(example.dtype).max)) for e in expected):
        return  # the dtype cannot hold the statistics (float16, wide dynamic range): nothing to check
    result = call(impl, example, "train_forward", momentum=momentum, num_batches_tracked=batches)
    names = ("y", *(f"new_{name}" for name in layer.running_names))
    y, *actual = output_arrays(result, "train_forward", names)
    compare("y from train_forward (normalised with the running statistics given, before their update)", y,
            ref.y, bound.forward())
    weight = _batch_weight(example, options.convention, momentum, batches)
    correction = ref.count / (ref.count - 1) if conv.unbiased else 1.0
    u = bound.u * (4 + (2 * batches + 4 if conv.debiased else 0))
    label = f"({options.convention} convention, momentum {momentum}, {batches} batches before)"
    for name, step, old, new, want in zip(layer.running_names, (s for _, s in layer.running), running, actual,
                                          expected):
        batch = np.abs(bound.values[step]).reshape(shape)
        error = (weight * correction * np.asarray(bound.errors[step]).reshape(shape)
                 + u * (abs(1 - weight) * np.abs(old) + weight * correction * batch))
        if np.shape(new) != shape:
            raise PropertyFailure(f"train_forward returned new_{name} of shape {np.shape(new)}, expected {shape}")
        compare(f"{name} after one step {label}", new, want, SAFETY * error + bound.tiny)
