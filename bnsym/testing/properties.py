"""The property library: each property a small named object, registered in :data:`REGISTRY`.

A :class:`Property` has a ``name`` (what reports and ``--property`` use), a ``group`` (the issue's headings:
structure, reference, standardisation, gradients, identities, invariances), ``needs`` (the capabilities of the
implementation it calls, see :mod:`bnsym.testing.adapters`), a ``check(impl, example)`` that returns quietly or
raises :class:`PropertyFailure`, and the strategy of examples it runs on (the general one of
:func:`bnsym.testing.strategies.batch_norm_examples` unless it needs special shapes).

Rules for property authors:

- Compare with :func:`compare`, never with a bare assert: it handles shapes, NaN and infinities, and reports the
  worst element with expected, actual and tolerance.
- Every tolerance comes from :class:`bnsym.testing.tolerance.Bound` (an error analysis per dtype and input); a
  property combining several outputs adds their bounds (triangle inequality). No magic atol.
- Call the implementation through :func:`call_forward` / :func:`call_backward`: an exception or a malformed
  result becomes a failure of the property, never a crash of the checker.
- dy is random and never ones, and no property differentiates sum(y): that gradient is exactly zero.
- Randomness beyond the example (directions, shifts, permutations) comes from ``example.rng(salt)``, so a saved
  counterexample replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from bnsym.testing import arithmetic, reference
from bnsym.testing import strategies as bst
from bnsym.testing.failures import PropertyFailure, ProtocolError, Worst, current
from bnsym.testing.implementation import Implementation
from bnsym.testing.options import CheckOptions
from bnsym.testing.protocol import check_layout, output_array, output_arrays
from bnsym.testing.protocols import LAYER_NAMES
from bnsym.testing.representable import dy_scale
from bnsym.testing.strategies import Example
from bnsym.testing.tolerance import SAFETY, Bound, growth, unit_roundoff

__all__ = ["REGISTRIES", "REGISTRY", "Property", "PropertyFailure", "ProtocolError", "Space", "Worst", "call_backward",
           "call_forward", "compare", "register", "registry"]


def train_first_order(options: CheckOptions) -> bool:
    """The default selection: the properties of the training forward and backward run in train mode."""
    return options.mode == "train"


@dataclass(frozen=True)
class Property:
    """One named, reusable check. ``needs`` are capability names (``"forward"``, ``"backward"``, ``"eval_forward"``,
    ...: :data:`bnsym.testing.adapters.SIGNATURES`); ``examples(space)`` is its Hypothesis strategy for a
    :class:`Space`. ``when`` says which :class:`~bnsym.testing.options.CheckOptions` select it (``selected_by``
    says it to a person); ``takes_options`` makes the runner pass the options as a third argument to ``check``.
    ``regimes`` are the input regimes it can draw from (None: all); ``requires`` names properties that must hold
    for this one to mean anything (the runner runs them first, and skips this one, with the reason, when one
    fails); ``concerns`` (None: every dtype) are the dtypes of the runs whose verdict a failure decides
    (:meth:`concerns_run`); ``long_groups`` properties also run on the run's long groups
    (``Space.long_shapes``)."""

    name: str
    group: str
    needs: frozenset[str]
    description: str
    check: Callable[..., None]
    examples: Callable[[np.dtype], st.SearchStrategy[Example]]
    when: Callable[[CheckOptions], bool] = train_first_order
    selected_by: str = "train mode (the default --mode)"
    takes_options: bool = False
    regimes: tuple[str, ...] | None = None
    requires: tuple[str, ...] = ()
    concerns: tuple[str, ...] | None = None
    long_groups: bool = False

    def concerns_run(self, dtype) -> bool:
        """Whether a failure of this property fails a run in ``dtype``. A property that ``concerns`` only some
        dtypes (float64_arithmetic: float64) is a note in a run of another dtype: found and reported, with the
        properties that require it skipped, but the run's question (is the float32 arithmetic right?) is not
        answered by it."""
        return self.concerns is None or np.dtype(dtype).name in self.concerns


#: Each layer's properties by name, in the order they run. A property written for several layers (the generic ones
#: of :mod:`bnsym.testing.family_properties`) is in each of their registries, under one name.
REGISTRIES: dict[str, dict[str, Property]] = {layer: {} for layer in LAYER_NAMES}
#: Batch norm's properties.
REGISTRY: dict[str, Property] = REGISTRIES["batch_norm"]


def registry(layer: str) -> dict[str, Property]:
    """The properties of ``layer`` by name; ValueError for an unknown layer."""
    if layer not in REGISTRIES:
        raise ValueError(f"unknown layer {layer!r}; known: {', '.join(REGISTRIES)}")
    return REGISTRIES[layer]


@dataclass(frozen=True)
class Space:
    """Where one run draws its examples from: the dtype, the input regimes, the pool of shapes
    (:func:`bnsym.testing.strategies.shape_pool`, or :func:`bnsym.testing.strategies.layer_shape_pool` for the other
    layers;
    None draws any shape), the layer and the range of eps. Every property's strategy is a function of it.
    ``long_shapes`` are the run's shapes with long groups (:func:`bnsym.testing.strategies.long_shapes`), which the
    properties that take them (``Property.long_groups``) also run on. ``shards`` is K in a sharded run (None
    otherwise), and ``equal_shards`` says that the implementation takes shards of equal size only
    (:mod:`bnsym.testing.sharded`)."""

    dtype: np.dtype
    regimes: tuple[str, ...] = bst.REGIMES
    shapes: tuple | None = None
    layer: str = "batch_norm"
    eps: tuple[float, float] = (bst.MIN_EPS, bst.MAX_EPS)
    long_shapes: tuple = ()
    shards: int | None = None
    equal_shards: bool = False

    def usable(self, prop: Property) -> tuple[str, ...]:
        """The regimes of this space that ``prop`` can draw from."""
        return tuple(r for r in self.regimes if prop.regimes is None or r in prop.regimes)


def _general(space: Space) -> st.SearchStrategy[Example]:
    return bst.batch_norm_examples(dtype=space.dtype, regimes=space.regimes, shapes=space.shapes,
                                   min_eps=space.eps[0], max_eps=space.eps[1])


def register(name: str, group: str, needs=("forward",), examples=_general, *, when=train_first_order,
             selected_by="train mode (the default --mode)", takes_options=False, regimes=None, requires=(),
             layers=("batch_norm",), description: str | None = None, concerns=None, long_groups=False):
    """Add the decorated check to the registries of ``layers`` (default batch norm's, :data:`REGISTRY`); its
    docstring's first line is the property's description unless ``description`` is given."""
    def decorate(check):
        for layer in layers:
            if name in registry(layer):
                raise ValueError(f"a property named {name!r} is already registered for {layer}")
        text = description or (check.__doc__ or name).strip().splitlines()[0]
        prop = Property(name, group, frozenset(needs), text, check, examples, when, selected_by, takes_options,
                        regimes, tuple(requires), None if concerns is None else tuple(concerns), long_groups)
        for layer in layers:
            REGISTRIES[layer][name] = prop
        return check
    return decorate


# ----- calling the implementation -----

def _cast(example: Example, *arrays):
    return [np.asarray(a, dtype=example.dtype) for a in arrays]


def call_forward(impl: Implementation, example: Example, *, x=None, gamma=None, beta=None, eps=None,
                 dtype=None) -> np.ndarray:
    """y from the implementation on the example (inputs optionally replaced), as the array it returned."""
    dtype = np.dtype(dtype or example.dtype)
    # Copies: an implementation that writes into its inputs must not corrupt the example for later comparisons
    # (the property inputs_not_modified reports it).
    arrays = [np.array(example.x if x is None else x, dtype=dtype),
              np.array(example.gamma if gamma is None else gamma, dtype=dtype),
              np.array(example.beta if beta is None else beta, dtype=dtype)]
    eps = float(example.eps if eps is None else eps)
    try:
        y = impl.forward(*arrays, eps)
    except Exception as error:
        raise PropertyFailure(f"forward raised {type(error).__name__}: {error}") from None
    y = output_array(y, "y from forward", method="forward", expects="y alone, an array shaped like x")
    check_layout(y, arrays[0].shape, "y from forward", "the shape of x")
    observation = current()
    if observation is not None and y.dtype.kind == "f" and not np.all(np.isfinite(y)) \
            and all(np.all(np.isfinite(a)) for a in arrays):
        observation.nonfinite_forward = True
    return y


def call_backward(impl: Implementation, example: Example, *, dy=None, x=None, gamma=None, eps=None, dtype=None):
    """(dx, dgamma, dbeta) from the implementation's backward, each as the array it returned."""
    dtype = np.dtype(dtype or example.dtype)
    arrays = [np.array(a, dtype=dtype) for a in (example.dy if dy is None else dy, example.x if x is None else x,
                                                 example.gamma if gamma is None else gamma, example.beta)]
    eps = float(example.eps if eps is None else eps)
    try:
        result = impl.backward(*arrays, eps)
    except Exception as error:
        raise PropertyFailure(f"backward raised {type(error).__name__}: {error}") from None
    return checked_gradients(result, "backward", arrays[1].shape)


def checked_gradients(result, method: str, shape, names=("dx", "dgamma", "dbeta")):
    """(dx, dgamma, dbeta)-like results: three arrays, the first shaped like x, the others (C,)."""
    arrays = output_arrays(result, method, names)
    check_layout(arrays[0], shape, f"{names[0]} from {method}", "the shape of x")
    for name, array in zip(names[1:], arrays[1:]):
        if array.shape != (shape[1],) and array.size == shape[1]:
            check_layout(array, (shape[1],), f"{name} from {method}", "(C,), one value per channel")
    return arrays


#: The two values of a finite-difference comparison: both the implementation's, neither the truth.
FINITE_DIFFERENCE_LABELS = ("central differences of the forward give", "its backward gives")


def compare(what: str, actual, expected, tolerance, labels: tuple[str, str] = ("expected", "got")) -> None:
    """Fail unless |actual - expected| <= tolerance elementwise, naming the worst element (``labels`` name the two
    values in the report when they are not a reference and a result)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise PropertyFailure(f"{what} has shape {actual.shape}, expected {expected.shape}")
    actual = actual.astype(np.float64)
    tolerance = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), expected.shape)
    finite = np.isfinite(actual)
    observation = current()
    if not finite.all():
        if observation is not None:
            observation.ratio(float("inf"))
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise PropertyFailure(f"{what} is not finite in {int((~finite).sum())} of {actual.size} elements",
                              Worst(what, index, float(expected[index]), float(actual[index]),
                                    float(tolerance[index]), labels))
    difference = np.abs(actual - expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(difference == 0, 0.0, difference / tolerance)  # 0/0: exact where nothing may differ
    if observation is not None and actual.size and np.isfinite(tolerance).any():
        observation.ratio(float(np.max(np.where(np.isfinite(tolerance), ratio, 0))))
    if actual.size and np.max(ratio) > 1:
        index = tuple(int(i) for i in np.unravel_index(np.argmax(ratio), ratio.shape))
        raise PropertyFailure(f"{what} is wrong",
                              Worst(what, index, float(expected[index]), float(actual[index]),
                                    float(tolerance[index]), labels))


def _axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _bound(example: Example, ref=None, *, gamma=None, beta=None, dtype=None) -> Bound:
    ref = ref or reference.forward(example)
    return Bound.of(ref, dtype or example.dtype, example.gamma if gamma is None else gamma,
                    example.beta if beta is None else beta)


def _reference_slack(ref: reference.ForwardReference, *values) -> float:
    """The float64 rounding of a checker-side reduction over ``values``: negligible, but never zero."""
    return SAFETY * growth(ref.count) * unit_roundoff(np.float64) * sum(float(np.sum(np.abs(v))) for v in values)


# ----- structure -----

@register("shapes_and_dtypes", "structure")
def _shapes_and_dtypes(impl, example):
    """y has the shape and dtype of x."""
    y = call_forward(impl, example)
    if y.shape != example.x.shape or y.dtype != example.dtype:
        raise PropertyFailure(f"y has shape {y.shape} and dtype {y.dtype}, expected shape {example.x.shape} and "
                              f"dtype {example.dtype}")


@register("gradient_shapes_and_dtypes", "structure", needs=("forward", "backward"))
def _gradient_shapes_and_dtypes(impl, example):
    """dx has the shape and dtype of x; dgamma and dbeta have shape (C,) and that dtype."""
    expected = (example.x.shape, (example.channels,), (example.channels,))
    for name, array, shape in zip(("dx", "dgamma", "dbeta"), call_backward(impl, example), expected):
        if array.shape != shape or array.dtype != example.dtype:
            raise PropertyFailure(f"{name} has shape {array.shape} and dtype {array.dtype}, expected shape {shape} "
                                  f"and dtype {example.dtype}")


#: The fewest values per group float64_arithmetic draws: with M = 2 every standardisation without eps (and
#: sqrt(max(var, eps))) gives x_hat = +-1 whatever x is, which would look like a result that ignores small moves of x
#: (:mod:`bnsym.testing.arithmetic`).
FLOAT64_MIN_COUNT = 4


def _float64_examples(space: Space) -> st.SearchStrategy[Example]:
    shapes = space.shapes
    if shapes is not None:
        shapes = [s for s in shapes if math.prod(s) // s[1] >= FLOAT64_MIN_COUNT] or shapes
    return bst.batch_norm_examples(dtype="float64", regimes=("well-conditioned",), shapes=shapes,
                                   min_eps=space.eps[0], max_eps=space.eps[1])


#: How much worse than float64's own error bound a float64 result may be before the checker asks whether it was
#: computed in a shorter type (:mod:`bnsym.testing.arithmetic`): float32 rounding is 2^29 times float64's, so a
#: correct float64 kernel (a one-pass variance on well-conditioned input is within a few times the bound) stays far
#: below.
FLOAT64_SLACK = 2.0**12

#: The message of a float64_arithmetic finding, before the evidence.
NOT_FLOAT64 = "float64 input is not computed in float64"
SKIPS_DIFFERENCES = ("the finite-difference properties, which evaluate the implementation in float64, are skipped")


def judge_float64(example: Example, y, reference_y, tolerance, forward, reference_at) -> None:
    """The float64_arithmetic verdict (every layer's) on float64 ``y`` from ``forward(x)`` at the example's x, with
    the float64 ``reference_y`` from ``reference_at(x)`` and the float64 arithmetic's ``tolerance``: fails only when
    y is further off than that *and* its values show a shorter arithmetic (:func:`bnsym.testing.arithmetic.judge`).
    A y off for another reason is a float64 bug of its own: nothing is recorded here, the other properties report
    it."""
    y = np.asarray(y)
    if y.dtype != np.float64:
        raise PropertyFailure(f"{NOT_FLOAT64}: float64 input gives y of dtype {y.dtype}; {SKIPS_DIFFERENCES}")
    with np.errstate(invalid="ignore"):
        within = np.all(np.abs(y - reference_y) <= tolerance)
    if within:
        compare("y from float64 input", y, reference_y, tolerance)  # the margin, for the report
        return
    evidence = arithmetic.judge(y, forward, reference_at, example.x, reference_y, example.rng(41))
    if not evidence:
        return
    try:
        compare("y from float64 input", y, reference_y, tolerance)
    except PropertyFailure as failure:
        raise PropertyFailure(f"{NOT_FLOAT64}: y is further from the float64 reference than {FLOAT64_SLACK:g} times "
                              f"float64's error bound, and {evidence}; {SKIPS_DIFFERENCES}", failure.worst) from None


@register("float64_arithmetic", "structure", examples=_float64_examples, when=lambda options: False,
          selected_by="a finite-difference property that runs (it is their prerequisite)", concerns=("float64",))
def _float64_arithmetic(impl, example):
    """float64 input is computed in float64 (the finite-difference properties evaluate the implementation there).

    A y far from the reference is taken for a shorter arithmetic only when its values show one
    (:mod:`bnsym.testing.arithmetic`); otherwise it is a float64 bug of its own, which the other properties report,
    and the finite-difference properties run."""
    ref = reference.forward(example)
    judge_float64(example, call_forward(impl, example), ref.y, FLOAT64_SLACK * _bound(example, ref).forward(),
                  lambda x: call_forward(impl, example, x=x), lambda x: reference.forward(example, x=x).y)


@register("inputs_not_modified", "structure")
def _inputs_not_modified(impl, example):
    """forward (and backward, when offered) leave their input arrays unchanged."""
    calls = [("forward", impl.forward, ("x", "gamma", "beta"))]
    if impl.backward is not None:
        calls.append(("backward", impl.backward, ("dy", "x", "gamma", "beta")))
    for method, function, names in calls:
        arrays = {name: np.array(getattr(example, name)) for name in names}
        try:
            function(*arrays.values(), example.eps)
        except Exception as error:
            raise PropertyFailure(f"{method} raised {type(error).__name__}: {error}") from None
        for name, array in arrays.items():
            original = getattr(example, name)
            if not np.array_equal(array, original, equal_nan=True):
                index = tuple(int(i) for i in np.argwhere(array != original)[0])
                raise PropertyFailure(f"{method} modified its argument {name} in place",
                                      Worst(name, index, float(original[index]), float(array[index]), 0.0))


@register("finite_outputs", "structure")
def _finite_outputs(impl, example):
    """y is finite on finite input, and a constant channel gives y = beta."""
    y = call_forward(impl, example)
    ref = reference.forward(example)
    compare("y", y, ref.y, np.inf)  # shape, and finite everywhere
    constant = np.broadcast_to(ref.var == 0, y.shape)
    compare("y", np.where(constant, y, 0), np.where(constant, np.broadcast_to(ref.y, y.shape), 0),
            _bound(example, ref).forward())


@register("finite_gradients", "structure", needs=("forward", "backward"))
def _finite_gradients(impl, example):
    """dx, dgamma and dbeta are finite on finite input."""
    for name, array in zip(("dx", "dgamma", "dbeta"), call_backward(impl, example)):
        if not np.all(np.isfinite(array.astype(np.float64))):
            compare(name, array, np.zeros(array.shape), np.inf)


_SINGLE_VALUE_REGIMES = ("well-conditioned", "large offset")


def _single_values(space: Space) -> st.SearchStrategy[Example]:
    if space.shapes is None:
        shapes = st.tuples(st.integers(1, 4), st.integers(0, 2)).map(lambda cn: (1, cn[0]) + (1,) * cn[1])
    else:  # one value per channel, with the channels of the run's smallest shapes, in two and in four dimensions
        channels = sorted({s[1] for s in space.shapes})[-2:]
        shapes = st.sampled_from([(1, c) + (1,) * extra for extra in (0, 2) for c in channels])
    regimes = tuple(r for r in space.regimes if r in _SINGLE_VALUE_REGIMES)
    return st.builds(bst.make_example, shapes, bst.regimes(names=regimes),
                     bst.epsilons(min_eps=space.eps[0], max_eps=space.eps[1]), st.integers(0, 2**32 - 1),
                     st.just(space.dtype))


@register("one_value_per_channel", "structure", examples=_single_values, regimes=_SINGLE_VALUE_REGIMES)
def _one_value_per_channel(impl, example):
    """With one value per channel (shape (1, C) or (1, C, 1, 1)), a clear error, or y = beta and no NaN."""
    try:
        y = impl.forward(example.x, example.gamma, example.beta, example.eps)
    except Exception:
        return  # PyTorch's convention: an error ("Expected more than 1 value per channel when training")
    y = output_array(y, "y from forward", method="forward", expects="y alone, an array shaped like x")
    # The error bound of the forward pass at M = 1, derived as for any M (mean = x, var = 0, x_hat = 0): a fused
    # x * k + (beta - mean * k) with k = gamma / sqrt(eps) returns beta only to about u |x gamma| / sqrt(eps).
    ref = reference.forward(example)
    compare("y with one value per channel", y, ref.y, _bound(example, ref).forward())


# ----- comparison with bnsym's reference -----

@register("forward_reference", "reference", long_groups=True)
def _forward_reference(impl, example):
    """y agrees with bnsym's float64 reference within the error bound of the dtype."""
    ref = reference.forward(example)
    compare("y", call_forward(impl, example), ref.y, _bound(example, ref).forward())


@register("backward_reference", "gradients", needs=("forward", "backward"), long_groups=True)
def _backward_reference(impl, example):
    """dx, dgamma, dbeta agree with bnsym's generated backward in float64 within the error bound of the dtype."""
    ref = reference.forward(example)
    tolerances = _bound(example, ref).backward(example.dy)
    for name, actual, expected, tolerance in zip(("dx", "dgamma", "dbeta"), call_backward(impl, example),
                                                 reference.backward(example), tolerances):
        compare(name, actual, expected, tolerance)


def _small(space: Space) -> st.SearchStrategy[Example]:
    small = [s for s in space.shapes or () if len(s) <= 4 and math.prod(s) // s[1] <= reference.EXACT_MAX_COUNT - 2]
    return bst.batch_norm_examples(dtype=space.dtype, regimes=space.regimes, max_dims=4, max_channels=2, max_count=4,
                                   shapes=small or None, min_eps=space.eps[0], max_eps=space.eps[1])


@register("exact_reference", "gradients", needs=("forward", "backward"), examples=_small)
def _exact_reference(impl, example):
    """y, dx, dgamma, dbeta agree with the derived expressions evaluated exactly (mpmath, 50 digits), M <= 4."""
    ref = reference.forward(example)
    bound = _bound(example, ref)
    y, dx, dgamma, dbeta = reference.exact(example)
    compare("y", call_forward(impl, example), y, bound.forward())
    for name, actual, expected, tolerance in zip(("dx", "dgamma", "dbeta"), call_backward(impl, example),
                                                 (dx, dgamma, dbeta), bound.backward(example.dy)):
        compare(name, actual, expected, tolerance)


# ----- standardisation -----

@register("standardisation", "standardisation")
def _standardisation(impl, example):
    """Per channel, mean(y) = beta and mean((y - beta)^2) = gamma^2 var / (var + eps)."""
    ref = reference.forward(example)
    tol_y = _bound(example, ref).forward()
    y = call_forward(impl, example)
    compare("y", y, ref.y, np.inf)  # shape and finiteness; the values are judged through the moments below
    y = y.astype(np.float64)
    axes = _axes(y.ndim)
    beta = example.beta.astype(np.float64).reshape(ref.mean.shape)
    gamma = example.gamma.astype(np.float64).reshape(ref.mean.shape)
    compare("mean(y) per channel", np.mean(y, axis=axes), beta.reshape(-1),
            np.mean(tol_y, axis=axes) + _reference_slack(ref, ref.y) / ref.count)
    target = gamma**2 * ref.var / (ref.var + example.eps)
    centred = np.abs(ref.y - beta)
    compare("mean((y - beta)^2) per channel", np.mean((y - beta) ** 2, axis=axes), target.reshape(-1),
            np.mean(2 * centred * tol_y + tol_y**2, axis=axes) + _reference_slack(ref, centred**2) / ref.count)


@register("identity_recovery", "standardisation")
def _identity_recovery(impl, example):
    """gamma = sqrt(var + eps) and beta = mean give y = x."""
    ref = reference.forward(example)
    gamma = np.sqrt(ref.var + example.eps).reshape(-1).astype(example.dtype)
    beta = ref.mean.reshape(-1).astype(example.dtype)
    # gamma and beta are rounded to the dtype: the reference says how far from x that moves the exact result.
    recovered = reference.forward(example, gamma=gamma, beta=beta)
    x = example.x.astype(np.float64)
    tolerance = _bound(example, recovered, gamma=gamma, beta=beta).forward() + np.abs(recovered.y - x)
    compare("y with gamma = sqrt(var + eps), beta = mean", call_forward(impl, example, gamma=gamma, beta=beta), x,
            tolerance)


# ----- invariances -----

def _compare_runs(what: str, first, second, ref_first, ref_second, tol_first, tol_second) -> None:
    """first ~ second where the exact results differ by ref_second - ref_first (input rounding, often 0)."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape:
        raise PropertyFailure(f"{what}: the two runs give shapes {first.shape} and {second.shape}")
    compare(what, second.astype(np.float64) - first.astype(np.float64), ref_second - ref_first,
            tol_first + tol_second)


@register("shift_invariance", "invariances")
def _shift_invariance(impl, example):
    """y(x + c) = y(x) for a constant c per channel, including large c."""
    rng = example.rng(1)
    c = rng.choice([-1.0, 1.0], example.channels) * 10.0 ** rng.uniform(0, 4, example.channels)
    shifted = (example.x.astype(np.float64) + c.reshape((1, -1) + (1,) * (example.x.ndim - 2))).astype(example.dtype)
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


@register("scale_covariance", "invariances")
def _scale_covariance(impl, example):
    """BN(k x; k^2 eps) = BN(x; eps), with k a power of two so that k x is exact."""
    x = example.x.astype(np.float64)
    k = _power_of_two(example, 2, float(np.max(np.abs(x))))
    scaled = (k * x).astype(example.dtype)
    ref, ref_scaled = reference.forward(example), reference.forward(example, x=scaled, eps=k * k * example.eps)
    _compare_runs(f"y(k x; k^2 eps) - y(x; eps) with k = {k:g}", call_forward(impl, example),
                  call_forward(impl, example, x=scaled, eps=k * k * example.eps), ref.y, ref_scaled.y,
                  _bound(example, ref).forward(), _bound(example, ref_scaled).forward())


@register("batch_permutation_equivariance", "invariances")
def _batch_permutation(impl, example):
    """Permuting the batch axis permutes y the same way."""
    permutation = example.rng(3).permutation(example.x.shape[0])
    permuted = example.x[permutation]
    ref = reference.forward(example)
    ref_permuted = reference.forward(example, x=permuted)
    y = call_forward(impl, example)
    if y.shape != example.x.shape:
        raise PropertyFailure(f"y has shape {y.shape}, expected {example.x.shape}")
    tol = _bound(example, ref).forward()
    _compare_runs("y(x[p]) - y(x)[p]", y[permutation], call_forward(impl, example, x=permuted), ref.y[permutation],
                  ref_permuted.y, tol[permutation], _bound(example, ref_permuted).forward())


def _relayout(example: Example) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A re-arrangement of the reduced axes (the channel axis stays at 1), and its description.

    With spatial axes, the reduced axes (0, 2, 3, ...) are rotated by one, so the batch axis always moves (NCHW
    becomes HCWN); a 2-D (N, C) input becomes (1, C, N), its samples laid out as positions.
    """
    ndim = example.x.ndim
    if ndim == 2:
        return (lambda a: a.T[None]), "(N, C) -> (1, C, N)"
    reduced = list(_axes(ndim))
    # One rotation per shape, not one per example: a compiled implementation compiles once per new shape.
    rotated = reduced[1:] + reduced[:1]
    order = (rotated[0], 1, *rotated[1:])
    return (lambda a: np.transpose(a, order)), f"axes {order}"


@register("layout_equivariance", "invariances")
def _layout_equivariance(impl, example):
    """Re-arranging the reduced axes (NCHW as HCWN, (N, C) as (1, C, N)) re-arranges y the same way."""
    transform, description = _relayout(example)
    moved = np.ascontiguousarray(transform(example.x))
    ref = reference.forward(example)
    ref_moved = reference.forward(example, x=moved)
    y = call_forward(impl, example)
    if y.shape != example.x.shape:
        raise PropertyFailure(f"y has shape {y.shape}, expected {example.x.shape}")
    _compare_runs(f"y after re-arranging x by {description}", transform(y), call_forward(impl, example, x=moved),
                  transform(ref.y), ref_moved.y, transform(_bound(example, ref).forward()),
                  _bound(example, ref_moved).forward())


# ----- gradients by finite differences -----

_STEP = 2.0**-17  # about the cube root of the float64 epsilon: balances truncation (h^2) and rounding (u/h)


def _directional_derivative(impl, example: Example):
    """A central difference of <dy, y> along a random direction of (x, gamma, beta), in float64.

    The x direction is scaled per channel by sqrt(var + eps), so that a step h moves x_hat by about h whatever the
    channel's scale. Returns the estimate, its error bound and the direction. The truncation error is bounded by
    |D(2h) - D(h)|, which is three times the h^2 term; the rounding error by the forward bound over 2h.
    """
    ex = example.replace(**{name: getattr(example, name).astype(np.float64) for name in ("x", "gamma", "beta", "dy")})
    ref = reference.forward(ex)
    rng = example.rng(5)
    ux = rng.standard_normal(ex.x.shape) * np.sqrt(ref.var + ex.eps)
    ug, ub = rng.standard_normal(ex.channels), rng.standard_normal(ex.channels)

    def along(h):
        y = call_forward(impl, ex, x=ex.x + h * ux, gamma=ex.gamma + h * ug, beta=ex.beta + h * ub)
        compare("y (float64, for finite differences)", y, ref.y, np.inf)
        return math.fsum((ex.dy * y.astype(np.float64)).ravel())

    derivative = {h: (along(h) - along(-h)) / (2 * h) for h in (_STEP, 2 * _STEP)}
    rounding = 2 * float(np.sum(np.abs(ex.dy) * _bound(ex, ref).forward())) / (2 * _STEP)
    error = SAFETY * (rounding + abs(derivative[2 * _STEP] - derivative[_STEP]))
    return ex, derivative[_STEP], error, (ux, ug, ub)


def _pair(gradients, direction) -> float:
    return math.fsum(float(np.sum(np.asarray(g, dtype=np.float64) * d)) for g, d in zip(gradients, direction))


@register("forward_derivative", "gradients", requires=("float64_arithmetic",))
def _forward_derivative(impl, example):
    """The forward's own derivative, by central differences in float64, matches bnsym's exact gradient."""
    ex, estimate, error, direction = _directional_derivative(impl, example)
    expected = _pair(reference.backward(ex), direction)
    compare("<dy, J u> by central differences", estimate, expected,
            error + _reference_slack(reference.forward(ex), *(g * d for g, d in zip(reference.backward(ex),
                                                                                    direction))))


@register("backward_finite_differences", "gradients", needs=("forward", "backward"),
          requires=("float64_arithmetic",))
def _backward_finite_differences(impl, example):
    """<dx, u> + <dgamma, u_gamma> + <dbeta, u_beta> from backward equals central differences of forward (float64)."""
    ex, estimate, error, direction = _directional_derivative(impl, example)
    gradients = call_backward(impl, ex)
    ref = reference.forward(ex)
    tolerances = _bound(ex, ref).backward(ex.dy)
    error += sum(float(np.sum(t * np.abs(d))) for t, d in zip(tolerances, direction))
    compare("<backward(dy), u> against central differences of the forward along u", _pair(gradients, direction),
            estimate, error, labels=FINITE_DIFFERENCE_LABELS)


# ----- reference-free identities of the backward pass -----

@register("dx_sums_to_zero", "identities", needs=("forward", "backward"))
def _dx_sums_to_zero(impl, example):
    """sum(dx) = 0 per channel."""
    dx, _, _ = call_backward(impl, example)
    ref = reference.forward(example)
    tol_dx = _bound(example, ref).backward(example.dy)[0]
    compare("dx", dx, np.zeros(example.x.shape), np.inf)
    axes = _axes(dx.ndim)
    compare("sum(dx) per channel", np.sum(dx.astype(np.float64), axis=axes), np.zeros(example.channels),
            np.sum(tol_dx, axis=axes) + _reference_slack(ref, dx.astype(np.float64)))


@register("dx_xhat_identity", "identities", needs=("forward", "backward"))
def _dx_xhat_identity(impl, example):
    """sum(dx * x_hat) = gamma s eps / (var + eps) * sum(dy * x_hat) per channel, s = 1/sqrt(var + eps)."""
    dx, _, _ = call_backward(impl, example)
    ref = reference.forward(example)
    compare("dx", dx, np.zeros(example.x.shape), np.inf)
    tol_dx = _bound(example, ref).backward(example.dy)[0]
    axes = _axes(dx.ndim)
    dy_xhat = example.dy.astype(np.float64) * ref.x_hat
    gamma = example.gamma.astype(np.float64)
    expected = gamma * (ref.invstd * example.eps / (ref.var + example.eps)).reshape(-1) * np.sum(dy_xhat, axis=axes)
    product = dx.astype(np.float64) * ref.x_hat
    # Both sides use the reference's x_hat, itself only accurate to delta (a constant channel's mean is inexact).
    bound = _bound(example, ref)
    spread = bound.delta * (1 + np.abs(ref.x_hat))
    slack = (np.sum(np.abs(dx.astype(np.float64)) * spread, axis=axes)
             + np.abs(gamma) * (ref.invstd * example.eps / (ref.var + example.eps)).reshape(-1)
             * np.sum(np.abs(example.dy.astype(np.float64)) * spread, axis=axes))
    compare("sum(dx * x_hat) per channel", np.sum(product, axis=axes), expected,
            np.sum(tol_dx * np.abs(ref.x_hat), axis=axes) + SAFETY * slack + _reference_slack(ref, product, dy_xhat))


@register("dbeta_is_sum_dy", "identities", needs=("forward", "backward"))
def _dbeta_is_sum_dy(impl, example):
    """dbeta = sum(dy) per channel."""
    _, _, dbeta = call_backward(impl, example)
    ref = reference.forward(example)
    dy = example.dy.astype(np.float64)
    compare("dbeta", dbeta, np.sum(dy, axis=_axes(dy.ndim)),
            _bound(example, ref).backward(dy)[2] + _reference_slack(ref, dy))


@register("dgamma_is_sum_dy_xhat", "identities", needs=("forward", "backward"))
def _dgamma_is_sum_dy_xhat(impl, example):
    """dgamma = sum(dy * x_hat) per channel."""
    _, dgamma, _ = call_backward(impl, example)
    ref = reference.forward(example)
    dy = example.dy.astype(np.float64)
    compare("dgamma", dgamma, np.sum(dy * ref.x_hat, axis=_axes(dy.ndim)),
            _bound(example, ref).backward(dy)[1] + _reference_slack(ref, dy * ref.x_hat))


def second_dy(example: Example, salt: int) -> np.ndarray:
    """Another upstream gradient for the example, random, in its dtype: scaled as the example's dy is, by a power of
    two when needed, so that its exact gradients are within the dtype's range (:mod:`bnsym.testing.representable`)."""
    rng = example.rng(salt)
    dy = 10.0 ** rng.uniform(-1, 1) * rng.standard_normal(example.x.shape)
    scale = dy_scale(example.layout, example.x, example.gamma, dy.astype(example.dtype), example.eps, example.dtype)
    return (scale * dy).astype(example.dtype)


_second_dy = second_dy


def _compare_gradients(what: str, combine, ref_combine, tolerances):
    """Each of dx, dgamma, dbeta: combine(backward runs) ~ ref_combine(reference runs) within tolerances."""
    for i, name in enumerate(("dx", "dgamma", "dbeta")):
        compare(f"{what}: {name}", combine(i), ref_combine(i), tolerances[i])


@register("linearity_in_dy", "identities", needs=("forward", "backward"))
def _linearity_in_dy(impl, example):
    """backward(a dy) = a backward(dy) for a negative a, and backward(dy1 + dy2) = backward(dy1) + backward(dy2)."""
    a = -float(2.0 ** example.rng(6).integers(-1, 2))
    ref = reference.forward(example)
    bound = _bound(example, ref)
    dy1, dy2 = example.dy, _second_dy(example, 7)
    total = (dy1.astype(np.float64) + dy2).astype(example.dtype)
    runs = {name: call_backward(impl, example, dy=dy) for name, dy in (("1", dy1), ("a", a * dy1), ("2", dy2),
                                                                         ("sum", total))}
    for run in runs.values():
        compare("dx", run[0], np.zeros(example.x.shape), np.inf)  # shape and finiteness
    tol1, tol2, tol_sum = bound.backward(dy1), bound.backward(dy2), bound.backward(total)
    f = lambda run, i: np.asarray(runs[run][i], dtype=np.float64)  # noqa: E731
    zero = lambda i: np.zeros(np.shape(tol1[i]))  # noqa: E731
    _compare_gradients(f"backward({a:g} dy) - {a:g} backward(dy)", lambda i: f("a", i) - a * f("1", i),
                       zero, [2 * abs(a) * t for t in tol1])
    refs = [reference.backward(example, dy=dy) for dy in (dy1, dy2, total)]
    _compare_gradients("backward(dy1 + dy2) - backward(dy1) - backward(dy2)",
                       lambda i: f("sum", i) - f("1", i) - f("2", i),
                       lambda i: refs[2][i] - refs[0][i] - refs[1][i],
                       [a1 + a2 + a3 for a1, a2, a3 in zip(tol1, tol2, tol_sum)])


@register("dx_scales_with_gamma", "identities", needs=("forward", "backward"))
def _dx_scales_with_gamma(impl, example):
    """dx(2 gamma) = 2 dx(gamma); dgamma and dbeta do not depend on gamma."""
    ref = reference.forward(example)
    gamma2 = (2 * example.gamma.astype(np.float64)).astype(example.dtype)
    if not np.all(np.isfinite(gamma2)):
        return
    one, two = call_backward(impl, example), call_backward(impl, example, gamma=gamma2)
    for array in (*one, *two):
        compare("gradient", array, np.zeros(array.shape), np.inf)
    tol = _bound(example, ref).backward(example.dy)
    tol2 = _bound(example, ref, gamma=gamma2).backward(example.dy)
    factors = (2.0, 1.0, 1.0)
    _compare_gradients("backward at 2 gamma vs at gamma (dx doubles, dgamma and dbeta stay)",
                       lambda i: np.asarray(two[i], np.float64) - factors[i] * np.asarray(one[i], np.float64),
                       lambda i: np.zeros(np.shape(tol[i])), [t2 + f * t for t2, t, f in zip(tol2, tol, factors)])


@register("dx_invariant_to_dy_shift", "identities", needs=("forward", "backward"))
def _dx_invariant_to_dy_shift(impl, example):
    """Adding a constant per channel to dy leaves dx and dgamma unchanged."""
    rng = example.rng(8)
    c = rng.standard_normal(example.channels) * 10.0 ** rng.uniform(-1, 1)
    dy = example.dy.astype(np.float64)
    shift = c.reshape((1, -1) + (1,) * (dy.ndim - 2))
    # The shift scaled as dy is (bnsym.testing.representable): dx(dy + c) is dx(dy) exactly, but an implementation forms
    # gamma s (dy + c) on the way, which must stay within the dtype's range (float16 at eps = 1e-12).
    scale = dy_scale(example.layout, example.x, example.gamma, (dy + shift).astype(example.dtype), example.eps,
                     example.dtype)
    shifted = (dy + scale * shift).astype(example.dtype)
    ref = reference.forward(example)
    bound = _bound(example, ref)
    first, second = call_backward(impl, example), call_backward(impl, example, dy=shifted)
    ref_first, ref_second = reference.backward(example), reference.backward(example, dy=shifted)
    for i, name in ((0, "dx"), (1, "dgamma")):
        _compare_runs(f"{name}(dy + c) - {name}(dy)", first[i], second[i], ref_first[i], ref_second[i],
                      bound.backward(dy)[i], bound.backward(shifted)[i])


@register("jacobian_symmetry", "identities", needs=("forward", "backward"))
def _jacobian_symmetry(impl, example):
    """The per-channel Jacobian dy -> dx is symmetric: <dx(v), u> = <dx(u), v> per channel."""
    v, u = example.dy, _second_dy(example, 9)
    dx_v, dx_u = call_backward(impl, example, dy=v)[0], call_backward(impl, example, dy=u)[0]
    for dx in (dx_v, dx_u):
        compare("dx", dx, np.zeros(example.x.shape), np.inf)
    ref = reference.forward(example)
    bound = _bound(example, ref)
    axes = _axes(v.ndim)
    v64, u64 = v.astype(np.float64), u.astype(np.float64)
    pairing = lambda dx_a, b: np.sum(np.asarray(dx_a, np.float64) * b, axis=axes)  # noqa: E731
    ref_v, ref_u = reference.backward(example, dy=v)[0], reference.backward(example, dy=u)[0]
    tolerance = (np.sum(bound.backward(v)[0] * np.abs(u64), axis=axes)
                 + np.sum(bound.backward(u)[0] * np.abs(v64), axis=axes))
    compare("<dx(v), u> - <dx(u), v> per channel", pairing(dx_v, u64) - pairing(dx_u, v64),
            pairing(ref_v, u64) - pairing(ref_u, v64), tolerance + _reference_slack(ref, ref_v * u64, ref_u * v64))


@register("dgamma_affine_invariance", "invariances", needs=("forward", "backward"))
def _dgamma_affine_invariance(impl, example):
    """dgamma is unchanged by x -> k x + c with eps -> k^2 eps (x_hat does not change)."""
    x = example.x.astype(np.float64)
    k = _power_of_two(example, 10, float(np.max(np.abs(x))) + 10)
    rng = example.rng(11)
    c = rng.standard_normal(example.channels) * 10.0 ** rng.uniform(0, 1, example.channels)
    moved = (k * x + c.reshape((1, -1) + (1,) * (x.ndim - 2))).astype(example.dtype)
    if not np.all(np.isfinite(moved)):
        return
    eps = k * k * example.eps
    ref, ref_moved = reference.forward(example), reference.forward(example, x=moved, eps=eps)
    first = call_backward(impl, example)[1]
    second = call_backward(impl, example, x=moved, eps=eps)[1]
    _compare_runs(f"dgamma(k x + c; k^2 eps) - dgamma(x; eps) with k = {k:g}", first, second,
                  reference.backward(example)[1], reference.backward(example, x=moved, eps=eps)[1],
                  _bound(example, ref).backward(example.dy)[1],
                  Bound.of(ref_moved, example.dtype, example.gamma, example.beta).backward(example.dy)[1])
