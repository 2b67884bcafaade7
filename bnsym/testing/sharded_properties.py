"""The properties of the sharded mode (``--shards K``, :mod:`bnsym.testing.sharded`): a data-parallel layer, given the
batch split into K shards, returns what one process returns for the whole batch.

They are properties of the one library (:func:`bnsym.testing.properties.register`), in the registry of every layer
whose groups span samples (:func:`bnsym.testing.sharded.shardable`, read from the layer's spec), selected by
``shards`` (and ``--convention`` for the running statistics), and called with the sharded protocol's methods:

- ``sharded_shapes_and_dtypes``: one output per shard, of the shard's shape and dtype;
- ``sharded_forward_reference``: the outputs, put together, against bnsym's reference for the whole batch (an
  unweighted mean of shard means, a mean of shard variances, local statistics all fail here);
- ``sharded_backward_reference``: the dx of every shard against the whole batch's (a backward that does not
  all-reduce sum(dy) and sum(dy x_hat), or divides them by the wrong count, fails here);
- ``sharded_parameter_gradients``: the workers' dgamma and dbeta sum to the whole batch's (gradients reduced
  twice, by the layer and by the wrapper, are K times too large);
- ``sharded_inputs_not_modified``: no method writes into what it was given: the x shards, the dy shards, the
  parameters and (with ``--convention``) the running statistics of the training step;
- ``sharded_running_statistics`` (with ``--convention``): every worker holds the running statistics of the whole
  batch, with the global count in Bessel's correction;
- ``sharded_train_forward_batch_statistics`` (with ``--convention``): the outputs of the training step, put
  together, are the whole batch's training forward, normalised with the batch's statistics (not the running ones).

Tolerances are those of the unsharded check (:mod:`bnsym.testing.tolerance`) for the whole batch, plus the
rounding of adding K per-worker gradients.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import bnsym
from bnsym.conventions import CONVENTIONS
from bnsym.spec import LayerSpec, spec
from bnsym.testing import reference
from bnsym.testing.failures import PropertyFailure, Worst
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import Space, compare, register
from bnsym.testing.sharded import ShardedExample, shardable, sharded_examples
from bnsym.testing.tolerance import SAFETY, Bound, unit_roundoff

__all__ = ["spans_samples"]


def spans_samples(layer: LayerSpec) -> bool:
    """The layers the sharded properties hold for: those whose groups span samples (:func:`shardable`), so that a
    batch split between workers must be synchronised."""
    return shardable(layer.name)


def _sharded(options: CheckOptions) -> bool:
    return options.shards is not None


def _sharded_with_convention(options: CheckOptions) -> bool:
    return options.shards is not None and options.convention is not None


def _examples(space: Space) -> st.SearchStrategy[ShardedExample]:
    if space.shards is None:
        raise ValueError("the sharded properties draw from a space with shards (a run with shards=K)")
    return sharded_examples(layer=space.layer, dtype=space.dtype, shards=space.shards,
                            equal_shards=space.equal_shards, regimes=space.regimes, min_eps=space.eps[0],
                            max_eps=space.eps[1])


def _register(name: str, needs=("sharded_forward",), *, convention: bool = False):
    """Register a sharded property for the layers whose groups span samples: run with ``shards`` (and a
    convention)."""
    return register(name, "sharded", needs=needs, examples=_examples, takes_options=True, applies=spans_samples,
                    when=_sharded_with_convention if convention else _sharded,
                    selected_by="--shards K --convention" if convention else "--shards K")


# ----- calling the implementation -----

def _call(impl, method: str, *args):
    try:
        return getattr(impl, method)(*args)
    except Exception as error:
        raise PropertyFailure(f"{method} raised {type(error).__name__}: {error}") from None


def _arrays(values, what: str, count: int) -> list[np.ndarray]:
    try:
        values = list(values)
    except TypeError:
        raise PropertyFailure(f"{what} must be a list of {count} arrays, got {type(values).__name__}") from None
    if len(values) != count:
        raise PropertyFailure(f"{what} has {len(values)} entries, expected one per shard ({count})")
    arrays = [np.asarray(v) for v in values]
    for k, a in enumerate(arrays):
        if a.dtype.kind not in "fiu":
            raise PropertyFailure(f"{what}[{k}] is not a floating-point array (dtype {a.dtype})")
    return arrays


def _parameters(ex: ShardedExample) -> list[np.ndarray]:
    """Copies of the layer's parameters (gamma, beta: ``spec.parameters``), in the protocol's order."""
    return [np.array(getattr(ex, name)) for name in spec(ex.layer).parameters]


def _gradient_names(ex: ShardedExample) -> tuple[str, ...]:
    return tuple("d" + name for name in spec(ex.layer).parameters)


def sharded_forward(impl, ex: ShardedExample) -> list[np.ndarray]:
    ys = _call(impl, "sharded_forward", ex.split(ex.x), *_parameters(ex), float(ex.eps))
    return _arrays(ys, "ys from sharded_forward", len(ex.sizes))


def sharded_backward(impl, ex: ShardedExample) -> list[list[np.ndarray]]:
    """[dxs, and per parameter its K per-worker gradients] from the implementation."""
    result = _call(impl, "sharded_backward", ex.split(ex.dy), ex.split(ex.x), *_parameters(ex), float(ex.eps))
    names = ("dxs", *(g + "s" for g in _gradient_names(ex)))
    try:
        parts = list(result)
    except TypeError:
        parts = None
    if parts is None or len(parts) != len(names):
        raise PropertyFailure(f"sharded_backward must return ({', '.join(names)}), got {type(result).__name__}")
    return [_arrays(part, name, len(ex.sizes)) for part, name in zip(parts, names)]


def _joined(what: str, parts: list[np.ndarray], ex: ShardedExample) -> np.ndarray:
    """The per-shard arrays along the batch axis, after checking each has its shard's shape."""
    for k, (part, size) in enumerate(zip(parts, ex.sizes)):
        expected = (size,) + ex.x.shape[1:]
        if part.shape != expected:
            raise PropertyFailure(f"{what} of shard {k} has shape {part.shape}, expected {expected} (shard sizes "
                                  f"{list(ex.sizes)})")
    return np.concatenate(parts)


def _compare_joined(what: str, parts, ex: ShardedExample, expected, tolerance) -> None:
    """Compare the shards' arrays, put together, with the whole batch's; a failure names the shard."""
    try:
        compare(f"{what} (whole batch)", _joined(what, parts, ex), expected, tolerance)
    except PropertyFailure as failure:
        if failure.worst is None:
            raise
        message = f"{what} is wrong" if failure.message.endswith("is wrong") else failure.message
        raise PropertyFailure(f"{message} in {ex.locate(failure.worst.index)}", failure.worst) from None


def _bound(ex: ShardedExample) -> tuple[reference.ForwardReference, Bound]:
    ref = reference.forward(ex)
    return ref, Bound.of(ref, ex.dtype, ex.gamma, ex.beta)


# ----- structure -----

@_register("sharded_shapes_and_dtypes", needs=("sharded_forward", "sharded_backward"))
def _shapes_and_dtypes(impl, ex, options):
    """One y and one dx per shard, of the shard's shape and x's dtype; parameter gradients of the parameters' shape."""
    ys = sharded_forward(impl, ex)
    dxs, *gradients = sharded_backward(impl, ex)
    for what, parts in (("y", ys), ("dx", dxs)):
        _joined(what, parts, ex)
        for k, part in enumerate(parts):
            if part.dtype != ex.dtype:
                raise PropertyFailure(f"{what} of shard {k} has dtype {part.dtype}, expected {ex.dtype}")
    for what, parts, parameter in zip(_gradient_names(ex), gradients, _parameters(ex)):
        for k, part in enumerate(parts):
            if part.shape != parameter.shape or part.dtype != ex.dtype:
                raise PropertyFailure(f"{what} of shard {k} has shape {part.shape} and dtype {part.dtype}, expected "
                                      f"{parameter.shape} and {ex.dtype}")


def _running(ex: ShardedExample, ref: reference.ForwardReference) -> tuple[np.ndarray, np.ndarray]:
    """Running statistics away from the batch's own (drawn from the example, so a saved one replays them), in the
    dtype, within its range."""
    rng = ex.rng(42)
    largest = float(np.finfo(ex.dtype).max)
    mean = ref.mean.reshape(-1) + rng.normal(0, 1, ex.channels)
    var = ref.var.reshape(-1) * rng.uniform(0.5, 2, ex.channels) + ex.eps
    return (np.clip(mean, -largest, largest).astype(ex.dtype), np.clip(var, 0, largest).astype(ex.dtype))


def _momentum(convention: str, ex: ShardedExample):
    """(momentum, num_batches_tracked): all weight on the batch half of the time (where Bessel's correction shows
    whole), otherwise a weight away from 1/2 (where a flipped convention hides)."""
    conv = CONVENTIONS[convention]
    rng = ex.rng(41)
    full = bool(rng.integers(0, 2))
    if conv.momentum_weighs is None:
        return None, (0 if full else int(rng.integers(1, 6)))
    weight = 1.0 if full else float(rng.choice([0.1, 0.2, 0.3, 0.8]))
    return (weight if conv.momentum_weighs == "new" else 1 - weight), int(rng.integers(0, 6))


@_register("sharded_inputs_not_modified")
def _inputs_not_modified(impl, ex, options):
    """No method writes into what it is given: the x and dy shards, the parameters, the running statistics.

    sharded_forward and sharded_backward always; sharded_train_forward with --convention (it needs a momentum)."""
    xs = [(f"xs[{k}]", part) for k, part in enumerate(ex.split(ex.x))]
    parameters = list(zip(spec(ex.layer).parameters, _parameters(ex)))
    _unchanged(impl, ex, "sharded_forward", [xs, *parameters])
    if impl.sharded_backward is not None:
        dys = [(f"dys[{k}]", part) for k, part in enumerate(ex.split(ex.dy))]
        _unchanged(impl, ex, "sharded_backward", [dys, xs, *parameters])
    if impl.sharded_train_forward is not None and options.convention is not None:
        running = zip(("running_mean", "running_var"), _running(ex, reference.forward(ex)))
        _unchanged(impl, ex, "sharded_train_forward", [xs, *parameters], [*running],
                   _momentum(options.convention, ex))


def _unchanged(impl, ex: ShardedExample, method: str, before, after=(), scalars=()) -> None:
    """Call ``method`` with copies of the named arrays ``before`` and ``after`` eps (a list of them is passed as a
    list), then ``scalars``; fail naming the first argument the call changed."""
    copies: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def copy(argument):
        if isinstance(argument, list):
            return [copy(item) for item in argument]
        name, original = argument
        copies[name] = (np.array(original), original)
        return copies[name][0]

    _call(impl, method, *(copy(a) for a in before), float(ex.eps), *(copy(a) for a in after), *scalars)
    for name, (array, original) in copies.items():
        changed = ~((array == original) | (np.isnan(array) & np.isnan(original)))
        if changed.any():
            index = tuple(int(i) for i in np.argwhere(changed)[0])
            raise PropertyFailure(f"{method} modified its argument {name} in place",
                                  Worst(name, index, float(original[index]), float(array[index]), 0.0))


# ----- against the whole batch -----

@_register("sharded_forward_reference")
def _forward_reference(impl, ex, options):
    """The shards' outputs, put together, agree with bnsym's reference for the whole batch."""
    ref, bound = _bound(ex)
    _compare_joined("y", sharded_forward(impl, ex), ex, ref.y, bound.forward())


@_register("sharded_backward_reference", needs=("sharded_forward", "sharded_backward"))
def _backward_reference(impl, ex, options):
    """Every shard's dx agrees with the whole batch's dx from bnsym's reference backward."""
    _, bound = _bound(ex)
    dxs = sharded_backward(impl, ex)[0]
    _compare_joined("dx", dxs, ex, reference.backward(ex)[0], bound.backward(ex.dy)[0])


@_register("sharded_parameter_gradients", needs=("sharded_forward", "sharded_backward"))
def _parameter_gradients(impl, ex, options):
    """The workers' dgamma and dbeta sum to the whole batch's (each worker returns its own contribution)."""
    _, bound = _bound(ex)
    _, *gradients = sharded_backward(impl, ex)
    _, *expected = reference.backward(ex)
    _, *tolerances = bound.backward(ex.dy)
    u = unit_roundoff(ex.dtype)
    for what, parts, whole, tolerance, parameter in zip(_gradient_names(ex), gradients, expected, tolerances,
                                                        _parameters(ex)):
        for k, part in enumerate(parts):
            if part.shape != parameter.shape:
                raise PropertyFailure(f"{what} of shard {k} has shape {part.shape}, expected {parameter.shape}")
        parts64 = [p.astype(np.float64) for p in parts]
        # Adding K per-worker contributions rounds K more times.
        adding = SAFETY * len(parts) * u * np.sum(np.abs(parts64), axis=0)
        compare(f"the sum over the {len(parts)} workers of {what}", np.sum(parts64, axis=0), whole,
                tolerance + adding)


# ----- the training step -----

def _train_step(impl, ex: ShardedExample, running, momentum, batches):
    """(ys, running_means, running_vars) of ``sharded_train_forward`` from ``running``, each a list of K arrays."""
    result = _call(impl, "sharded_train_forward", ex.split(ex.x), *_parameters(ex), float(ex.eps),
                   *(np.array(r) for r in running), momentum, batches)
    try:
        ys, means, variances = result
    except (TypeError, ValueError):
        raise PropertyFailure(f"sharded_train_forward must return (ys, running_means, running_vars), got "
                              f"{type(result).__name__}") from None
    k = len(ex.sizes)
    return (_arrays(ys, "ys from sharded_train_forward", k), _arrays(means, "running_means", k),
            _arrays(variances, "running_vars", k))


@_register("sharded_running_statistics", needs=("sharded_train_forward",), convention=True)
def _running_statistics(impl, ex, options):
    """After a training step every worker holds the whole batch's running statistics (the global count in Bessel's).

    M in Bessel's correction M / (M - 1) is the count of the whole batch, not the worker's own."""
    convention = options.convention
    conv = CONVENTIONS[convention]
    ref, bound = _bound(ex)
    momentum, batches = _momentum(convention, ex)
    running = _running(ex, ref)
    weight = {"new": momentum, "old": None if momentum is None else 1 - momentum,
              None: 1 / (batches + 1)}[conv.momentum_weighs]
    expected = bnsym.update_running_stats(*(r.astype(np.float64) for r in running), ref.mean.reshape(-1),
                                          ref.var.reshape(-1), ref.count, momentum=momentum, convention=convention,
                                          num_batches_tracked=batches + 1 if conv.momentum_weighs is None else None)
    if not all(np.all(np.isfinite(v)) and np.all(np.abs(v) <= np.finfo(ex.dtype).max) for v in expected):
        return  # the dtype cannot hold the statistics (float16, a wide dynamic range): nothing to check
    correction = ref.count / (ref.count - 1) if conv.unbiased else 1.0
    u = bound.u
    mean_tol = SAFETY * (weight * bound.mean_error.reshape(-1) + 4 * u * (abs(1 - weight) * np.abs(running[0])
                                                                           + weight * np.abs(ref.mean.reshape(-1))))
    var_tol = SAFETY * (weight * correction * bound.var_error.reshape(-1)
                        + 4 * u * (abs(1 - weight) * running[1] + weight * correction * ref.var.reshape(-1)))
    _, means, variances = _train_step(impl, ex, running, momentum, batches)
    label = f"({convention} convention, momentum {momentum}, {batches} batches before, M = {ref.count} in all)"
    for shard, (mean, var) in enumerate(zip(means, variances)):
        compare(f"running_mean of worker {shard} {label}", mean, expected[0], mean_tol + bound.tiny)
        compare(f"running_var of worker {shard} {label}", var, expected[1], var_tol + bound.tiny)


@_register("sharded_train_forward_batch_statistics", needs=("sharded_train_forward",), convention=True)
def _train_forward_batch_statistics(impl, ex, options):
    """The ys of a training step, put together, are the whole batch normalised with its own statistics.

    Not with the running statistics (eval mode's), which the step is given and updates."""
    ref, bound = _bound(ex)
    running = _running(ex, ref)
    ys, _, _ = _train_step(impl, ex, running, *_momentum(options.convention, ex))
    try:
        _compare_joined("y from sharded_train_forward", ys, ex, ref.y, bound.forward())
    except PropertyFailure as failure:
        raise PropertyFailure(failure.message, failure.worst, _normalised_with_running(ex, ys, running)) from None


def _normalised_with_running(ex: ShardedExample, ys, running) -> str:
    """A diagnosis when the wrong ys are the given running statistics' normalisation (eval mode's), or ""."""
    shape = (1, -1) + (1,) * (ex.x.ndim - 2)
    mean, var = (np.asarray(r, np.float64).reshape(shape) for r in running)
    gamma, beta = (np.asarray(p, np.float64).reshape(shape) for p in (ex.gamma, ex.beta))
    with np.errstate(all="ignore"):
        eval_y = gamma * (ex.x.astype(np.float64) - mean) / np.sqrt(var + ex.eps) + beta
        actual = np.concatenate([y.astype(np.float64) for y in ys]) if ys else np.zeros(0)
        close = actual.shape == eval_y.shape and np.allclose(actual, eval_y, rtol=64 * unit_roundoff(ex.dtype),
                                                             atol=64 * unit_roundoff(ex.dtype) * np.max(np.abs(eval_y),
                                                                                                         initial=1))
    return ("these ys are the input normalised with the running statistics it was given (eval mode's), not with "
            "the batch's") if close else ""
