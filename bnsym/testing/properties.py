"""The property library: each property a small named object, written once over a layer's groups, registered in
:data:`PROPERTIES`, and applying to every layer whose specification says it holds.

A :class:`Property` has a ``name`` (what reports and ``--property`` use), a ``group`` (the issue's headings:
structure, reference, standardisation, gradients, identities, invariances, second order; eval and running
statistics in :mod:`bnsym.testing.running_properties`), ``needs`` (the methods of the layer's protocol it calls,
:mod:`bnsym.testing.protocols`), ``applies`` (a predicate on the layer's :class:`~bnsym.spec.LayerSpec`: a
property that rests on invariances of the layer is applied by :class:`Proved`, which names them and reads whether
they are proved from the layer's generated data (:mod:`bnsym.testing.proved`), never a list of layers; the
running-statistics ones read ``spec.running_statistics``, the properties of groups within one sample
``spec.grouping.per_sample``), a ``check(impl, example)`` that returns
quietly or raises :class:`PropertyFailure`, and the strategy of examples it runs on. :func:`registry` gives the
properties of one layer, in the order they run.

Notation. A layer normalises *groups* of M values (:mod:`bnsym.spec.layout`; the example's ``layout``): one
channel over the batch and every spatial position (batch norm), a row over the normalised axes (layer and RMS
norm), a sample's C/G contiguous channels with the spatial positions (group norm), a sample's channel over the
spatial positions (instance norm). In a group, x_hat = (x - mean) s with s = invstd = 1/sqrt(var + eps) (centred
layers), or x_hat = x s with s = invrms = 1/sqrt(ms + eps), ms = mean(x^2) (a layer that takes no mean);
y = gamma x_hat (+ beta). "Per group" sums run over a group's M values; a parameter's gradient sums over the groups
that share it (``layout.parameter_axes``).

Rules for property authors:

- Compare with :func:`compare`, never with a bare assert: it handles shapes, NaN and infinities, and reports the
  worst element with expected, actual and tolerance.
- Every tolerance comes from the derived closed forms of the layer (:class:`bnsym.testing.reference.LayerBound`,
  an error analysis per dtype and input); a property combining several outputs adds their bounds (triangle
  inequality). No magic atol.
- Call the implementation through :func:`call_forward` / :func:`call_backward` / :func:`call_double_backward`:
  an exception or a malformed result becomes a failure of the property, never a crash of the checker.
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

from bnsym.spec import LayerSpec, spec
from bnsym.symbolic.invariances import CONSTANT_PARAMETERS, DIFFERENTIABLE, RECORDED, STANDARDISED, UNDONE
from bnsym.testing import arithmetic, reference
from bnsym.testing import strategies as bst
from bnsym.testing.failures import PropertyFailure, ProtocolError, Worst, current
from bnsym.testing.implementation import Implementation
from bnsym.testing.options import CheckOptions
from bnsym.testing.protocol import check_layout, output_array, output_arrays
from bnsym.testing.protocols import DEFAULT_LAYER, protocol
from bnsym.testing.proved import proved
from bnsym.testing.reference import LayerBound
from bnsym.testing.representable import dy_scale
from bnsym.testing.strategies import Example

__all__ = ["PROPERTIES", "Property", "PropertyFailure", "ProtocolError", "Space", "Worst", "call", "call_backward",
           "call_double_backward", "call_forward", "compare", "register", "registry"]


def train_first_order(options: CheckOptions) -> bool:
    """The default selection: the properties of the training forward and backward run in train mode."""
    return options.mode == "train"


def second_order(options: CheckOptions) -> bool:
    """``--order 2`` in train mode: the double-backward properties."""
    return options.order == 2 and options.mode == "train"


def every_layer(layer: LayerSpec) -> bool:
    return True


@dataclass(frozen=True)
class Proved:
    """``applies`` of a property that rests on invariances of the layer: the names of those invariances
    (:data:`bnsym.symbolic.invariances.RECORDED`), the one place the property says which ones; it applies to a layer
    exactly when each of them is proved for it, as the layer's generated data records
    (:func:`bnsym.testing.proved.proved`: StaleInvarianceData when that data is missing or stale)."""

    invariances: tuple[str, ...]

    def __post_init__(self):
        unknown = [name for name in self.invariances if name not in RECORDED]
        if not self.invariances or unknown:
            raise ValueError(f"Proved takes names of recorded invariances ({', '.join(RECORDED)}), got "
                             f"{self.invariances!r}")

    def __call__(self, layer: LayerSpec) -> bool:
        holds = proved(layer)
        return all(holds[name] for name in self.invariances)


def rests_on(*invariances: str) -> Proved:
    """``applies=rests_on("shift")``: the property applies to the layers for which each invariance is proved."""
    return Proved(tuple(invariances))


def with_beta(layer: LayerSpec) -> bool:
    return "beta" in layer.parameters


#: The properties of a forward pass whose gradients are its derivatives: it holds nothing constant in the backward
#: (no :class:`~bnsym.symbolic.reduction.StopGradient`; batch renormalisation's r and d are, and a finite difference
#: of its forward sees them move).
differentiable = rests_on(DIFFERENTIABLE)

#: The identities of standardised outputs (mean(y) = 0, sum(dx x_hat), dgamma = sum(dy x_hat)): with its parameters
#: neutral, the training y is x_hat (batch renormalisation's y = r x_hat + d is not).
standardises = rests_on(STANDARDISED)


@dataclass(frozen=True)
class Property:
    """One named, reusable check. ``needs`` are method names of the layer's protocol (``"forward"``,
    ``"backward"``, ``"eval_forward"``, ...); ``examples(space)`` is its Hypothesis strategy for a :class:`Space`;
    ``applies(spec)`` says which layers it holds for. ``when`` says which :class:`~bnsym.testing.options.CheckOptions`
    select it (``selected_by`` says it to a person); ``takes_options`` makes the runner pass the options as a third
    argument to ``check``. ``regimes`` are the kinds of input regimes it can draw from
    (:func:`bnsym.testing.strategies.regime_kind`; None: all); ``requires`` names properties that must hold for
    this one to mean anything (the runner runs them first, and skips this one, with the reason, when one fails);
    ``concerns`` (None: every dtype) are the dtypes of the runs whose verdict a failure decides
    (:meth:`concerns_run`); ``long_groups`` properties also run on the run's long groups (``Space.long_shapes``).
    ``fields``: the check is written for a layer with field inputs and outputs too (``LayerSpec.field_inputs``,
    ``field_outputs``: it passes, moves or compares every input and output, not x and y alone); the others apply
    to a layer without them only (``LayerSpec.plain``)."""

    name: str
    group: str
    needs: frozenset[str]
    description: str
    check: Callable[..., None]
    examples: Callable[[Space], st.SearchStrategy[Example]]
    applies: Callable[[LayerSpec], bool] = every_layer
    when: Callable[[CheckOptions], bool] = train_first_order
    selected_by: str = "train mode (the default --mode)"
    takes_options: bool = False
    regimes: tuple[str, ...] | None = None
    requires: tuple[str, ...] = ()
    concerns: tuple[str, ...] | None = None
    long_groups: bool = False
    fields: bool = False

    @property
    def invariances(self) -> tuple[str, ...]:
        """The invariances this property rests on (``applies=rests_on(...)``); () for one that rests on none."""
        return self.applies.invariances if isinstance(self.applies, Proved) else ()

    def concerns_run(self, dtype) -> bool:
        """Whether a failure of this property fails a run in ``dtype``. A property that ``concerns`` only some
        dtypes (float64_arithmetic: float64) is a note in a run of another dtype: found and reported, with the
        properties that require it skipped, but the run's question (is the float32 arithmetic right?) is not
        answered by it."""
        return self.concerns is None or np.dtype(dtype).name in self.concerns


#: Every property by name, each written once, in the order they run; :func:`registry` selects a layer's.
PROPERTIES: dict[str, Property] = {}


def registry(layer: str) -> dict[str, Property]:
    """The properties of ``layer`` by name, in the order they run: those that apply to its specification;
    ValueError for an unknown layer."""
    layer_spec = spec(layer)
    return {name: prop for name, prop in PROPERTIES.items()
            if prop.applies(layer_spec) and (layer_spec.plain or prop.fields)}


@dataclass(frozen=True)
class Space:
    """Where one run draws its examples from: the dtype, the input regimes, the pool of ``(shape, size)`` entries
    (:func:`bnsym.testing.strategies.layer_shape_pool`; None: the layer's pool of seed 0), the layer and the range
    of eps. Every property's strategy is a function of it. ``long_shapes`` are the run's entries with long groups
    (:func:`bnsym.testing.strategies.long_shapes`), which the properties that take them (``Property.long_groups``)
    also run on. ``shards`` is K in a sharded run (None otherwise), and ``equal_shards`` says that the
    implementation takes shards of equal size only (:mod:`bnsym.testing.sharded`)."""

    dtype: np.dtype
    regimes: tuple[str, ...] = bst.REGIMES
    shapes: tuple | None = None
    layer: str = DEFAULT_LAYER
    eps: tuple[float, float] = (bst.MIN_EPS, bst.MAX_EPS)
    long_shapes: tuple = ()
    shards: int | None = None
    equal_shards: bool = False

    def usable(self, prop: Property) -> tuple[str, ...]:
        """The regimes of this space that ``prop`` can draw from."""
        return tuple(r for r in self.regimes if prop.regimes is None or bst.regime_kind(r) in prop.regimes)

    def entries(self) -> tuple:
        """The run's pool as ``(shape, size)`` pairs."""
        if self.shapes is None:
            return bst.layer_shape_pool(self.layer)
        return bst.pool_entries(self.layer, self.shapes)


def _examples(space: Space) -> st.SearchStrategy[Example]:
    return bst.layer_examples(space.layer, dtype=space.dtype, regimes=space.regimes, shapes=space.shapes,
                              min_eps=space.eps[0], max_eps=space.eps[1])


def register(name: str, group: str, needs=("forward",), examples=_examples, *, applies=every_layer,
             when=train_first_order, selected_by=None, takes_options=False, regimes=None, requires=(),
             description: str | None = None, concerns=None, long_groups=False, fields=False):
    """Add the decorated check to :data:`PROPERTIES` under ``name`` (ValueError if a property has that name: each
    is written once); its docstring's first line is the property's description unless ``description`` is given."""
    def decorate(check):
        if name in PROPERTIES:
            raise ValueError(f"a property named {name!r} is already registered")
        text = description or (check.__doc__ or name).strip().splitlines()[0]
        said = selected_by or ("--order 2" if when is second_order else "train mode (the default --mode)")
        PROPERTIES[name] = Property(name, group, frozenset(needs), text, check, examples, applies, when, said,
                                    takes_options, None if regimes is None else tuple(regimes), tuple(requires),
                                    None if concerns is None else tuple(concerns), long_groups, fields)
        return check
    return decorate


# ----- calling the implementation -----

def arguments(example: Example, method: str, dtype, replaced: dict) -> list:
    """The positional arguments of a protocol method: copies of the example's arrays (some replaced) in ``dtype``
    (an implementation that writes into its inputs must not corrupt the example for later comparisons: the
    property inputs_not_modified reports it), eps as a float, momentum as it is, and the other options as ints."""
    result = []
    for name in protocol(example.layer).signatures[method]:
        value = replaced[name] if name in replaced else None
        if name == "eps":
            result.append(float(example.eps if value is None else value))
        elif name == "momentum":
            result.append(value)
        elif name == "num_batches_tracked":
            result.append(int(value))
        elif name in example.options:
            result.append(int(example.options[name]))
        elif name in example.spec.scalar_defaults:  # a scalar option (batch renormalisation's r_max): a float
            result.append(float(getattr(example, name) if value is None else value))
        else:
            result.append(np.array(getattr(example, name) if value is None else value, dtype=dtype))
    return result


def call(impl, example: Example, method: str, *, dtype=None, **replaced):
    """What ``impl.<method>`` returns on the example's inputs (some replaced); an exception becomes a failure."""
    dtype = np.dtype(dtype or example.dtype)
    values = arguments(example, method, dtype, replaced)
    try:
        return getattr(impl, method)(*values)
    except Exception as error:
        raise PropertyFailure(f"{method} raised {type(error).__name__}: {error}") from None


def call_forward(impl: Implementation, example: Example, *, dtype=None, method="forward", **replaced) -> np.ndarray:
    """y from the implementation's ``method`` (forward, or eval_forward with the running statistics among
    ``replaced``) on the example (inputs optionally replaced), checked to be an array shaped like x (with the
    layer's field outputs, when it has any, checked too: :func:`call_forward_all`)."""
    return call_forward_all(impl, example, dtype=dtype, method=method, **replaced)[0]


def call_forward_all(impl: Implementation, example: Example, *, dtype=None, method="forward",
                     **replaced) -> tuple[np.ndarray, ...]:
    """Every output of the implementation's ``method``: (y,), or (y, *field outputs) for a layer with field
    outputs (``LayerSpec.field_outputs``: fused add + RMS norm's (y, h)), each checked to be shaped like x."""
    outputs = protocol(example.layer).outputs
    result = call(impl, example, method, dtype=dtype, **replaced)
    if len(outputs) == 1:
        arrays = (output_array(result, f"y from {method}", method=method, expects="y alone, an array shaped like x"),)
    else:
        arrays = output_arrays(result, method, outputs)
    for name, array in zip(outputs, arrays):
        check_layout(array, np.shape(replaced.get("x", example.x)), f"{name} from {method}", "the shape of x",
                     example.spec.grouping.channel_axis)
    y = arrays[0]
    observation = current()
    if observation is not None and y.dtype.kind == "f" and not np.all(np.isfinite(y)) \
            and all(np.all(np.isfinite(np.asarray(replaced.get(n, getattr(example, n)), np.float64)))
                    for n in ("x", "gamma", "beta")):
        observation.nonfinite_forward = True
    return arrays


def checked_gradients(example: Example, result, method: str, names, x_shape) -> tuple[np.ndarray, ...]:
    """The arrays a backward-like ``method`` returns: dx-like ones (``d``/``g`` of x or dy) shaped like x, the
    parameter ones like gamma."""
    arrays = output_arrays(result, method, names)
    layout = example.layout
    channels = example.spec.grouping.channel_axis
    p = protocol(example.layer)
    fields = ("gx", "gdy", *p.field_gradients, *(g for g in p.second_order if g != "ggamma"))
    for name, array in zip(names, arrays):
        if name in fields:
            check_layout(array, x_shape, f"{name} from {method}", "the shape of x", channels)
        else:
            check_layout(array, layout.parameter_shape, f"{name} from {method}",
                         f"gamma's shape, {layout.parameter_meaning}", channels)
    return arrays


def call_backward(impl: Implementation, example: Example, *, dtype=None, method="backward", **replaced):
    """(dx, dgamma[, dbeta]) from the implementation's ``method`` (backward, or eval_backward), checked: dx shaped
    like x, the parameter gradients like gamma."""
    result = call(impl, example, method, dtype=dtype, **replaced)
    return checked_gradients(example, result, method, protocol(example.layer).gradients,
                             np.shape(replaced.get("x", example.x)))


def call_double_backward(impl, example: Example, cotangents, *, dtype=None, method="double_backward",
                         **replaced) -> tuple[np.ndarray, ...]:
    """(gx, ggamma, gdy) from the implementation's ``method`` (double_backward, or eval_double_backward) for the
    cotangents (ggx, gggamma[, ggbeta])."""
    p = protocol(example.layer)
    replaced.update(zip(p.cotangents, cotangents))
    result = call(impl, example, method, dtype=dtype, **replaced)
    return checked_gradients(example, result, method, p.second_order, example.x.shape)


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



# ----- helpers -----

def _bound(example: Example, ref=None, **keywords) -> LayerBound:
    return LayerBound(example, ref or reference.forward(example), **keywords)


def _group(example: Example) -> str:
    """What one group of the example's layer is called in a message ("channel", "group")."""
    return example.spec.grouping.group_noun


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def scale_offset(example: Example) -> float:
    """What a layer adds to gamma to scale the normalised input: y = (gamma + offset) x_hat (+ beta), the offset
    being 1 - the neutral gamma (``LayerSpec.neutral_values``: the gamma that leaves x_hat unscaled, as the
    derivation proves). 0 for the textbook layers (y = gamma x_hat), 1 for those that scale by 1 + gamma (Gemma's RMS
    norm, adaptive layer norm)."""
    return 1.0 - float(example.spec.neutral_values["gamma"])


def gamma_for_scale(example: Example, scale) -> np.ndarray:
    """gamma (gamma-shaped, in the example's dtype) whose scale of x_hat is ``scale``, a number or gamma-shaped."""
    return (np.broadcast_to(np.asarray(scale, np.float64), example.gamma.shape)
            - scale_offset(example)).astype(example.dtype)


def _neutral(example: Example, parameter: str) -> np.ndarray:
    """The parameter at its neutral value (gamma-shaped): y is then the normalised input."""
    return np.full(example.gamma.shape, example.spec.neutral_values[parameter], example.dtype)


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


def _power_of_two(example: Example, salt: int, largest: float) -> float:
    """A power of two k != 1 with |k x| representable in the dtype: scaling by it is exact."""
    rng = example.rng(salt)
    k = float(2.0 ** rng.choice([-2, -1, 1, 2]))
    if k > 1 and largest * k > float(np.finfo(example.dtype).max) / 4:
        k = 1 / k
    return k


def _per_group_constant(example: Example, values) -> np.ndarray:
    """``values`` (one per group) as an array shaped like x, constant over each group."""
    layout = example.layout
    return np.broadcast_to(_f64(values).reshape(layout.statistics_broadcast), layout.grouped).reshape(layout.shape)


def second_dy(example: Example, salt: int) -> np.ndarray:
    """Another upstream gradient for the example, random, in its dtype: scaled as the example's dy is, by a power of
    two when needed, so that its exact gradients are within the dtype's range (:mod:`bnsym.testing.representable`)."""
    rng = example.rng(salt)
    dy = 10.0 ** rng.uniform(-1, 1) * rng.standard_normal(example.x.shape)
    scale = dy_scale(example.layout, example.x, example.gamma, dy.astype(example.dtype), example.eps, example.dtype)
    return (scale * dy).astype(example.dtype)


# ----- strategies of their own -----

#: The fewest values per group float64_arithmetic draws: with M = 2 every standardisation without eps (and
#: sqrt(max(var, eps))) gives x_hat = +-1 whatever x is, which would look like a result that ignores small moves of x
#: (:mod:`bnsym.testing.arithmetic`).
FLOAT64_MIN_COUNT = 4


def _float64_examples(space: Space) -> st.SearchStrategy[Example]:
    """Well-conditioned float64 examples of at least FLOAT64_MIN_COUNT values per group."""
    entries = space.entries()
    entries = [e for e in entries if bst.entry_layout(space.layer, *e).count >= FLOAT64_MIN_COUNT] or entries
    return bst.layer_examples(space.layer, dtype="float64", regimes=(spec(space.layer).regimes[0],), shapes=entries,
                              min_eps=space.eps[0], max_eps=space.eps[1])


def _small_examples(space: Space) -> st.SearchStrategy[Example]:
    """Examples of at most EXACT_MAX_COUNT values per group and EXACT_MAX_GROUPS groups, for the exact reference:
    the run's pool entries that are that small, or those of the layer's pool of seed 0."""
    def small(entry) -> bool:
        layout = bst.entry_layout(space.layer, *entry)
        return layout.count <= reference.EXACT_MAX_COUNT and \
            math.prod(layout.statistics_shape) <= reference.EXACT_MAX_GROUPS
    entries = [e for e in space.entries() if small(e)] or \
        [e for e in bst.layer_shape_pool(space.layer) if small(e)]
    return bst.layer_examples(space.layer, dtype=space.dtype, regimes=space.regimes, shapes=entries,
                              min_eps=space.eps[0], max_eps=space.eps[1])


_SINGLE_VALUE_REGIMES = ("well-conditioned", "large offset")


def _single_values(space: Space) -> st.SearchStrategy[Example]:
    """Examples with one value per group: the run's shapes with every axis a group spans shrunk to 1."""
    entries = []
    for shape, size in space.entries():
        layout = bst.entry_layout(space.layer, shape, size)
        if len(layout.grouped) != len(shape):
            continue  # a split axis: its groups cannot hold one value each
        single = (tuple(1 if axis in layout.axes else n for axis, n in enumerate(shape)), size)
        if single not in entries:
            entries.append(single)
    regimes = tuple(r for r in space.regimes if bst.regime_kind(r) in _SINGLE_VALUE_REGIMES)
    eps = bst.epsilons(min_eps=space.eps[0], max_eps=space.eps[1])

    @st.composite
    def examples(draw):
        shape, size = draw(st.sampled_from(entries))
        regime = draw(st.sampled_from(regimes))
        return bst.make_layer_example(space.layer, shape, size, regime, draw(eps), draw(st.integers(0, 2**32 - 1)),
                                      space.dtype)

    return examples()


# ----- structure -----

@register("shapes_and_dtypes", "structure", fields=True)
def _shapes_and_dtypes(impl, example):
    """y has the shape and dtype of x.

    So does each field output of a layer that has them (fused add + RMS norm's h)."""
    for name, y in zip(protocol(example.layer).outputs, call_forward_all(impl, example)):
        if y.dtype != example.dtype:
            raise PropertyFailure(f"{name} has shape {y.shape} and dtype {y.dtype}, expected shape {example.x.shape} "
                                  f"and dtype {example.dtype}")


@register("gradient_shapes_and_dtypes", "structure", needs=("forward", "backward"), fields=True)
def _gradient_shapes_and_dtypes(impl, example):
    """dx has the shape and dtype of x; the parameter gradients have gamma's shape and that dtype."""
    for name, array in zip(protocol(example.layer).gradients, call_backward(impl, example)):
        if array.dtype != example.dtype:
            raise PropertyFailure(f"{name} has shape {array.shape} and dtype {array.dtype}, expected the dtype of x, "
                                  f"{example.dtype}")


@register("float64_arithmetic", "structure", examples=_float64_examples, when=lambda options: False,
          selected_by="a finite-difference property that runs (it is their prerequisite)", concerns=("float64",),
          fields=True)
def _float64_arithmetic(impl, example):
    """float64 input is computed in float64 (the finite-difference properties evaluate the implementation there).

    A y far from the reference is taken for a shorter arithmetic only when its values show one
    (:mod:`bnsym.testing.arithmetic`); otherwise it is a float64 bug of its own, which the other properties report,
    and the finite-difference properties run."""
    ref = reference.forward(example)
    judge_float64(example, call_forward(impl, example), ref.y, FLOAT64_SLACK * _bound(example, ref).forward(),
                  lambda x: call_forward(impl, example, x=x), lambda x: reference.forward(example, x=x).y)


@register("inputs_not_modified", "structure", fields=True)
def _inputs_not_modified(impl, example):
    """forward (and backward, when offered) leave their input arrays unchanged."""
    methods = ["forward"] + (["backward"] if impl.backward is not None else [])
    for method in methods:
        values = arguments(example, method, example.dtype, {})
        names = protocol(example.layer).signatures[method]
        try:
            getattr(impl, method)(*values)
        except Exception as error:
            raise PropertyFailure(f"{method} raised {type(error).__name__}: {error}") from None
        for name, array in zip(names, values):
            if not isinstance(array, np.ndarray):
                continue
            original = getattr(example, name)
            if not np.array_equal(array, original, equal_nan=True):
                index = tuple(int(i) for i in np.argwhere(array != original)[0])
                raise PropertyFailure(f"{method} modified its argument {name} in place",
                                      Worst(name, index, float(original[index]), float(array[index]), 0.0))


@register("finite_outputs", "structure", fields=True)
def _finite_outputs(impl, example):
    """y is finite on finite input (and a constant group gives y = beta for a centred layer)."""
    y = call_forward(impl, example)
    ref = reference.forward(example)
    compare("y", y, ref.y, np.inf)  # finite everywhere
    if ref.centred:
        constant = np.broadcast_to(ref.var == 0, ref.layout.grouped).reshape(ref.layout.shape)
        compare("y of a constant group", np.where(constant, y, 0), np.where(constant, ref.y, 0),
                _bound(example, ref).forward())


@register("finite_gradients", "structure", needs=("forward", "backward"), fields=True)
def _finite_gradients(impl, example):
    """dx and the parameter gradients are finite on finite input."""
    for name, array in zip(protocol(example.layer).gradients, call_backward(impl, example)):
        compare(name, array, np.zeros(array.shape), np.inf)


@register("one_value_per_channel", "structure", examples=_single_values, regimes=_SINGLE_VALUE_REGIMES,
          applies=lambda layer: layer.single_value_error is not None)
def _one_value_per_channel(impl, example):
    """With one value per group (batch norm: shape (1, C) or (1, C, 1, 1)), a clear error, or y = beta and no NaN."""
    try:
        y = impl.forward(*arguments(example, "forward", example.dtype, {}))
    except Exception:
        return  # PyTorch's convention: an error ("Expected more than 1 value per channel when training")
    y = output_array(y, "y from forward", method="forward", expects="y alone, an array shaped like x")
    # The error bound of the forward pass at M = 1, derived as for any M (mean = x, var = 0, x_hat = 0): a fused
    # x * k + (beta - mean * k) with k = gamma / sqrt(eps) returns beta only to about u |x gamma| / sqrt(eps).
    ref = reference.forward(example)
    compare(f"y with one value per {example.spec.grouping.group_noun}", y, ref.y, _bound(example, ref).forward())


# ----- against bnsym's reference and the exact evaluation -----

@register("forward_reference", "reference", long_groups=True, fields=True)
def _forward_reference(impl, example):
    """y agrees with bnsym's float64 reference within the error bound of the dtype, from the derived closed form.

    So does each field output of a layer that has them (fused add + RMS norm's h), within its own bound."""
    ref = reference.forward(example)
    bound = _bound(example, ref)
    outputs = call_forward_all(impl, example)
    compare("y", outputs[0], ref.y, bound.forward())
    for name, actual in zip(protocol(example.layer).outputs[1:], outputs[1:]):
        compare(name, actual, ref.outputs[name], bound.output(name))


@register("backward_reference", "gradients", needs=("forward", "backward"), long_groups=True, fields=True)
def _backward_reference(impl, example):
    """dx and the parameter gradients agree with bnsym's float64 backward within the derived bounds."""
    tolerances = _bound(example).backward(example.dy)
    for name, actual, expected, tolerance in zip(protocol(example.layer).gradients, call_backward(impl, example),
                                                 reference.backward(example), tolerances):
        compare(name, actual, expected, tolerance)


@register("exact_reference", "gradients", needs=("forward", "backward"), examples=_small_examples)
def _exact_reference(impl, example):
    """y and the gradients agree with the derived expressions evaluated exactly (mpmath, 50 digits), M <= 4."""
    bound = _bound(example)
    y, *gradients = reference.exact(example)
    compare("y", call_forward(impl, example), y, bound.forward())
    for name, actual, expected, tolerance in zip(protocol(example.layer).gradients, call_backward(impl, example),
                                                 gradients, bound.backward(example.dy)):
        compare(name, actual, expected, tolerance)


# ----- standardisation -----

@register("standardisation", "standardisation", applies=standardises, fields=True)
def _standardisation(impl, example):
    """With gamma and beta neutral (y = x_hat): per group mean(y) = 0, mean(y^2) = var/(var + eps) (no mean taken:
    ms/(ms + eps)), at the example's eps and at an eps as large as the groups' statistic.

    Each group is the layer's own: a channel, a row, a sample's C/G channels, a sample's channel. The neutral values
    are gamma = 1, beta = 0, or gamma = 0 for a layer that scales by 1 + gamma (``LayerSpec.neutral_values``). The
    moments hold whatever eps is; where eps is much smaller than the statistic both sides of mean(y^2) are close to 1
    whatever the statistic is taken over, so the second eps (a power of two near the median statistic, exact in every
    dtype) is where statistics over the wrong values (the last axis alone, when several are normalised) show."""
    _moments(impl, example)
    larger = _eps_near_statistic(example)
    if larger is not None:
        _moments(impl, example.replace(eps=larger), f" at eps = {larger:g}")


def _eps_near_statistic(example: Example) -> float | None:
    """A power of two near the median of the groups' statistic (var, or ms), when it is well above the example's eps
    and well within the dtype's range; None otherwise (every group constant, or the statistic near eps already)."""
    statistic = reference.forward(example).statistic
    positive = statistic[statistic > 0]
    if positive.size == 0:
        return None
    eps = float(2.0 ** np.round(np.log2(np.median(positive))))
    info = np.finfo(example.dtype)
    if eps < 16 * example.eps or not (float(info.tiny) / info.eps <= eps <= float(info.max) ** 0.5 / 16):
        return None
    return eps


def _moments(impl, example: Example, where: str = "") -> None:
    unscaled = _neutral(example, "gamma")
    zeros = np.zeros(example.gamma.shape, example.dtype)
    ref = reference.forward(example, gamma=unscaled, beta=zeros)
    tol = ref.grouped(_bound(example, ref, gamma=unscaled, beta=zeros).forward())
    y = call_forward(impl, example, gamma=unscaled, beta=zeros)
    compare(f"y{where}", y, ref.y, np.inf)  # finiteness; the values are judged through the moments below
    y, exact = ref.grouped(y), ref.grouped(ref.y)
    axes, shape = ref.layout.axes, ref.layout.statistics_shape
    slack = LayerBound(example, ref, gamma=unscaled, beta=zeros).slack

    def mean(values):
        return np.mean(values, axis=axes).reshape(shape)

    if ref.centred:
        compare(f"mean(y) per {_group(example)}{where}", mean(y), np.zeros(shape),
                mean(tol) + slack(exact) / ref.count)
    target = (ref.statistic / (ref.statistic + example.eps)).reshape(shape)
    compare(f"mean(y^2) per {_group(example)}{where}", mean(y**2), target,
            mean(2 * np.abs(exact) * tol + tol**2) + slack(exact**2) / ref.count)


def _equal_groups(example: Example) -> np.ndarray:
    """x with every group holding a permutation of the first group's values: all groups share their statistics."""
    layout = example.layout
    grouped = _f64(example.x).reshape(layout.grouped)
    rows = reference.by_group(grouped, layout)
    rng = example.rng(12)
    rows = np.stack([rng.permutation(rows[0]) for _ in rows])
    return reference.from_groups(rows, layout).astype(example.dtype)


@register("identity_recovery", "standardisation", applies=rests_on(UNDONE))
def _identity_recovery(impl, example):
    """With every group a permutation of one set of values, a scale of sqrt(stat + eps) and beta = mean give y = x.

    It rests on :func:`bnsym.symbolic.invariances.normalisation_undone`, proved for one group; the groups hold the
    same values so that one choice of the (shared) parameters suits them all.

    The scale is gamma's (gamma + 1 for a layer that scales by 1 + gamma: :func:`scale_offset`)."""
    x = _equal_groups(example)
    ref = reference.forward(example, x=x)
    statistic = ref.statistic.flat[0]
    mean = ref.mean.flat[0] if ref.centred else 0.0
    gamma = gamma_for_scale(example, np.sqrt(statistic + example.eps))
    beta = np.full(example.gamma.shape, mean).astype(example.dtype)
    # gamma and beta are rounded to the dtype: the reference says how far from x that moves the exact result.
    recovered = reference.forward(example, x=x, gamma=gamma, beta=beta)
    tolerance = LayerBound(example, recovered, gamma=gamma, beta=beta).forward() + np.abs(recovered.y - _f64(x))
    scale = "1 + gamma" if scale_offset(example) == 1 else "gamma"
    what = f"y with {scale} = sqrt(var + eps), beta = mean" if ref.centred else f"y with {scale} = sqrt(ms + eps)"
    compare(what, call_forward(impl, example, x=x, gamma=gamma, beta=beta), _f64(x), tolerance)


# ----- invariances and equivariances -----

@register("shift_invariance", "invariances", applies=rests_on("shift"))
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


@register("scale_covariance", "invariances", applies=rests_on("scale"))
def _scale_covariance(impl, example):
    """y(k x; k^2 eps) = y(x; eps), with k a power of two so that k x is exact."""
    x = _f64(example.x)
    k = _power_of_two(example, 2, float(np.max(np.abs(x))))
    scaled = (k * x).astype(example.dtype)
    eps = k * k * example.eps
    ref, ref_scaled = reference.forward(example), reference.forward(example, x=scaled, eps=eps)
    _compare_runs(f"y(k x; k^2 eps) - y(x; eps) with k = {k:g}", call_forward(impl, example),
                  call_forward(impl, example, x=scaled, eps=eps), ref.y, ref_scaled.y,
                  _bound(example, ref).forward(), _bound(example.replace(eps=eps), ref_scaled).forward())


@register("batch_permutation_equivariance", "invariances")
def _batch_permutation(impl, example):
    """Permuting the samples (axis 0) permutes y the same way."""
    permutation = example.rng(3).permutation(example.x.shape[0])
    permuted = example.x[permutation]
    ref, ref_permuted = reference.forward(example), reference.forward(example, x=permuted)
    y = call_forward(impl, example)
    _compare_runs("y(x[p]) - y(x)[p]", y[permutation], call_forward(impl, example, x=permuted), ref.y[permutation],
                  ref_permuted.y, _bound(example, ref).forward()[permutation],
                  _bound(example, ref_permuted).forward())


def _relayout(example: Example) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A re-arrangement of the axes a group spans, the batch axis among them (the others stay), and its description.

    With two such axes or more, they are rotated by one, so the batch axis always moves (batch norm's NCHW becomes
    HCWN); with the batch axis alone, (N, C) becomes (1, C, N), its samples laid out as positions."""
    ndim = example.x.ndim
    reduced = list(example.layout.axes)
    kept = [a for a in range(ndim) if a not in reduced]
    if len(reduced) == 1:
        return (lambda a: np.moveaxis(a, 0, -1)[None]), "(N, C) -> (1, C, N)"
    # One rotation per shape, not one per example: a compiled implementation compiles once per new shape.
    rotated = reduced[1:] + reduced[:1]
    order = list(range(ndim))
    for position, axis in zip(reduced, rotated):
        order[position] = axis
    assert all(order[a] == a for a in kept)
    return (lambda a: np.transpose(a, order)), f"axes {tuple(order)}"


@register("layout_equivariance", "invariances", applies=lambda layer: not layer.grouping.per_sample)
def _layout_equivariance(impl, example):
    """Re-arranging the axes a group spans, the batch axis among them (NCHW as HCWN, (N, C) as (1, C, N)),
    re-arranges y the same way."""
    transform, description = _relayout(example)
    moved = np.ascontiguousarray(transform(example.x))
    moved_example = example.replace(x=moved, dy=np.ascontiguousarray(transform(example.dy)))
    ref = reference.forward(example)
    ref_moved = reference.forward(moved_example)
    y = call_forward(impl, example)
    _compare_runs(f"y after re-arranging x by {description}", transform(y), call_forward(impl, moved_example),
                  transform(ref.y), ref_moved.y, transform(_bound(example, ref).forward()),
                  _bound(moved_example, ref_moved).forward())


def _feature_permutation(example: Example):
    """A permutation of the parameter positions that maps every group onto itself or onto another group, as an index
    array for ``np.take_along_axis`` on the grouped layout's axis ``axis``, and a description.

    The axis is the last one the parameters live on: where the groups span it (the normalised axes, a group's
    channels), each position of the parameter axes the groups do not span gets its own permutation of it (the
    channels within each group); where they do not (a channel per group), the groups themselves are permuted. A
    layer whose parameters are scalars (shape ()) lives on no axis: the last axis of its groups is permuted, the
    same way in every group, and the parameters stay."""
    layout = example.layout
    on_parameter = [a for a in range(len(layout.grouped)) if a not in layout.parameter_axes]
    axis = on_parameter[-1] if on_parameter else layout.axes[-1]
    rng = example.rng(13)
    within = axis in layout.axes
    outer = [a for a in on_parameter[:-1] if a not in layout.axes] if within else []
    shape = [1] * len(layout.grouped)
    for a in (*outer, axis):
        shape[a] = layout.grouped[a]
    count = math.prod(shape) // layout.grouped[axis]
    # The outer axes precede the axis (both are in increasing order): one permutation per outer position, in order.
    index = np.stack([rng.permutation(layout.grouped[axis]) for _ in range(count)]).reshape(shape)
    if within:
        return index, axis, f"the features within each {example.spec.grouping.group_noun}"
    return index, axis, "the channels" if example.spec.grouping.channel_axis else f"axis {axis}"


@register("feature_permutation_equivariance", "invariances")
def _feature_permutation_equivariance(impl, example):
    """Permuting features with gamma and beta, keeping each group together, permutes y the same way.

    Layer and RMS norm: the last axis; group norm: the channels within each group; instance norm: the channels."""
    index, axis, description = _feature_permutation(example)
    layout = example.layout

    def permuted(values, shape):
        grouped = np.asarray(values).reshape(shape)
        return np.take_along_axis(grouped, np.broadcast_to(index, grouped.shape), axis=axis)

    def field(values):
        return permuted(values, layout.grouped).reshape(layout.shape)

    def parameter(values):
        if layout.parameter_broadcast[axis] == 1:  # a scalar parameter: the same for every feature
            return values
        return permuted(values, layout.parameter_broadcast).reshape(example.gamma.shape)

    x, gamma, beta = field(example.x), parameter(example.gamma), parameter(example.beta)
    ref = reference.forward(example)
    ref_permuted = reference.forward(example, x=x, gamma=gamma, beta=beta)
    y = call_forward(impl, example)
    _compare_runs(f"y after permuting {description} - y permuted", field(y),
                  call_forward(impl, example, x=x, gamma=gamma, beta=beta), field(ref.y), ref_permuted.y,
                  field(_bound(example, ref).forward()),
                  _bound(example, ref_permuted, gamma=gamma, beta=beta).forward())


@register("sample_independence", "invariances", applies=lambda layer: layer.grouping.per_sample)
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

STEP = 2.0**-17  # about the cube root of the float64 epsilon: balances truncation (h^2) and rounding (u/h)


def central(along) -> tuple[float, float]:
    """Central differences at h and 2h: (estimate, truncation bound |D(2h) - D(h)|, three times the h^2 term)."""
    d = {h: (along(h) - along(-h)) / (2 * h) for h in (STEP, 2 * STEP)}
    return d[STEP], abs(d[2 * STEP] - d[STEP])


def pair(gradients, directions) -> float:
    return math.fsum(float(np.sum(_f64(g) * d)) for g, d in zip(gradients, directions))


def float64_example(example: Example) -> Example:
    names = ("x", "gamma", "beta", "dy", *(name for name, _ in example.fields))
    return example.replace(**{n: _f64(getattr(example, n)) for n in names})


def _directional_derivative(impl, example: Example):
    """A central difference of sum_o <d_o, o> over the outputs o (y, and a layer's field outputs with their
    upstream gradients: <dy, y> + <dh, h>) along a random direction of (x, field inputs, parameters), in float64:
    each field input's direction scaled per group by 1/s, so that a step h moves x_hat by about h. Returns the
    float64 example, the estimate, its error bound (truncation plus rounding: the forward bounds over 2h) and the
    directions, in the order of the backward's gradients."""
    p = protocol(example.layer)
    names = (*p.inputs, *p.parameters)
    ex = float64_example(example)
    ref = reference.forward(ex)
    rng = example.rng(5)
    directions = [(rng.standard_normal(ref.layout.grouped) / ref.scale).reshape(ex.x.shape) for _ in p.inputs]
    directions += [rng.standard_normal(ex.gamma.shape) for _ in p.parameters]
    upstream = [getattr(ex, d) for d in p.upstream]
    expected = [ref.y, *(ref.outputs[o] for o in p.outputs[1:])]

    def along(h):
        moved = {n: getattr(ex, n) + h * d for n, d in zip(names, directions)}
        outputs = call_forward_all(impl, ex, **moved)
        for name, output, reference_output in zip(p.outputs, outputs, expected):
            compare(f"{name} (float64, for finite differences)", output, reference_output, np.inf)
        return math.fsum(np.concatenate([(d * _f64(o)).ravel() for d, o in zip(upstream, outputs)]))

    estimate, truncation = central(along)
    bound = _bound(ex, ref)
    bounds = [bound.forward(), *(bound.output(o) for o in p.outputs[1:])]
    rounding = 2 * sum(float(np.sum(np.abs(d) * b)) for d, b in zip(upstream, bounds)) / (2 * STEP)
    return ex, estimate, SAFETY_FD * (rounding + truncation), directions


SAFETY_FD = 8.0  # the safety factor of a finite-difference estimate's error bound


@register("forward_derivative", "gradients", requires=("float64_arithmetic",), applies=differentiable,
          fields=True)
def _forward_derivative(impl, example):
    """The forward's own derivative, by central differences in float64, matches bnsym's gradient."""
    ex, estimate, error, directions = _directional_derivative(impl, example)
    products = [_f64(g) * d for g, d in zip(reference.backward(ex), directions)]
    compare("<dy, J u> by central differences", estimate, pair(reference.backward(ex), directions),
            error + _bound(ex).slack(*products))


@register("backward_finite_differences", "gradients", needs=("forward", "backward"),
          requires=("float64_arithmetic",), applies=differentiable, fields=True)
def _backward_finite_differences(impl, example):
    """<backward(dy), u> equals central differences of forward along u (float64)."""
    ex, estimate, error, directions = _directional_derivative(impl, example)
    gradients = call_backward(impl, ex)
    tolerances = _bound(ex).backward(ex.dy)
    error += sum(float(np.sum(t * np.abs(d))) for t, d in zip(tolerances, directions))
    compare("<backward(dy), u> against central differences of the forward along u", pair(gradients, directions),
            estimate, error, labels=FINITE_DIFFERENCE_LABELS)


# ----- identities of the backward pass -----

@register("dx_sums_to_zero", "identities", needs=("forward", "backward"), applies=rests_on("dx_sums_to_zero"))
def _dx_sums_to_zero(impl, example):
    """sum(dx) = 0 per group."""
    dx = call_backward(impl, example)[0]
    ref = reference.forward(example)
    compare("dx", dx, np.zeros(example.x.shape), np.inf)
    tol_dx = _bound(example, ref).backward(example.dy)[0]
    compare(f"sum(dx) per {_group(example)}", _per_group(ref, dx), np.zeros(ref.layout.statistics_shape),
            _per_group(ref, tol_dx) + LayerBound(example, ref).slack(_f64(dx)))


@register("dx_xhat_identity", "identities", needs=("forward", "backward"),
          applies=rests_on("dx_orthogonal_to_x", STANDARDISED))
def _dx_xhat_identity(impl, example):
    """sum(dx x_hat) = s eps/(stat + eps) sum(gamma dy x_hat) per group, stat = var (no mean taken: ms).

    The gradient form of scale invariance: dx is orthogonal to x_hat up to the effect of eps. gamma here is the scale
    of x_hat (1 + gamma for a layer that scales by 1 + gamma)."""
    dx = call_backward(impl, example)[0]
    ref = reference.forward(example)
    compare("dx", dx, np.zeros(example.x.shape), np.inf)
    bound = _bound(example, ref)
    factor = ref.scale * example.eps / (ref.statistic + example.eps)
    gamma_dy = (ref.parameter(example.gamma) + scale_offset(example)) * ref.grouped(example.dy)
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
    compare(f"sum(dx * x_hat) per {_group(example)}", np.sum(product, axis=axes).reshape(shape), expected,
            tolerance.reshape(shape) + bound.slack(product, gamma_dy * ref.x_hat))


@register("dbeta_is_sum_dy", "identities", needs=("forward", "backward"), applies=with_beta)
def _dbeta_is_sum_dy(impl, example):
    """dbeta = sum(dy) over the groups that share each beta."""
    dbeta = call_backward(impl, example)[2]
    ref = reference.forward(example)
    bound = _bound(example, ref)
    compare("dbeta", dbeta, _over_shared(ref, example.dy, example.gamma.shape),
            bound.backward(example.dy)[2] + bound.slack(example.dy))


@register("dgamma_is_sum_dy_xhat", "identities", needs=("forward", "backward"), applies=standardises)
def _dgamma_is_sum_dy_xhat(impl, example):
    """dgamma = sum(dy * x_hat) over the groups that share each gamma."""
    dgamma = call_backward(impl, example)[1]
    ref = reference.forward(example)
    terms = ref.grouped(example.dy) * ref.x_hat
    bound = _bound(example, ref)
    compare("dgamma", dgamma, _over_shared(ref, terms, example.gamma.shape),
            bound.backward(example.dy)[1] + bound.slack(terms))


@register("linearity_in_dy", "identities", needs=("forward", "backward"), fields=True)
def _linearity_in_dy(impl, example):
    """backward(a dy) = a backward(dy) for a negative a, and backward(dy1 + dy2) = backward(dy1) + backward(dy2).

    For a layer with field outputs the upstream gradients move together: (a dy, a dh), (dy1 + dy2, dh1 + dh2)."""
    a = -float(2.0 ** example.rng(6).integers(-1, 2))
    ref = reference.forward(example)
    bound = _bound(example, ref)
    upstream = protocol(example.layer).upstream
    first = {d: getattr(example, d) for d in upstream}
    second = {d: second_dy(example, 7 + k) for k, d in enumerate(upstream)}
    total = {d: (_f64(first[d]) + second[d]).astype(example.dtype) for d in upstream}
    scaled = {d: a * first[d] for d in upstream}
    runs = {name: call_backward(impl, example, **values) for name, values in (("1", first), ("a", scaled),
                                                                              ("2", second), ("sum", total))}
    names = protocol(example.layer).gradients
    for run in runs.values():
        compare("dx", run[0], np.zeros(example.x.shape), np.inf)  # finiteness
    tol1, tol2, tol_sum = (bound.backward(**values) for values in (first, second, total))
    refs = [reference.backward(example, **values) for values in (first, second, total)]
    scaled_words = upstream[0] if len(upstream) == 1 else f"({', '.join(upstream)})"
    for i, name in enumerate(names):
        f = {run: _f64(values[i]) for run, values in runs.items()}
        compare(f"backward({a:g} {scaled_words}) - {a:g} backward({', '.join(upstream)}): {name}",
                f["a"] - a * f["1"], np.zeros(f["1"].shape), 2 * abs(a) * tol1[i])
        compare(f"backward(dy1 + dy2) - backward(dy1) - backward(dy2): {name}", f["sum"] - f["1"] - f["2"],
                refs[2][i] - refs[0][i] - refs[1][i], tol1[i] + tol2[i] + tol_sum[i])


@register("dx_scales_with_gamma", "identities", needs=("forward", "backward"))
def _dx_scales_with_gamma(impl, example):
    """dx(2 gamma) = 2 dx(gamma); the parameter gradients do not depend on gamma.

    gamma is the scale of x_hat: for a layer that scales by 1 + gamma, 1 + gamma doubles."""
    ref = reference.forward(example)
    gamma2 = gamma_for_scale(example, 2 * (_f64(example.gamma) + scale_offset(example)))
    if not np.all(np.isfinite(gamma2)):
        return
    one, two = call_backward(impl, example), call_backward(impl, example, gamma=gamma2)
    for array in (*one, *two):
        compare("gradient", array, np.zeros(array.shape), np.inf)
    tol = _bound(example, ref).backward(example.dy)
    tol2 = _bound(example, ref, gamma=gamma2).backward(example.dy)
    for i, name in enumerate(protocol(example.layer).gradients):
        factor = 2.0 if i == 0 else 1.0
        compare(f"backward at 2 gamma vs at gamma (dx doubles, the parameter gradients stay): {name}",
                _f64(two[i]) - factor * _f64(one[i]), np.zeros(np.shape(tol[i])), tol2[i] + factor * tol[i])


@register("dx_invariant_to_dy_shift", "identities", needs=("forward", "backward"),
          applies=rests_on("jacobian_symmetric", "dx_sums_to_zero"))
def _dx_invariant_to_dy_shift(impl, example):
    """Adding a constant per group to dy leaves dx and dgamma unchanged (gamma is one value per group).

    dx(dy + c) - dx(dy) = c J^T 1 per group (J_ij = dy_i/dx_j): zero when J 1 = 0 (sum(dx) = 0 for every dy) and J is
    symmetric with the parameters as declared, which is what it rests on (with gamma varying within a group, J is
    diag(gamma) times a symmetric matrix and J^T 1 is not zero)."""
    rng = example.rng(8)
    layout = example.layout
    c = rng.standard_normal(math.prod(layout.statistics_shape)) * 10.0 ** rng.uniform(-1, 1)
    dy = _f64(example.dy)
    shift = _per_group_constant(example, c)
    # The shift scaled as dy is (bnsym.testing.representable): dx(dy + c) is dx(dy) exactly, but an implementation
    # forms gamma s (dy + c) on the way, which must stay within the dtype's range (float16 at eps = 1e-12).
    scale = dy_scale(layout, example.x, example.gamma, (dy + shift).astype(example.dtype), example.eps,
                     example.dtype)
    shifted = (dy + scale * shift).astype(example.dtype)
    ref = reference.forward(example)
    bound = _bound(example, ref)
    first, second = call_backward(impl, example), call_backward(impl, example, dy=shifted)
    ref_first, ref_second = reference.backward(example), reference.backward(example, dy=shifted)
    for i, name in ((0, "dx"), (1, "dgamma")):
        _compare_runs(f"{name}(dy + c) - {name}(dy)", first[i], second[i], ref_first[i], ref_second[i],
                      bound.backward(dy)[i], bound.backward(shifted)[i])


@register("jacobian_symmetry", "identities", needs=("forward", "backward"), applies=rests_on(CONSTANT_PARAMETERS))
def _jacobian_symmetry(impl, example):
    """The Jacobian of x_hat is symmetric per group: <dx(v), gamma u> = <dx(u), gamma v> per group (gamma the scale
    of x_hat: 1 + gamma for a layer that scales by 1 + gamma)."""
    v, u = example.dy, second_dy(example, 9)
    dx_v, dx_u = call_backward(impl, example, dy=v)[0], call_backward(impl, example, dy=u)[0]
    for dx in (dx_v, dx_u):
        compare("dx", dx, np.zeros(example.x.shape), np.inf)
    ref = reference.forward(example)
    bound = _bound(example, ref)
    gamma = ref.parameter(example.gamma) + scale_offset(example)
    gu, gv = gamma * ref.grouped(u), gamma * ref.grouped(v)
    axes, shape = ref.layout.axes, ref.layout.statistics_shape

    def pairing(dx, other):
        return np.sum(ref.grouped(dx) * other, axis=axes).reshape(shape)

    ref_v, ref_u = reference.backward(example, dy=v)[0], reference.backward(example, dy=u)[0]
    tolerance = (pairing(bound.backward(v)[0], np.abs(gu)) + pairing(bound.backward(u)[0], np.abs(gv)))
    compare(f"<dx(v), gamma u> - <dx(u), gamma v> per {_group(example)}", pairing(dx_v, gu) - pairing(dx_u, gv),
            pairing(ref_v, gu) - pairing(ref_u, gv),
            tolerance + bound.slack(ref.grouped(ref_v) * gu, ref.grouped(ref_u) * gv))


@register("dgamma_affine_invariance", "invariances", needs=("forward", "backward"),
          applies=rests_on("shift", "scale"))
def _dgamma_affine_invariance(impl, example):
    """dgamma is unchanged by x -> k x + c (c per group) with eps -> k^2 eps (x_hat does not change).

    It rests on y's shift and scale invariances: y = (scale) x_hat (+ beta) is unchanged, so x_hat is, and so
    dgamma = sum(dy x_hat)."""
    x = _f64(example.x)
    k = _power_of_two(example, 10, float(np.max(np.abs(x))) + 10)
    rng = example.rng(11)
    groups = math.prod(example.layout.statistics_shape)
    c = rng.standard_normal(groups) * 10.0 ** rng.uniform(0, 1, groups)
    moved = (k * x + _per_group_constant(example, c)).astype(example.dtype)
    if not np.all(np.isfinite(moved)):
        return
    eps = k * k * example.eps
    ref, ref_moved = reference.forward(example), reference.forward(example, x=moved, eps=eps)
    first = call_backward(impl, example)[1]
    second = call_backward(impl, example, x=moved, eps=eps)[1]
    _compare_runs(f"dgamma(k x + c; k^2 eps) - dgamma(x; eps) with k = {k:g}", first, second,
                  reference.backward(example)[1], reference.backward(example, x=moved, eps=eps)[1],
                  _bound(example, ref).backward(example.dy)[1],
                  _bound(example.replace(eps=eps), ref_moved).backward(example.dy)[1])


# ----- second order -----

def cotangents(example: Example, salt: int) -> list[np.ndarray]:
    """Random ggx (and one per field input, like x) and parameter cotangents (like gamma) in the dtype: never ones,
    never zero."""
    rng = example.rng(salt)
    count = len(example.spec.parameters)
    # ggx and one per field input (like x), then one per parameter (like gamma)
    fields = [rng.standard_normal(example.x.shape).astype(example.dtype) for _ in example.spec.inputs]
    return fields + [rng.standard_normal(example.gamma.shape).astype(example.dtype) for _ in range(count)]


def unrepresentable(example: Example, expected, tolerance) -> np.ndarray:
    """Where the dtype cannot hold the result or its error bound: second derivatives grow as s^2 and s^3, beyond
    float16's range for a variance near eps, and there nothing can be judged."""
    return np.abs(expected) + tolerance > float(np.finfo(example.dtype).max)


@register("double_backward_reference", "second order", needs=("double_backward",), when=second_order, fields=True)
def _double_backward_reference(impl, example):
    """gx, ggamma, gdy agree with bnsym's float64 double backward within the bounds of the derived forms."""
    given = cotangents(example, 30)
    expected = reference.double_backward(example, given)
    tolerances = _bound(example).double_backward(given, example.dy)
    for name, a, e, t in zip(protocol(example.layer).second_order, call_double_backward(impl, example, given),
                             expected, tolerances):
        beyond = unrepresentable(example, e, t)
        compare(name, np.where(beyond, e, a) if a.shape == e.shape else a, e, t)


@register("double_backward_finite_differences", "second order", needs=("backward", "double_backward"),
          when=second_order, requires=("float64_arithmetic",), applies=differentiable, fields=True)
def _double_backward_finite_differences(impl, example):
    """The double backward equals central differences of the implementation's own backward (float64)."""
    p = protocol(example.layer)
    ex = float64_example(example)
    given = [_f64(c) for c in cotangents(example, 31)]
    ref = reference.forward(ex)
    rng = example.rng(32)
    # x (and each field input) along a direction scaled by 1/s, gamma, then dy (and each upstream gradient): the
    # order of the double backward's results
    u_fields = [(rng.standard_normal(ref.layout.grouped) / ref.scale).reshape(ex.x.shape) for _ in p.inputs]
    ug = rng.standard_normal(ex.gamma.shape)
    u_upstream = [rng.standard_normal(ex.x.shape) for _ in p.upstream]
    moved_names = (*p.inputs, "gamma", *p.upstream)
    directions = (*u_fields, ug, *u_upstream)

    def along(h):
        moved = {n: getattr(ex, n) + h * d for n, d in zip(moved_names, directions)}
        return pair(call_backward(impl, ex, **moved), given)

    estimate, truncation = central(along)
    bound = _bound(ex, ref)
    rounding = sum(float(np.sum(np.abs(c) * t)) for c, t in zip(given, bound.backward(ex.dy))) / STEP
    error = SAFETY_FD * (truncation + rounding)
    tolerances = _bound(example).double_backward(given, example.dy)
    error += sum(float(np.sum(t * np.abs(u))) for t, u in zip(tolerances, directions))
    words = ", ".join(f"u_{n}" for n in moved_names)
    compare(f"<double_backward, ({words})> - central differences of backward",
            pair(call_double_backward(impl, ex, given), directions), estimate, error)


@register("hessian_symmetry", "second order", needs=("double_backward",), when=second_order)
def _hessian_symmetry(impl, example):
    """The Hessian of <dy, y> with respect to x is symmetric: <gx(ggx = u), v> = <gx(ggx = v), u> per group."""
    u, v = second_dy(example, 33), second_dy(example, 34)
    zeros = [np.zeros(example.gamma.shape, example.dtype)] * len(example.spec.parameters)
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
    if unrepresentable(example, ref_u, tol_u).any() or unrepresentable(example, ref_v, tol_v).any():
        return  # the dtype cannot hold gx: nothing to judge
    for gx in (gx_u, gx_v):
        compare("gx", gx, np.zeros(example.x.shape), np.inf)
    compare("<gx(u), v> - <gx(v), u> per group", pairing(gx_u, v64) - pairing(gx_v, u64),
            pairing(ref_u, v64) - pairing(ref_v, u64),
            pairing(tol_u, np.abs(v64)) + pairing(tol_v, np.abs(u64))
            + bound.slack(ref.grouped(ref_u) * v64, ref.grouped(ref_v) * u64))
