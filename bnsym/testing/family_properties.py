"""The properties of layer, RMS, group and instance norm: generic ones written once for every layer, and each
layer's own facts.

Each property joins the registry of the layers it holds for (:func:`bnsym.testing.properties.register` with
``layers=``), under one name, so that ``--property forward_reference`` means the same fact for every layer.
Batch norm keeps its own properties (:mod:`bnsym.testing.properties`, :mod:`bnsym.testing.layer_properties`).

Notation. A layer normalises *groups* of M values (:mod:`bnsym.spec.layout`; the example's ``layout``): a row
over the normalised axes (layer and RMS norm), a sample's C/G contiguous channels with the spatial positions (group
norm), a sample's channel over the spatial positions (instance norm). In a group, x_hat = (x - mean) s with
s = invstd = 1/sqrt(var + eps) (centred layers), or x_hat = x s with s = invrms = 1/sqrt(ms + eps), ms = mean(x^2)
(RMS norm); y = gamma x_hat (+ beta). "Per group" sums run over a group's M values; a parameter's gradient sums
over the groups that share it (``layout.parameter_axes``).

Generic properties (every layer): shapes and dtypes, inputs not modified, finite outputs, y and the gradients
against bnsym's float64 public functions and against an exact mpmath evaluation of the derived expressions, the
forward's own derivative and the backward by central differences, linearity in dy, the symmetry of the Jacobian
of x_hat (<dx(v), gamma u> = <dx(u), gamma v> per group), dgamma = sum(dy x_hat) and dbeta = sum(dy) over the
groups sharing a parameter, sum(dx x_hat) = s eps/(stat + eps) sum(gamma dy x_hat) per group (the gradient form of
scale invariance), scale covariance (y(k x; k^2 eps) = y(x; eps); RMS norm's scale invariance), equivariance under
a permutation of the samples and under a permutation of the features that keeps every group together, each
sample's y independent of the other samples, identity recovery (every group holding a permutation of the same
values, gamma = sqrt(stat + eps) and beta = mean give y = x), and with ``--order 2`` the double backward against
bnsym's and against central differences of the backward, and the symmetry of the Hessian. Each layer's own:
standardisation over its groups (with gamma = 1 and beta = 0: mean(y) = 0 and mean(y^2) = var/(var + eps) per
group; RMS norm: mean(y^2) = ms/(ms + eps)), and for the centred layers sum(dx) = 0 per group and invariance to a
shift of each group.

Tolerances come from the derived closed forms of the layer (:class:`bnsym.testing.family_reference.LayerBound`);
a property combining several outputs adds their bounds (triangle inequality). The rules of
:mod:`bnsym.testing.properties` hold here too: :func:`compare`, never a bare assert; dy random, never ones;
randomness from ``example.rng(salt)``.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from bnsym.testing import family_reference as reference
from bnsym.testing import strategies as bst
from bnsym.testing.failures import PropertyFailure, ProtocolError, Worst, current
from bnsym.testing.family_reference import LayerBound
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import (
    _STEP,
    FINITE_DIFFERENCE_LABELS,
    FLOAT64_MIN_COUNT,
    FLOAT64_SLACK,
    Space,
    compare,
    judge_float64,
    register,
    second_dy,
)
from bnsym.testing.protocol import output_array, output_arrays
from bnsym.testing.protocols import FAMILY, protocol
from bnsym.testing.strategies import Example

__all__ = ["call", "call_backward", "call_double_backward", "call_forward"]

CENTRED = tuple(layer for layer in FAMILY if protocol(layer).centred)
WITH_BETA = tuple(layer for layer in FAMILY if "beta" in protocol(layer).parameters)


def _train_first_order(options: CheckOptions) -> bool:
    return options.mode == "train"


def _second_order(options: CheckOptions) -> bool:
    return options.order == 2 and options.mode == "train"


# ----- strategies -----

def _examples(space: Space) -> st.SearchStrategy[Example]:
    return bst.layer_examples(space.layer, dtype=space.dtype, regimes=space.regimes, shapes=space.shapes,
                              min_eps=space.eps[0], max_eps=space.eps[1])


def _float64_examples(space: Space) -> st.SearchStrategy[Example]:
    """Well-conditioned float64 examples of at least FLOAT64_MIN_COUNT values per group (as batch norm's)."""
    shapes = space.shapes
    if shapes is not None:
        shapes = [e for e in shapes if bst.entry_layout(space.layer, *e).count >= FLOAT64_MIN_COUNT] or shapes
    return bst.layer_examples(space.layer, dtype="float64", regimes=("well-conditioned",), shapes=shapes,
                              min_eps=space.eps[0], max_eps=space.eps[1])


_TINY = {"layer_norm": ((3, 2), 1), "rms_norm": ((3, 2), 1), "group_norm": ((2, 4), 2),
         "instance_norm": ((2, 2, 2), 0)}


def _small_examples(space: Space) -> st.SearchStrategy[Example]:
    """Examples of at most EXACT_MAX_COUNT values per group and EXACT_MAX_GROUPS groups, for the exact reference:
    the run's pool entries that are that small, or one small shape of the layer."""
    def small(entry) -> bool:
        shape, size = entry
        layout = bst.entry_layout(space.layer, shape, size)
        return layout.count <= reference.EXACT_MAX_COUNT and \
            math.prod(layout.statistics_shape) <= reference.EXACT_MAX_GROUPS
    entries = [e for e in space.shapes or () if small(e)] or [_TINY[space.layer]]
    return bst.layer_examples(space.layer, dtype=space.dtype, regimes=space.regimes, shapes=entries,
                              min_eps=space.eps[0], max_eps=space.eps[1])


def _register(name: str, group: str, needs=("forward",), *, layers=FAMILY, examples=_examples, when=None,
              selected_by=None, **keywords):
    second = when is _second_order
    return register(name, group, needs, examples, layers=layers,
                    when=when or _train_first_order,
                    selected_by=selected_by or ("--order 2" if second else "train mode (the default --mode)"),
                    **keywords)


# ----- calling the implementation -----

def _arguments(example: Example, method: str, dtype, replaced: dict) -> list:
    """The positional arguments of a protocol method: copies of the example's arrays (some replaced) in
    ``dtype`` (an implementation that writes into its inputs must not corrupt the example), eps as a float and
    num_groups as an int."""
    arguments = []
    for name in protocol(example.layer).signatures[method]:
        if name == "eps":
            arguments.append(float(replaced.get("eps", example.eps)))
        elif name == "num_groups":
            arguments.append(int(example.num_groups))
        else:
            value = replaced[name] if name in replaced else getattr(example, name)
            arguments.append(np.array(value, dtype=dtype))
    return arguments


def call(impl, example: Example, method: str, *, dtype=None, **replaced):
    """What ``impl.<method>`` returns on the example's inputs (some replaced); an exception becomes a failure."""
    dtype = np.dtype(dtype or example.dtype)
    arguments = _arguments(example, method, dtype, replaced)
    try:
        return getattr(impl, method)(*arguments)
    except Exception as error:
        raise PropertyFailure(f"{method} raised {type(error).__name__}: {error}") from None


def _check_shape(array: np.ndarray, shape, what: str, expected: str) -> None:
    if array.shape != tuple(shape):
        raise ProtocolError(f"{what} has shape {array.shape}, expected {tuple(shape)} ({expected})")


def call_forward(impl, example: Example, *, dtype=None, **replaced) -> np.ndarray:
    """y from the implementation, checked to be an array shaped like x."""
    y = output_array(call(impl, example, "forward", dtype=dtype, **replaced), "y from forward", method="forward",
                     expects="y alone, an array shaped like x")
    x = replaced.get("x", example.x)
    _check_shape(y, np.shape(x), "y from forward", "the shape of x")
    observation = current()
    if observation is not None and y.dtype.kind == "f" and not np.all(np.isfinite(y)) \
            and all(np.all(np.isfinite(np.asarray(replaced.get(n, getattr(example, n)), np.float64)))
                    for n in ("x", "gamma", "beta")):
        observation.nonfinite_forward = True
    return y


def _gradients(result, method: str, names, shapes):
    arrays = output_arrays(result, method, names)
    for name, array, (shape, meaning) in zip(names, arrays, shapes):
        _check_shape(array, shape, f"{name} from {method}", meaning)
    return arrays


def call_backward(impl, example: Example, *, dtype=None, **replaced) -> tuple[np.ndarray, ...]:
    """(dx, dgamma[, dbeta]) from the implementation's backward, checked: dx shaped like x, the parameter
    gradients like gamma."""
    p = protocol(example.layer)
    x = replaced.get("x", example.x)
    shapes = [(np.shape(x), "the shape of x")] + [(example.gamma.shape, "gamma's shape")] * len(p.parameters)
    return _gradients(call(impl, example, "backward", dtype=dtype, **replaced), "backward", p.gradients, shapes)


def call_double_backward(impl, example: Example, cotangents, *, dtype=None, **replaced) -> tuple[np.ndarray, ...]:
    """(gx, ggamma, gdy) from the implementation's double backward for the cotangents (ggx, gggamma[, ggbeta])."""
    p = protocol(example.layer)
    names = ("ggx", *("gg" + q for q in p.parameters))
    replaced.update(zip(names, cotangents))
    shapes = [(example.x.shape, "the shape of x"), (example.gamma.shape, "gamma's shape"),
              (example.x.shape, "the shape of x")]
    return _gradients(call(impl, example, "double_backward", dtype=dtype, **replaced), "double_backward",
                      p.second_order, shapes)


def _bound(example: Example, ref=None, **keywords) -> LayerBound:
    return LayerBound(example, ref or reference.forward(example), **keywords)


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _per_group(ref, values) -> np.ndarray:
    """Sums over each group of an array shaped like x, shaped like the statistics (for reports)."""
    return np.sum(ref.grouped(values), axis=ref.layout.axes).reshape(ref.layout.statistics_shape)


def _over_shared(ref, values, shape) -> np.ndarray:
    """Sums of an array shaped like x over the groups that share each parameter value, gamma-shaped."""
    grouped = np.broadcast_to(_f64(values).reshape(ref.layout.grouped), ref.layout.grouped)
    return np.sum(grouped, axis=ref.layout.parameter_axes).reshape(shape)


def _compare_runs(what: str, first, second, ref_first, ref_second, tol_first, tol_second) -> None:
    """first ~ second where the exact results differ by ref_second - ref_first (input rounding, often 0)."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape:
        raise PropertyFailure(f"{what}: the two runs give shapes {first.shape} and {second.shape}")
    compare(what, _f64(second) - _f64(first), ref_second - ref_first, tol_first + tol_second)


# ----- structure -----

@_register("shapes_and_dtypes", "structure")
def _shapes_and_dtypes(impl, example):
    """y has the shape and dtype of x."""
    y = call_forward(impl, example)
    if y.dtype != example.dtype:
        raise PropertyFailure(f"y has dtype {y.dtype}, expected the dtype of x, {example.dtype}")


@_register("gradient_shapes_and_dtypes", "structure", needs=("forward", "backward"))
def _gradient_shapes_and_dtypes(impl, example):
    """dx has the shape and dtype of x; the parameter gradients have gamma's shape and that dtype."""
    for name, array in zip(protocol(example.layer).gradients, call_backward(impl, example)):
        if array.dtype != example.dtype:
            raise PropertyFailure(f"{name} has dtype {array.dtype}, expected the dtype of x, {example.dtype}")


@_register("float64_arithmetic", "structure", examples=_float64_examples, when=lambda options: False,
           selected_by="a finite-difference property that runs (it is their prerequisite)", concerns=("float64",))
def _float64_arithmetic(impl, example):
    """float64 input is computed in float64 (the finite-difference properties evaluate the implementation there).

    As batch norm's: a y far from the reference is taken for a shorter arithmetic only when its values show one
    (:mod:`bnsym.testing.arithmetic`); otherwise it is a float64 bug of its own, which the other properties report,
    and the finite-difference properties run (they report it too)."""
    ref = reference.forward(example)
    judge_float64(example, call_forward(impl, example), ref.y, FLOAT64_SLACK * _bound(example, ref).forward(),
                  lambda x: call_forward(impl, example, x=x), lambda x: reference.forward(example, x=x).y)


@_register("inputs_not_modified", "structure")
def _inputs_not_modified(impl, example):
    """forward (and backward, when offered) leave their input arrays unchanged."""
    methods = ["forward"] + (["backward"] if impl.backward is not None else [])
    for method in methods:
        arguments = _arguments(example, method, example.dtype, {})
        names = protocol(example.layer).signatures[method]
        try:
            getattr(impl, method)(*arguments)
        except Exception as error:
            raise PropertyFailure(f"{method} raised {type(error).__name__}: {error}") from None
        for name, array in zip(names, arguments):
            if not isinstance(array, np.ndarray):
                continue
            original = getattr(example, name)
            if not np.array_equal(array, original, equal_nan=True):
                index = tuple(int(i) for i in np.argwhere(array != original)[0])
                raise PropertyFailure(f"{method} modified its argument {name} in place",
                                      Worst(name, index, float(original[index]), float(array[index]), 0.0))


@_register("finite_outputs", "structure")
def _finite_outputs(impl, example):
    """y is finite on finite input (and a constant group gives y = beta for the centred layers)."""
    y = call_forward(impl, example)
    ref = reference.forward(example)
    compare("y", y, ref.y, np.inf)  # finite everywhere
    if ref.centred:
        constant = np.broadcast_to(ref.var == 0, ref.layout.grouped).reshape(ref.layout.shape)
        compare("y of a constant group", np.where(constant, y, 0), np.where(constant, ref.y, 0),
                _bound(example, ref).forward())


@_register("finite_gradients", "structure", needs=("forward", "backward"))
def _finite_gradients(impl, example):
    """dx and the parameter gradients are finite on finite input."""
    for name, array in zip(protocol(example.layer).gradients, call_backward(impl, example)):
        compare(name, array, np.zeros(array.shape), np.inf)


# ----- against bnsym's reference and the exact evaluation -----

@_register("forward_reference", "reference", long_groups=True)
def _forward_reference(impl, example):
    """y agrees with bnsym's float64 reference within the error bound of the dtype, from the derived closed form."""
    ref = reference.forward(example)
    compare("y", call_forward(impl, example), ref.y, _bound(example, ref).forward())


@_register("backward_reference", "gradients", needs=("forward", "backward"), long_groups=True)
def _backward_reference(impl, example):
    """dx and the parameter gradients agree with bnsym's float64 backward within the derived bounds."""
    tolerances = _bound(example).backward(example.dy)
    for name, actual, expected, tolerance in zip(protocol(example.layer).gradients, call_backward(impl, example),
                                                 reference.backward(example), tolerances):
        compare(name, actual, expected, tolerance)


@_register("exact_reference", "gradients", needs=("forward", "backward"), examples=_small_examples)
def _exact_reference(impl, example):
    """y and the gradients agree with the derived expressions evaluated exactly (mpmath, 50 digits), M <= 4."""
    bound = _bound(example)
    y, *gradients = reference.exact(example)
    compare("y", call_forward(impl, example), y, bound.forward())
    for name, actual, expected, tolerance in zip(protocol(example.layer).gradients, call_backward(impl, example),
                                                 gradients, bound.backward(example.dy)):
        compare(name, actual, expected, tolerance)


# ----- each layer's own facts: standardisation over its groups -----

@_register("standardisation", "standardisation")
def _standardisation(impl, example):
    """With gamma = 1, beta = 0: per group mean(y) = 0, mean(y^2) = var/(var + eps) (RMS norm: ms/(ms + eps)).

    Each group is the layer's own: a row, a sample's C/G channels, a sample's channel."""
    ones = np.ones(example.gamma.shape, example.dtype)
    zeros = np.zeros(example.gamma.shape, example.dtype)
    ref = reference.forward(example, gamma=ones, beta=zeros)
    tol = ref.grouped(_bound(example, ref, gamma=ones, beta=zeros).forward())
    y = call_forward(impl, example, gamma=ones, beta=zeros)
    compare("y", y, ref.y, np.inf)  # finiteness; the values are judged through the moments below
    y, exact = ref.grouped(y), ref.grouped(ref.y)
    axes, shape = ref.layout.axes, ref.layout.statistics_shape
    slack = LayerBound(example, ref, gamma=ones, beta=zeros).slack

    def mean(values):
        return np.mean(values, axis=axes).reshape(shape)

    if ref.centred:
        compare("mean(y) per group", mean(y), np.zeros(shape), mean(tol) + slack(exact) / ref.count)
    target = (ref.statistic / (ref.statistic + example.eps)).reshape(shape)
    compare("mean(y^2) per group", mean(y**2), target,
            mean(2 * np.abs(exact) * tol + tol**2) + slack(exact**2) / ref.count)


def _equal_groups(example: Example) -> np.ndarray:
    """x with every group holding a permutation of the first group's values: all groups share their statistics."""
    layout = example.layout
    grouped = _f64(example.x).reshape(layout.grouped)
    rows = reference.by_group(grouped, layout)
    rng = example.rng(12)
    rows = np.stack([rng.permutation(rows[0]) for _ in rows])
    return reference.from_groups(rows, layout).astype(example.dtype)


@_register("identity_recovery", "standardisation")
def _identity_recovery(impl, example):
    """With every group a permutation of one set of values, gamma = sqrt(stat + eps), beta = mean give y = x."""
    x = _equal_groups(example)
    ref = reference.forward(example, x=x)
    statistic = ref.statistic.flat[0]
    mean = ref.mean.flat[0] if ref.centred else 0.0
    gamma = np.full(example.gamma.shape, np.sqrt(statistic + example.eps)).astype(example.dtype)
    beta = np.full(example.gamma.shape, mean).astype(example.dtype)
    # gamma and beta are rounded to the dtype: the reference says how far from x that moves the exact result.
    recovered = reference.forward(example, x=x, gamma=gamma, beta=beta)
    tolerance = LayerBound(example, recovered, gamma=gamma, beta=beta).forward() + np.abs(recovered.y - _f64(x))
    what = "y with gamma = sqrt(var + eps), beta = mean" if ref.centred else "y with gamma = sqrt(ms + eps)"
    compare(what, call_forward(impl, example, x=x, gamma=gamma, beta=beta), _f64(x), tolerance)


# ----- invariances and equivariances -----

@_register("shift_invariance", "invariances", layers=CENTRED)
def _shift_invariance(impl, example):
    """y(x + c) = y(x) for a constant c per group, including large c."""
    layout = example.layout
    rng = example.rng(1)
    c = rng.choice([-1.0, 1.0], layout.statistics_broadcast) * 10.0 ** rng.uniform(0, 4, layout.statistics_broadcast)
    shifted = (_f64(example.x).reshape(layout.grouped) + c).reshape(layout.shape).astype(example.dtype)
    if not np.all(np.isfinite(shifted)):
        return  # float16 cannot hold the shifted values: nothing to compare
    ref, ref_shifted = reference.forward(example), reference.forward(example, x=shifted)
    _compare_runs("y(x + c) - y(x)", call_forward(impl, example), call_forward(impl, example, x=shifted),
                  ref.y, ref_shifted.y, _bound(example, ref).forward(), _bound(example, ref_shifted).forward())


def _power_of_two(example: Example, salt: int, largest: float) -> float:
    """A power of two k != 1 with |k x| representable in the dtype: scaling by it is exact."""
    rng = example.rng(salt)
    k = float(2.0 ** rng.choice([-2, -1, 1, 2]))
    if k > 1 and largest * k > float(np.finfo(example.dtype).max) / 4:
        k = 1 / k
    return k


def _scale(impl, example):
    x = _f64(example.x)
    k = _power_of_two(example, 2, float(np.max(np.abs(x))))
    scaled = (k * x).astype(example.dtype)
    eps = k * k * example.eps
    ref, ref_scaled = reference.forward(example), reference.forward(example, x=scaled, eps=eps)
    _compare_runs(f"y(k x; k^2 eps) - y(x; eps) with k = {k:g}", call_forward(impl, example),
                  call_forward(impl, example, x=scaled, eps=eps), ref.y, ref_scaled.y,
                  _bound(example, ref).forward(), _bound(example.replace(eps=eps), ref_scaled).forward())


_register("scale_covariance", "invariances", layers=CENTRED,
          description="y(k x; k^2 eps) = y(x; eps), with k a power of two so that k x is exact.")(_scale)
_register("scale_invariance", "invariances", layers=("rms_norm",),
          description="RMS norm is scale invariant: y(k x; k^2 eps) = y(x; eps), k a power of two (k x exact).")(
    _scale)


@_register("batch_permutation_equivariance", "invariances")
def _batch_permutation(impl, example):
    """Permuting the samples (axis 0) permutes y the same way."""
    permutation = example.rng(3).permutation(example.x.shape[0])
    permuted = example.x[permutation]
    ref, ref_permuted = reference.forward(example), reference.forward(example, x=permuted)
    y = call_forward(impl, example)
    _compare_runs("y(x[p]) - y(x)[p]", y[permutation], call_forward(impl, example, x=permuted), ref.y[permutation],
                  ref_permuted.y, _bound(example, ref).forward()[permutation],
                  _bound(example, ref_permuted).forward())


def _feature_permutation(example: Example) -> tuple[np.ndarray, int, str]:
    """A permutation of the parameter positions that maps every group onto itself or onto another group: the
    last axis for layer and RMS norm, the channels within each group for group norm, any channels for instance
    norm. Returns it, the axis of x it acts on, and a description."""
    rng = example.rng(13)
    if example.layer in ("layer_norm", "rms_norm"):
        return rng.permutation(example.x.shape[-1]), example.x.ndim - 1, "the last axis"
    channels = example.x.shape[1]
    if example.layer == "group_norm":
        size = channels // example.num_groups
        permutation = np.concatenate([g * size + rng.permutation(size) for g in range(example.num_groups)])
        return permutation, 1, "the channels within each group"
    return rng.permutation(channels), 1, "the channels"


@_register("feature_permutation_equivariance", "invariances")
def _feature_permutation_equivariance(impl, example):
    """Permuting features with gamma and beta, keeping each group together, permutes y the same way.

    Layer and RMS norm: the last axis; group norm: the channels within each group; instance norm: the channels."""
    permutation, axis, description = _feature_permutation(example)
    parameter_axis = example.gamma.ndim - 1 if axis == example.x.ndim - 1 else 0
    x = np.take(example.x, permutation, axis=axis)
    gamma = np.take(example.gamma, permutation, axis=parameter_axis)
    beta = np.take(example.beta, permutation, axis=parameter_axis)
    ref = reference.forward(example)
    ref_permuted = reference.forward(example, x=x, gamma=gamma, beta=beta)
    y = call_forward(impl, example)
    _compare_runs(f"y after permuting {description} - y permuted", np.take(y, permutation, axis=axis),
                  call_forward(impl, example, x=x, gamma=gamma, beta=beta), np.take(ref.y, permutation, axis=axis),
                  ref_permuted.y, np.take(_bound(example, ref).forward(), permutation, axis=axis),
                  _bound(example, ref_permuted, gamma=gamma, beta=beta).forward())


@_register("sample_independence", "invariances")
def _sample_independence(impl, example):
    """The y of sample 0 does not depend on the other samples (no statistics over the batch axis)."""
    if example.x.shape[0] < 2:
        return
    rng = example.rng(14)
    others = _f64(example.x).copy()
    limit = float(np.finfo(example.dtype).max) / 8
    others[1:] = np.clip(others[1:] * rng.uniform(2, 4) + rng.normal(0, 10), -limit, limit)
    others = others.astype(example.dtype)
    ref, ref_others = reference.forward(example), reference.forward(example, x=others)
    y, y_others = call_forward(impl, example), call_forward(impl, example, x=others)
    _compare_runs("y of sample 0 with other samples changed - y of sample 0", y[:1], y_others[:1], ref.y[:1],
                  ref_others.y[:1], _bound(example, ref).forward()[:1], _bound(example, ref_others).forward()[:1])


# ----- gradients by finite differences -----

def _directional_derivative(impl, example: Example):
    """A central difference of <dy, y> along a random direction of (x, parameters), in float64: the x direction
    scaled per group by 1/s, so that a step h moves x_hat by about h. Returns the float64 example, the estimate,
    its error bound (truncation |D(2h) - D(h)| plus rounding: the forward bound over 2h) and the direction."""
    names = protocol(example.layer).parameters
    ex = example.replace(**{n: _f64(getattr(example, n)) for n in ("x", "gamma", "beta", "dy")})
    ref = reference.forward(ex)
    rng = example.rng(5)
    ux = (rng.standard_normal(ref.layout.grouped) / ref.scale).reshape(ex.x.shape)
    directions = [ux] + [rng.standard_normal(ex.gamma.shape) for _ in names]

    def along(h):
        moved = {"x": ex.x + h * ux, **{n: getattr(ex, n) + h * d for n, d in zip(names, directions[1:])}}
        y = call_forward(impl, ex, **moved)
        compare("y (float64, for finite differences)", y, ref.y, np.inf)
        return math.fsum((ex.dy * _f64(y)).ravel())

    derivative = {h: (along(h) - along(-h)) / (2 * h) for h in (_STEP, 2 * _STEP)}
    rounding = 2 * float(np.sum(np.abs(ex.dy) * _bound(ex, ref).forward())) / (2 * _STEP)
    error = 8.0 * (rounding + abs(derivative[2 * _STEP] - derivative[_STEP]))
    return ex, derivative[_STEP], error, directions


def _pair(gradients, directions) -> float:
    return math.fsum(float(np.sum(_f64(g) * d)) for g, d in zip(gradients, directions))


@_register("forward_derivative", "gradients", requires=("float64_arithmetic",))
def _forward_derivative(impl, example):
    """The forward's own derivative, by central differences in float64, matches bnsym's gradient."""
    ex, estimate, error, directions = _directional_derivative(impl, example)
    products = [_f64(g) * d for g, d in zip(reference.backward(ex), directions)]
    compare("<dy, J u> by central differences", estimate, _pair(reference.backward(ex), directions),
            error + _bound(ex).slack(*products))


@_register("backward_finite_differences", "gradients", needs=("forward", "backward"),
           requires=("float64_arithmetic",))
def _backward_finite_differences(impl, example):
    """<backward(dy), u> equals central differences of forward along u (float64)."""
    ex, estimate, error, directions = _directional_derivative(impl, example)
    gradients = call_backward(impl, ex)
    tolerances = _bound(ex).backward(ex.dy)
    error += sum(float(np.sum(t * np.abs(d))) for t, d in zip(tolerances, directions))
    compare("<backward(dy), u> against central differences of the forward along u", _pair(gradients, directions),
            estimate, error, labels=FINITE_DIFFERENCE_LABELS)


# ----- identities of the backward pass -----

@_register("dx_sums_to_zero", "identities", needs=("forward", "backward"), layers=CENTRED)
def _dx_sums_to_zero(impl, example):
    """sum(dx) = 0 per group."""
    dx = call_backward(impl, example)[0]
    ref = reference.forward(example)
    compare("dx", dx, np.zeros(example.x.shape), np.inf)
    tol_dx = _bound(example, ref).backward(example.dy)[0]
    compare("sum(dx) per group", _per_group(ref, dx), np.zeros(ref.layout.statistics_shape),
            _per_group(ref, tol_dx) + LayerBound(example, ref).slack(_f64(dx)))


@_register("dx_xhat_identity", "identities", needs=("forward", "backward"))
def _dx_xhat_identity(impl, example):
    """sum(dx x_hat) = s eps/(stat + eps) sum(gamma dy x_hat) per group, stat = var (RMS norm: ms).

    The gradient form of scale invariance: dx is orthogonal to x_hat up to the effect of eps."""
    dx = call_backward(impl, example)[0]
    ref = reference.forward(example)
    compare("dx", dx, np.zeros(example.x.shape), np.inf)
    bound = _bound(example, ref)
    factor = ref.scale * example.eps / (ref.statistic + example.eps)
    gamma_dy = ref.parameter(example.gamma) * ref.grouped(example.dy)
    axes, shape = ref.layout.axes, ref.layout.statistics_shape
    expected = (factor * np.sum(gamma_dy * ref.x_hat, axis=axes, keepdims=True)).reshape(shape)
    product = ref.grouped(dx) * ref.x_hat
    # Both sides use the reference's x_hat, itself only as accurate as a correct implementation's (a constant
    # group's mean is inexact).
    spread = bound.errors["x_hat"]
    slack = (np.sum(np.abs(ref.grouped(dx)) * spread, axis=axes, keepdims=True)
             + factor * np.sum(np.abs(gamma_dy) * spread, axis=axes, keepdims=True))
    tolerance = (np.sum(ref.grouped(bound.backward(example.dy)[0]) * np.abs(ref.x_hat), axis=axes, keepdims=True)
                 + 8.0 * slack)
    compare("sum(dx * x_hat) per group", np.sum(product, axis=axes).reshape(shape), expected,
            tolerance.reshape(shape) + bound.slack(product, gamma_dy * ref.x_hat))


@_register("dgamma_is_sum_dy_xhat", "identities", needs=("forward", "backward"))
def _dgamma_is_sum_dy_xhat(impl, example):
    """dgamma = sum(dy * x_hat) over the groups that share each gamma."""
    dgamma = call_backward(impl, example)[1]
    ref = reference.forward(example)
    terms = ref.grouped(example.dy) * ref.x_hat
    bound = _bound(example, ref)
    compare("dgamma", dgamma, _over_shared(ref, terms, example.gamma.shape),
            bound.backward(example.dy)[1] + bound.slack(terms))


@_register("dbeta_is_sum_dy", "identities", needs=("forward", "backward"), layers=WITH_BETA)
def _dbeta_is_sum_dy(impl, example):
    """dbeta = sum(dy) over the groups that share each beta."""
    dbeta = call_backward(impl, example)[2]
    ref = reference.forward(example)
    bound = _bound(example, ref)
    compare("dbeta", dbeta, _over_shared(ref, example.dy, example.gamma.shape),
            bound.backward(example.dy)[2] + bound.slack(example.dy))


_second_dy = second_dy  # batch norm's, for every layer (the layout says where the groups are)


@_register("linearity_in_dy", "identities", needs=("forward", "backward"))
def _linearity_in_dy(impl, example):
    """backward(a dy) = a backward(dy) for a negative a, and backward(dy1 + dy2) = backward(dy1) + backward(dy2)."""
    a = -float(2.0 ** example.rng(6).integers(-1, 2))
    ref = reference.forward(example)
    bound = _bound(example, ref)
    dy1, dy2 = example.dy, _second_dy(example, 7)
    total = (_f64(dy1) + dy2).astype(example.dtype)
    runs = {name: call_backward(impl, example, dy=dy) for name, dy in (("1", dy1), ("a", a * dy1), ("2", dy2),
                                                                         ("sum", total))}
    names = protocol(example.layer).gradients
    for run in runs.values():
        compare("dx", run[0], np.zeros(example.x.shape), np.inf)  # finiteness
    tol1, tol2, tol_sum = bound.backward(dy1), bound.backward(dy2), bound.backward(total)
    refs = [reference.backward(example, dy=dy) for dy in (dy1, dy2, total)]
    for i, name in enumerate(names):
        f = {run: _f64(values[i]) for run, values in runs.items()}
        compare(f"backward({a:g} dy) - {a:g} backward(dy): {name}", f["a"] - a * f["1"], np.zeros(f["1"].shape),
                2 * abs(a) * tol1[i])
        compare(f"backward(dy1 + dy2) - backward(dy1) - backward(dy2): {name}", f["sum"] - f["1"] - f["2"],
                refs[2][i] - refs[0][i] - refs[1][i], tol1[i] + tol2[i] + tol_sum[i])


@_register("jacobian_symmetry", "identities", needs=("forward", "backward"))
def _jacobian_symmetry(impl, example):
    """The Jacobian of x_hat is symmetric per group: <dx(v), gamma u> = <dx(u), gamma v> per group."""
    v, u = example.dy, _second_dy(example, 9)
    dx_v, dx_u = call_backward(impl, example, dy=v)[0], call_backward(impl, example, dy=u)[0]
    for dx in (dx_v, dx_u):
        compare("dx", dx, np.zeros(example.x.shape), np.inf)
    ref = reference.forward(example)
    bound = _bound(example, ref)
    gamma = ref.parameter(example.gamma)
    gu, gv = gamma * ref.grouped(u), gamma * ref.grouped(v)
    axes, shape = ref.layout.axes, ref.layout.statistics_shape

    def pairing(dx, other):
        return np.sum(ref.grouped(dx) * other, axis=axes).reshape(shape)

    ref_v, ref_u = reference.backward(example, dy=v)[0], reference.backward(example, dy=u)[0]
    tolerance = (pairing(bound.backward(v)[0], np.abs(gu)) + pairing(bound.backward(u)[0], np.abs(gv)))
    compare("<dx(v), gamma u> - <dx(u), gamma v> per group", pairing(dx_v, gu) - pairing(dx_u, gv),
            pairing(ref_v, gu) - pairing(ref_u, gv),
            tolerance + bound.slack(ref.grouped(ref_v) * gu, ref.grouped(ref_u) * gv))


# ----- second order -----

def _cotangents(example: Example, salt: int) -> list[np.ndarray]:
    """Random ggx (like x) and parameter cotangents (like gamma) in the dtype: never ones, never zero."""
    rng = example.rng(salt)
    count = len(protocol(example.layer).parameters)
    return [rng.standard_normal(example.x.shape).astype(example.dtype)] + \
        [rng.standard_normal(example.gamma.shape).astype(example.dtype) for _ in range(count)]


def _unrepresentable(example: Example, expected, tolerance) -> np.ndarray:
    """Where the dtype cannot hold the result or its error bound: second derivatives grow as s^2 and s^3, beyond
    float16's range for a variance near eps, and there nothing can be judged."""
    return np.abs(expected) + tolerance > float(np.finfo(example.dtype).max)


@_register("double_backward_reference", "second order", needs=("double_backward",), when=_second_order)
def _double_backward_reference(impl, example):
    """gx, ggamma, gdy agree with bnsym's float64 double backward within the bounds of the derived forms."""
    cotangents = _cotangents(example, 30)
    expected = reference.double_backward(example, cotangents)
    tolerances = _bound(example).double_backward(cotangents, example.dy)
    for name, a, e, t in zip(("gx", "ggamma", "gdy"), call_double_backward(impl, example, cotangents), expected,
                             tolerances):
        beyond = _unrepresentable(example, e, t)
        compare(name, np.where(beyond, e, a) if a.shape == e.shape else a, e, t)


@_register("double_backward_finite_differences", "second order", needs=("backward", "double_backward"),
           when=_second_order, requires=("float64_arithmetic",))
def _double_backward_finite_differences(impl, example):
    """The double backward equals central differences of the implementation's own backward (float64)."""
    ex = example.replace(**{n: _f64(getattr(example, n)) for n in ("x", "gamma", "beta", "dy")})
    cotangents = [_f64(c) for c in _cotangents(example, 31)]
    ref = reference.forward(ex)
    rng = example.rng(32)
    ux = (rng.standard_normal(ref.layout.grouped) / ref.scale).reshape(ex.x.shape)
    ug, udy = rng.standard_normal(ex.gamma.shape), rng.standard_normal(ex.x.shape)

    def along(h):
        gradients = call_backward(impl, ex, x=ex.x + h * ux, gamma=ex.gamma + h * ug, dy=ex.dy + h * udy)
        return _pair(gradients, cotangents)

    d = {h: (along(h) - along(-h)) / (2 * h) for h in (_STEP, 2 * _STEP)}
    bound = _bound(ex, ref)
    rounding = sum(float(np.sum(np.abs(c) * t)) for c, t in zip(cotangents, bound.backward(ex.dy))) / _STEP
    error = 8.0 * (abs(d[2 * _STEP] - d[_STEP]) + rounding)
    tolerances = _bound(example).double_backward(cotangents, example.dy)
    error += sum(float(np.sum(t * np.abs(u))) for t, u in zip(tolerances, (ux, ug, udy)))
    compare("<double_backward, (u_x, u_gamma, u_dy)> - central differences of backward",
            _pair(call_double_backward(impl, ex, cotangents), (ux, ug, udy)), d[_STEP], error)


@_register("hessian_symmetry", "second order", needs=("double_backward",), when=_second_order)
def _hessian_symmetry(impl, example):
    """The Hessian of <dy, y> with respect to x is symmetric: <gx(ggx = u), v> = <gx(ggx = v), u> per group."""
    u, v = _second_dy(example, 33), _second_dy(example, 34)
    zeros = [np.zeros(example.gamma.shape, example.dtype)] * len(protocol(example.layer).parameters)
    gx_u = call_double_backward(impl, example, [u, *zeros])[0]
    gx_v = call_double_backward(impl, example, [v, *zeros])[0]
    ref = reference.forward(example)
    bound = _bound(example, ref)
    axes, shape = ref.layout.axes, ref.layout.statistics_shape
    u64, v64 = ref.grouped(u), ref.grouped(v)

    def pairing(gx, other):
        return np.sum(ref.grouped(gx) * other, axis=axes).reshape(shape)

    tol_u = bound.double_backward([u, *zeros], example.dy)[0]
    tol_v = bound.double_backward([v, *zeros], example.dy)[0]
    ref_u = reference.double_backward(example, [u, *zeros])[0]
    ref_v = reference.double_backward(example, [v, *zeros])[0]
    if _unrepresentable(example, ref_u, tol_u).any() or _unrepresentable(example, ref_v, tol_v).any():
        return  # the dtype cannot hold gx: nothing to judge
    for gx in (gx_u, gx_v):
        compare("gx", gx, np.zeros(example.x.shape), np.inf)
    compare("<gx(u), v> - <gx(v), u> per group", pairing(gx_u, v64) - pairing(gx_v, u64),
            pairing(ref_u, v64) - pairing(ref_v, u64),
            pairing(tol_u, np.abs(v64)) + pairing(tol_v, np.abs(u64))
            + bound.slack(ref.grouped(ref_u) * v64, ref.grouped(ref_v) * u64))
