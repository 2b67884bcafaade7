"""Runs properties under Hypothesis and collects a :class:`~bnsym.testing.results.Report`.

Each property runs as its own Hypothesis test with a fixed seed (so a run is reproducible), no example database
(nothing is written to the user's directory unless a save directory is given) and no deadline. Hypothesis
shrinks a failing example, then replays the minimal one last: the last failure recorded is the minimal
counterexample. Every example's comparisons are watched (:func:`bnsym.testing.failures.observing`) for the
property's margin per regime. A property whose needs the implementation does not offer is skipped, with the
reason; so is one whose prerequisite (``requires``) failed.

Shapes come from a small pool per run (:func:`bnsym.testing.strategies.layer_shape_pool`, fixed by the seed), so
that a compiled implementation compiles a handful of times, not once per example. The layer of the run
(``options.layer``) selects the registry of properties (:func:`bnsym.testing.properties.registry`), the regimes and
the pool.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import InvalidArgument

from bnsym.spec import spec
from bnsym.testing import strategies as bst
from bnsym.testing.adapters import Implementation
from bnsym.testing.failures import PropertyFailure, observing
from bnsym.testing.isolation import ImplementationCrashed
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import Property, Space, registry
from bnsym.testing.results import FAILED, NOTED, PASSED, SKIPPED, Counterexample, PropertyResult, Report
from bnsym.testing.sharded import sharded_regimes
from bnsym.testing.strategies import Example

__all__ = ["call_property", "properties_of_run", "run_properties", "selection"]


def call_property(prop: Property, impl: Implementation, example: Example, options: CheckOptions) -> None:
    """One example of one property; any exception but a PropertyFailure becomes one (a bug in a property, or an
    implementation whose output trips a check, must not pass silently nor crash the report)."""
    try:
        if prop.takes_options:
            prop.check(impl, example, options)
        else:
            prop.check(impl, example)
    except PropertyFailure:
        raise
    except Exception as error:
        raise PropertyFailure(f"checking raised {type(error).__name__}: {error}") from error


def _cause(failure: PropertyFailure, nonfinite_forward: bool, example: Example) -> str:
    if failure.cause:
        return failure.cause
    if nonfinite_forward:
        return "forward: forward returns NaN or infinity on finite input"
    digest = hash(tuple(np.asarray(getattr(example, f)).tobytes() for f in ("x", "gamma", "beta"))
                  + (example.eps, example.num_groups))
    return f"example {digest}"


def _run_one(prop: Property, impl: Implementation, space: Space, max_examples: int, seed: int,
             options: CheckOptions) -> PropertyResult:
    failures: list[tuple[Example, PropertyFailure, str]] = []
    margins: dict[str, float] = {}  # every regime drawn: the worst ratio of its examples (0 when none compared)
    compared: set[str] = set()  # the regimes whose examples compared a number with a tolerance
    drawn: set[tuple] = set()  # the (shape, size) entries of the examples drawn
    count = 0

    def attempt(example: Example) -> None:
        nonlocal count
        count += 1
        drawn.add(_entry(example))
        with observing() as observation:
            try:
                call_property(prop, impl, example, options)
            except PropertyFailure as failure:
                failures.append((example, failure, _cause(failure, observation.nonfinite_forward, example)))
                raise
            except ImplementationCrashed as crash:  # --isolate: the implementation's process died or hung
                failure = PropertyFailure(crash.message + ("; not shrunk, since every attempt could take the whole "
                                                           "timeout" if crash.hung else ""))
                failure.cause = f"crash: {crash.message}"
                failure.shrunk = not crash.hung
                failures.append((example, failure, failure.cause))
                if crash.hung:
                    raise  # a BaseException: Hypothesis lets it through, which ends this property's run (below)
                raise failure from None  # a failed example like any other: Hypothesis shrinks a deterministic crash
            finally:
                if observation.worst or example.regime not in margins:
                    margins[example.regime] = max(margins.get(example.regime, 0.0), observation.worst)
                if observation.compared:
                    compared.add(example.regime)

    def run(examples, size: int) -> PropertyResult | None:
        """Run ``size`` examples of the strategy; a result when the run itself broke (not a property failure)."""
        test = settings(max_examples=size, database=None, deadline=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False,
                        verbosity=Verbosity.quiet, phases=(Phase.explicit, Phase.generate, Phase.shrink))(
            hypothesis_seed(seed)(given(examples)(attempt)))
        # No database, so no key: Hypothesis would otherwise hash the source of `attempt` (inspect.getsource and a
        # parse) on every run, a few milliseconds each, and a whole-library check makes a hundred runs.
        test._hypothesis_internal_database_key = None
        try:
            with np.errstate(all="ignore"):
                test()
        except Exception as error:
            if not failures:
                return PropertyResult(prop.name, FAILED, f"the run raised {type(error).__name__}: {error}", count,
                                      seconds=time.perf_counter() - start)
        return None

    start = time.perf_counter()
    try:
        broken = run(_strategy(prop, space), max_examples)
        # Stratified, not hoped for: a regime the run's draws missed (or, for a property that compares numbers, drew
        # without comparing any: sample_independence with one sample) gets an example of its own, so that every run
        # sees every regime, with its margin. A strategy that does not draw from the space's regimes (one fixed
        # regime, as float64_arithmetic's) shows it on the first such example, and is left alone.
        for regime in space.usable(prop):
            if broken or failures or regime in (compared or margins):
                continue
            broken = run(_strategy(prop, dataclasses.replace(space, regimes=(regime,))), 1)
            if regime not in margins:
                break
        # Every shape of the run's pool, as every regime: a shape the draws missed gets an example of its own, in the
        # regimes it can hold. A bug may show on one shape of six only (statistics over the last axis alone show on
        # layer norm's one entry that normalises two axes both longer than 1), so the verdict must not hang on
        # whether Hypothesis happened to draw it. A strategy that does not draw from the pool (sharded examples, a
        # fixed shape) shows it on the first such example, and is left alone.
        for entry in space.entries() if space.shapes is not None else ():
            if broken or failures or entry in drawn:
                continue
            shape_space = dataclasses.replace(space, shapes=(entry,), regimes=_holdable(prop, space, entry))
            if shape_space.regimes:
                broken = run(_strategy(prop, shape_space), 1)
                if entry not in drawn:
                    break
        # The smallest eps on a constant group, where eps alone keeps 1/sqrt(var + eps) finite: a kernel that
        # rounds eps = 1e-12 to zero in float16 divides by zero there.
        for regime in (r for r in space.usable(prop) if r in bst.CONSTANT_REGIMES):
            if not (broken or failures):
                smallest_eps = dataclasses.replace(space, regimes=(regime,), eps=(space.eps[0],) * 2)
                broken = run(_strategy(prop, smallest_eps), 1)
        # Long groups: each of the run's long shapes, in the regimes it can hold (not the tiny ones).
        for entry in space.long_shapes if prop.long_groups else ():
            long_space = dataclasses.replace(space, shapes=(entry,), regimes=_holdable(prop, space, entry))
            if not (broken or failures) and long_space.regimes:
                broken = run(_strategy(prop, long_space), LONG_EXAMPLES)
        if broken:
            return broken
    except ImplementationCrashed:  # a hang ended the run; its example is the last failure
        pass
    seconds = time.perf_counter() - start
    shown = {regime: ratio for regime, ratio in margins.items() if regime in compared or ratio > 0}
    if failures:
        example, failure, cause = failures[-1]
        counterexample = Counterexample(example, failure, shrunk=getattr(failure, "shrunk", True))
        return PropertyResult(prop.name, FAILED, failure.message, count, counterexample, seconds, shown, cause)
    return PropertyResult(prop.name, PASSED, "", count, seconds=seconds, margins=shown)


def _strategy(prop: Property, space: Space):
    """``prop.examples(space)``, made once per property, space and layer specification: a run asks for the same
    strategy again and again (every regime and shape of its stratified examples, :func:`_holdable`'s tries), and
    making one costs a millisecond or more (Hypothesis reads and parses the source of each ``@st.composite``
    function it wraps). A strategy refused for the space (InvalidArgument) is refused again, with the same error."""
    layer_spec = spec(space.layer)
    key = (prop.examples, space)
    try:
        made = _STRATEGIES.get(key)
    except TypeError:  # a space with an unhashable part (shapes given as lists): made anew
        return prop.examples(space)
    if made is None or made[0] is not layer_spec:
        if len(_STRATEGIES) >= _MOST_STRATEGIES:
            _STRATEGIES.clear()
        try:
            made = (layer_spec, prop.examples(space), None)
        except InvalidArgument as error:
            made = (layer_spec, None, error)
        _STRATEGIES[key] = made
    if made[2] is not None:
        raise InvalidArgument(*made[2].args)
    return made[1]


_STRATEGIES: dict = {}  # (examples, space) -> (the layer's spec, its strategy, or the InvalidArgument it raised)
_MOST_STRATEGIES = 4096


def _entry(example: Example) -> tuple:
    """The pool entry ``(shape, size)`` an example was drawn from."""
    return (tuple(example.x.shape),
            bst.example_size(example.spec, tuple(np.shape(example.gamma)), example.num_groups))


#: Examples per long shape for a property that takes long groups: the simplest (well-conditioned) and one drawn.
LONG_EXAMPLES = 2


def _holdable(prop: Property, space: Space, entry) -> tuple[str, ...]:
    """The regimes of the space that the examples of ``prop`` can draw on the one shape ``entry`` (a strategy
    refuses a regime none of its shapes can hold, such as a tiny group on a long one)."""
    regimes = []
    for regime in space.usable(prop):
        try:
            _strategy(prop, dataclasses.replace(space, shapes=(entry,), regimes=(regime,)))
        except InvalidArgument:
            continue
        regimes.append(regime)
    return tuple(regimes)


def properties_of_run(options: CheckOptions) -> dict[str, Property]:
    """The properties of the layer that a run with ``options`` can call (every method each needs is in the run's
    protocol, ``options.methods``), in registry order, whether the options select them or not."""
    methods = set(options.methods)
    return {name: prop for name, prop in registry(options.layer).items() if prop.needs <= methods}


def selection(options: CheckOptions, properties: list[str] | None, capabilities=None) -> list[str]:
    """The properties to run, in registry order: those named (or those of the run that the options select), and
    what those of them that the implementation can run (its ``capabilities``) require."""
    properties_of_layer = registry(options.layer)
    chosen = set(properties) if properties else {n for n, p in properties_of_run(options).items() if p.when(options)}
    for name in list(chosen):
        prop = properties_of_layer[name]
        if prop.when(options) and (capabilities is None or prop.needs <= capabilities):
            chosen.update(prop.requires)
    return [name for name in properties_of_layer if name in chosen]


def _pool(layer: str, seed: int, shapes) -> tuple:
    """The run's ``(shape, size)`` entries: ``shapes`` (pairs, or bare shapes for a grouping that takes no size), or
    the layer's pool for the seed."""
    return bst.layer_shape_pool(layer, seed) if shapes is None else bst.pool_entries(layer, shapes)


def run_properties(impl: Implementation, *, dtype: np.dtype, max_examples: int, seed: int,
                   properties: list[str] | None = None, options: CheckOptions | None = None,
                   regimes=None, shapes=None) -> Report:
    """The properties that ``options`` select (or those named) on ``impl``, in registry order, on examples of
    ``regimes`` (default: every regime of the layer) with shapes from ``shapes`` (default: the run's pool of
    ``(shape, size)`` pairs, :func:`bnsym.testing.strategies.layer_shape_pool`).

    With ``options.shards`` (the sharded mode) ``impl`` follows the sharded protocol, the default regimes are
    :func:`bnsym.testing.sharded.sharded_regimes`, and the examples draw their own shapes (``shapes`` must be None)."""
    options = options or CheckOptions()
    if options.shards is not None and shapes is not None:
        raise ValueError(f"shapes={shapes!r}: a sharded run draws its own shapes, split into shards; pass None")
    if options.shards is None:
        shapes = _pool(options.layer, seed, shapes)
        regimes = bst.layer_regimes(options.layer) if regimes is None else tuple(regimes)
        space = Space(np.dtype(dtype), regimes, shapes, options.layer,
                      long_shapes=bst.long_shapes(options.layer, shapes, seed))
    else:  # the sharded examples draw their own shapes, split into shards (bnsym.testing.sharded)
        shapes = ()
        regimes = sharded_regimes(options.layer) if regimes is None else tuple(regimes)
        space = Space(np.dtype(dtype), regimes, None, options.layer, shards=options.shards,
                      equal_shards=bool(getattr(impl, "equal_shards", False)))
    report = Report(impl.name, space.dtype.name, seed, max_examples, options=options, regimes=space.regimes,
                    shapes=shapes, long_shapes=space.long_shapes, equal_shards=space.equal_shards)
    start = time.perf_counter()
    selected = selection(options, properties, impl.capabilities)
    properties_of_layer = registry(options.layer)
    report.not_selected = [] if properties else [n for n in properties_of_run(options) if n not in selected]
    verdicts: dict[str, str] = {}
    for name in selected:
        prop = properties_of_layer[name]
        result = _decide_skip(prop, impl, space, options, properties, verdicts)
        if result is None:
            result = _run_one(prop, impl, space, max_examples, seed, options)
            if result.status == FAILED and not prop.concerns_run(space.dtype):
                result.status = NOTED  # found and reported, but not the question of this run's dtype
        verdicts[name] = result.status
        report.results.append(result)
    report.seconds = time.perf_counter() - start
    return report


def _decide_skip(prop, impl, space, options, properties, verdicts) -> PropertyResult | None:
    prerequisite = any(prop.name in other.requires for other in registry(options.layer).values())  # runs if named
    if properties and not prop.when(options) and prop.name in properties and not prerequisite:
        return PropertyResult(prop.name, SKIPPED, f"runs with {prop.selected_by}")
    unavailable = getattr(impl, "unavailable", None)  # the implementation's reason it cannot run here
    if unavailable:
        return PropertyResult(prop.name, SKIPPED, unavailable)
    missing = prop.needs - impl.capabilities
    if missing:
        return PropertyResult(prop.name, SKIPPED, f"needs {', '.join(sorted(missing))}, which the implementation "
                                                  "does not offer")
    failed = [r for r in prop.requires if verdicts.get(r) in (FAILED, NOTED)]
    if failed:
        where = "note" if all(verdicts[r] == NOTED for r in failed) else "failure"
        return PropertyResult(prop.name, SKIPPED, f"needs what {', '.join(failed)} found missing (see its {where})")
    if not space.usable(prop):
        return PropertyResult(prop.name, SKIPPED, f"draws only from the regimes {', '.join(prop.regimes)}, which "
                                                  "the selected regimes leave out")
    return None
