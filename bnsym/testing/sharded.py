"""The sharded check (``bnsym check TARGET --shards K``): a data-parallel batch norm, given the batch split into K
shards, must return what one process returns for the whole batch.

The sharded protocol. An implementation is an object with

- ``sharded_forward(xs, gamma, beta, eps) -> ys``: ``xs`` is a list of K arrays, worker k's shard (N_k, C, ...),
  split along the batch axis; ``ys`` the K outputs. Training mode, statistics over all the shards together;
- ``sharded_backward(dys, xs, gamma, beta, eps) -> (dxs, dgammas, dbetas)``: per shard dx, and each worker's own
  dgamma and dbeta, the data-parallel convention (PyTorch's): the wrapper that synchronises parameter gradients
  sums them, so they must sum to the whole batch's dgamma and dbeta;
- optionally ``sharded_train_forward(xs, gamma, beta, eps, running_mean, running_var, momentum,
  num_batches_tracked) -> (ys, running_means, running_vars)``: a training step from the given running statistics,
  returning every worker's running statistics afterwards (checked with ``--convention``);
- optionally ``equal_shards = True`` when it takes shards of equal size only (then it gets equal shards), and
  ``unavailable``, a reason why it cannot run here (then its properties are skipped with that reason).

NumPy in and out, channel axis 1. Shards may hold one sample, or none (an empty array of shape (0, C, ...)).

What ``--shards`` checks, beyond the unsharded properties of ``bnsym check TARGET``: inputs split unevenly (the
strategies choose the sizes, with shards of one sample, empty shards, and a regime where every shard has its own
offset so that the shard means differ), and

- ``sharded_shapes_and_dtypes``: one output per shard, of the shard's shape and dtype;
- ``sharded_forward_reference``: the outputs, put together, against bnsym's reference for the whole batch (an
  unweighted mean of shard means, a mean of shard variances, local statistics all fail here);
- ``sharded_backward_reference``: the dx of every shard against the whole batch's (a backward that does not
  all-reduce sum(dy) and sum(dy x_hat), or divides them by the wrong count, fails here);
- ``sharded_parameter_gradients``: the workers' dgamma and dbeta sum to the whole batch's (gradients reduced
  twice, by the layer and by the wrapper, are K times too large);
- ``sharded_running_statistics`` (with ``--convention``): every worker holds the running statistics of the whole
  batch, with the global count in Bessel's correction.

Tolerances are those of the unsharded check (:mod:`bnsym.testing.tolerance`) for the whole batch, plus the
rounding of adding K per-worker gradients.
"""

from __future__ import annotations

import argparse
import numbers
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import bnsym
from bnsym.conventions import CONVENTIONS
from bnsym.testing import reference
from bnsym.testing import strategies as bst
from bnsym.testing.adapters import TargetError, resolve
from bnsym.testing.failures import observing
from bnsym.testing.files import write_atomically
from bnsym.testing.naming import counterexample_name
from bnsym.testing.options import CheckOptions, run_arguments
from bnsym.testing.properties import PropertyFailure, compare
from bnsym.testing.results import Verdicts
from bnsym.testing.runner import FAILED, PASSED, SKIPPED, PropertyResult
from bnsym.testing.strategies import Example
from bnsym.testing.tolerance import SAFETY, Bound, unit_roundoff

__all__ = ["SHARDED", "ShardedCheckFailed", "ShardedExample", "ShardedImplementation", "ShardedReport",
           "check_sharded", "load", "run_command", "run_sharded", "sharded_examples"]

#: The regime only the sharded check draws: every shard gets its own offset, so the shard means differ.
DIFFERENT_MEANS = "shards with different means"
#: The regimes of the sharded check: batch norm's, and shards with different means. Every run sees each of them.
SHARDED_REGIMES = (*bst.REGIMES, DIFFERENT_MEANS)
_METHODS = ("sharded_forward", "sharded_backward", "sharded_train_forward")


# ----- examples -----

@dataclass(frozen=True, eq=False)
class ShardedExample:
    """A whole-batch :class:`~bnsym.testing.strategies.Example` and the sizes of its K shards along the batch axis."""

    example: Example
    sizes: tuple[int, ...]

    def split(self, array: np.ndarray) -> list[np.ndarray]:
        """``array`` (N, ...) as the K shards, copies in its dtype."""
        return [np.array(part) for part in np.split(np.asarray(array), np.cumsum(self.sizes)[:-1])]

    def locate(self, index: tuple[int, ...]) -> str:
        """Where element ``index`` of the whole batch lives: "shard k at its index (i, ...)"."""
        row = index[0]
        for k, start in enumerate(np.cumsum((0,) + self.sizes[:-1])):
            if start <= row < start + self.sizes[k]:
                return f"shard {k} at its index {(row - int(start),) + tuple(index[1:])}"
        return f"index {index}"

    def describe(self) -> str:
        return f"{self.example.describe()}, split into {len(self.sizes)} shards of {list(self.sizes)} samples"


def _shard_sizes(draw, batch: int, shards: int) -> tuple[int, ...]:
    """``batch`` samples over ``shards`` workers: cut points anywhere, so shards of 0 and 1 samples come up."""
    cuts = sorted(draw(st.lists(st.integers(0, batch), min_size=shards - 1, max_size=shards - 1)))
    bounds = [0, *cuts, batch]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def sharded_examples(*, dtype="float64", shards: int, equal_shards: bool = False,
                     max_per_shard: int = 4, regimes=None) -> st.SearchStrategy[ShardedExample]:
    """:class:`ShardedExample` problems: a batch of the regimes of
    :func:`bnsym.testing.strategies.batch_norm_examples` (and
    "shards with different means"), split into ``shards`` shards.

    - ``regimes`` (default None: every regime, :data:`SHARDED_REGIMES`): the regimes to draw from.
    - ``dtype`` (default "float64"): the dtype of the arrays.
    - ``shards``: K, the number of shards, at least 1.
    - ``equal_shards`` (default False): every shard the same size (1 to ``max_per_shard`` samples); otherwise
      the sizes are uneven, and may be 0 or 1.
    - ``max_per_shard`` (default 4): with equal shards the largest shard; otherwise the batch has up to
      ``shards * max_per_shard`` samples.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    resolved = np.dtype(dtype)
    names = SHARDED_REGIMES if regimes is None else tuple(regimes)
    unknown = [name for name in names if name not in SHARDED_REGIMES]
    if unknown or not names:
        raise ValueError(f"regimes={regimes!r} must name regimes of the sharded check: {SHARDED_REGIMES}")

    @st.composite
    def examples(draw):
        regime = draw(st.sampled_from(names))
        if equal_shards:
            sizes = (draw(st.integers(1, max_per_shard)),) * shards
        else:
            batch = draw(st.integers(1, shards * max_per_shard))
            sizes = _shard_sizes(draw, batch, shards)
        batch = sum(sizes)
        channels = draw(st.integers(2 if regime == "constant channel" else 1, 3))
        spatial_dims = draw(st.integers(0, 2))
        # "tiny batch": no spatial extent, so that M is the (small) number of samples.
        spatial = tuple(1 if regime == "tiny batch" else draw(st.integers(1, 4)) for _ in range(spatial_dims))
        if batch * int(np.prod(spatial)) < 2:  # training needs two values per channel in all
            spatial = (2,) + spatial[1:] if spatial else (2,)
        eps = draw(bst.epsilons(min_eps=1e-5))  # the sharded check keeps its range (not yet widened to 1e-12)
        seed = draw(st.integers(0, 2**32 - 1))
        base = "well-conditioned" if regime == DIFFERENT_MEANS else regime
        example = bst.make_example((batch, channels, *spatial), base, eps, seed, resolved)
        if regime == DIFFERENT_MEANS:
            example = _offset_shards(example, sizes)
        return ShardedExample(example.replace(regime=regime), sizes)

    return examples()


def _offset_shards(example: Example, sizes) -> Example:
    """Each shard's values moved by its own offset (up to 100 times the spread), in float64 then rounded."""
    rng = example.rng(40)
    offsets = np.repeat(rng.choice([-1.0, 1.0], len(sizes)) * 10.0 ** rng.uniform(-1, 2, len(sizes)), sizes)
    x = example.x.astype(np.float64) + offsets.reshape((-1,) + (1,) * (example.x.ndim - 1))
    return example.replace(x=x.astype(example.dtype))


# ----- the implementation -----

class ShardedImplementation:
    """A data-parallel batch norm under test (module docstring): the protocol's methods, which ones it offers, and
    whether it takes equal shards only or cannot run here."""

    def __init__(self, name: str, sharded_forward: Callable, sharded_backward: Callable | None = None,
                 sharded_train_forward: Callable | None = None, *, equal_shards: bool = False,
                 unavailable: Callable[[], str | None] | str | None = None, close: Callable | None = None):
        if not callable(sharded_forward):
            raise TargetError(f"{name}: sharded_forward must be callable, got {sharded_forward!r}")
        self.name = name
        self.sharded_forward, self.sharded_backward = sharded_forward, sharded_backward
        self.sharded_train_forward = sharded_train_forward
        self.equal_shards = bool(equal_shards)
        self._unavailable = unavailable
        self._close = close

    @property
    def unavailable(self) -> str | None:
        reason = self._unavailable
        return reason() if callable(reason) else reason

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(m for m in _METHODS if getattr(self, m) is not None)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    @classmethod
    def wrap(cls, impl, name: str | None = None) -> ShardedImplementation:
        """An implementation from an object with ``sharded_forward`` (and the other methods of the protocol)."""
        if isinstance(impl, ShardedImplementation):
            return impl
        if isinstance(impl, type):
            try:
                impl = impl()
            except Exception as error:
                raise TargetError(f"{impl.__name__} is a class; bnsym instantiates it with no arguments, which "
                                  f"failed: {type(error).__name__}: {error}") from None
        label = name or getattr(impl, "name", None) or type(impl).__name__
        forward = getattr(impl, "sharded_forward", None)
        if forward is None:
            raise TargetError(f"{label} has no sharded_forward(xs, gamma, beta, eps): --shards checks the sharded "
                              "protocol (see `bnsym check --help` and bnsym.testing.sharded)")
        owner = type(impl)
        unavailable = (lambda: impl.unavailable) if isinstance(getattr(owner, "unavailable", None), property) \
            else getattr(impl, "unavailable", None)
        return cls(label, forward, getattr(impl, "sharded_backward", None),
                   getattr(impl, "sharded_train_forward", None), equal_shards=getattr(impl, "equal_shards", False),
                   unavailable=unavailable, close=getattr(impl, "close", None))


def load(target: str, shards: int) -> ShardedImplementation:
    """The sharded implementation named by a CLI target: ``bnsym-torch``, ``torch-sync``, ``jax`` (for ``shards``
    workers), or ``path/to/file.py:NAME`` / ``package.module:NAME`` following the sharded protocol."""
    from bnsym.testing.sharded_adapters import BUILTIN

    if target in BUILTIN:
        try:
            built = BUILTIN[target](shards)
        except ImportError as error:
            raise TargetError(f"the {target} adapter needs its library installed: {error}") from None
        except RuntimeError as error:
            raise TargetError(f"the {target} adapter cannot run: {error}") from None
        return ShardedImplementation.wrap(built, name=built.name)
    if target == "torch":
        raise TargetError("with --shards, the PyTorch targets are torch-sync (torch.nn.SyncBatchNorm) and "
                          "bnsym-torch (bnsym.torch.SyncBatchNorm)")
    return ShardedImplementation.wrap(resolve(target), name=target)


# ----- calling the implementation -----

def _call(impl: ShardedImplementation, method: str, *args):
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


def _inputs(ex: ShardedExample):
    e = ex.example
    return ex.split(e.x), np.array(e.gamma), np.array(e.beta), float(e.eps)


def sharded_forward(impl, ex: ShardedExample) -> list[np.ndarray]:
    xs, gamma, beta, eps = _inputs(ex)
    return _arrays(_call(impl, "sharded_forward", xs, gamma, beta, eps), "ys from sharded_forward", len(ex.sizes))


def sharded_backward(impl, ex: ShardedExample):
    xs, gamma, beta, eps = _inputs(ex)
    result = _call(impl, "sharded_backward", ex.split(ex.example.dy), xs, gamma, beta, eps)
    try:
        dxs, dgammas, dbetas = result
    except (TypeError, ValueError):
        raise PropertyFailure(f"sharded_backward must return (dxs, dgammas, dbetas), got "
                              f"{type(result).__name__}") from None
    k = len(ex.sizes)
    return (_arrays(dxs, "dxs", k), _arrays(dgammas, "dgammas", k), _arrays(dbetas, "dbetas", k))


def _joined(what: str, parts: list[np.ndarray], ex: ShardedExample) -> np.ndarray:
    """The per-shard arrays along the batch axis, after checking each has its shard's shape."""
    for k, (part, size) in enumerate(zip(parts, ex.sizes)):
        expected = (size,) + ex.example.x.shape[1:]
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


# ----- the properties -----

@dataclass(frozen=True)
class ShardedProperty:
    """One named check of the sharded protocol; ``needs`` are the methods it calls."""

    name: str
    needs: frozenset[str]
    description: str
    check: Callable[..., None]
    needs_convention: bool = False


SHARDED: dict[str, ShardedProperty] = {}


def _register(name: str, needs=("sharded_forward",), needs_convention: bool = False):
    def decorate(check):
        description = (check.__doc__ or name).strip().splitlines()[0]
        SHARDED[name] = ShardedProperty(name, frozenset(needs), description, check, needs_convention)
        return check
    return decorate


def _bound(ex: ShardedExample) -> tuple[reference.ForwardReference, Bound]:
    e = ex.example
    ref = reference.forward(e)
    return ref, Bound.of(ref, e.dtype, e.gamma, e.beta)


@_register("sharded_shapes_and_dtypes", needs=("sharded_forward", "sharded_backward"))
def _shapes_and_dtypes(impl, ex, options):
    """One y and one dx per shard with the shard's shape and the dtype of x; dgamma and dbeta of shape (C,)."""
    e = ex.example
    ys = sharded_forward(impl, ex)
    dxs, dgammas, dbetas = sharded_backward(impl, ex)
    for what, parts in (("y", ys), ("dx", dxs)):
        _joined(what, parts, ex)
        for k, part in enumerate(parts):
            if part.dtype != e.dtype:
                raise PropertyFailure(f"{what} of shard {k} has dtype {part.dtype}, expected {e.dtype}")
    for what, parts in (("dgamma", dgammas), ("dbeta", dbetas)):
        for k, part in enumerate(parts):
            if part.shape != (e.channels,) or part.dtype != e.dtype:
                raise PropertyFailure(f"{what} of shard {k} has shape {part.shape} and dtype {part.dtype}, expected "
                                      f"({e.channels},) and {e.dtype}")


@_register("sharded_forward_reference")
def _forward_reference(impl, ex, options):
    """The shards' outputs, put together, agree with bnsym's reference for the whole batch."""
    ref, bound = _bound(ex)
    _compare_joined("y", sharded_forward(impl, ex), ex, ref.y, bound.forward())


@_register("sharded_backward_reference", needs=("sharded_forward", "sharded_backward"))
def _backward_reference(impl, ex, options):
    """Every shard's dx agrees with the whole batch's dx from bnsym's reference backward."""
    _, bound = _bound(ex)
    dxs, _, _ = sharded_backward(impl, ex)
    expected = reference.backward(ex.example)[0]
    _compare_joined("dx", dxs, ex, expected, bound.backward(ex.example.dy)[0])


@_register("sharded_parameter_gradients", needs=("sharded_forward", "sharded_backward"))
def _parameter_gradients(impl, ex, options):
    """The workers' dgamma and dbeta sum to the whole batch's (each worker returns its own contribution)."""
    e = ex.example
    _, bound = _bound(ex)
    _, dgammas, dbetas = sharded_backward(impl, ex)
    _, expected_dgamma, expected_dbeta = reference.backward(e)
    _, tol_dgamma, tol_dbeta = bound.backward(e.dy)
    u = unit_roundoff(e.dtype)
    for what, parts, expected, tolerance in (("dgamma", dgammas, expected_dgamma, tol_dgamma),
                                             ("dbeta", dbetas, expected_dbeta, tol_dbeta)):
        for k, part in enumerate(parts):
            if part.shape != (e.channels,):
                raise PropertyFailure(f"{what} of shard {k} has shape {part.shape}, expected ({e.channels},)")
        parts64 = [p.astype(np.float64) for p in parts]
        # Adding K per-worker contributions rounds K more times.
        adding = SAFETY * len(parts) * u * np.sum(np.abs(parts64), axis=0)
        compare(f"the sum over the {len(parts)} workers of {what}", np.sum(parts64, axis=0), expected,
                tolerance + adding)


def _momentum(convention: str, ex: ShardedExample):
    """(momentum, num_batches_tracked): all weight on the batch half of the time (where Bessel's correction shows
    whole), otherwise a weight away from 1/2 (where a flipped convention hides)."""
    conv = CONVENTIONS[convention]
    rng = ex.example.rng(41)
    full = bool(rng.integers(0, 2))
    if conv.momentum_weighs is None:
        return None, (0 if full else int(rng.integers(1, 6)))
    weight = 1.0 if full else float(rng.choice([0.1, 0.2, 0.3, 0.8]))
    return (weight if conv.momentum_weighs == "new" else 1 - weight), int(rng.integers(0, 6))


@_register("sharded_running_statistics", needs=("sharded_train_forward",), needs_convention=True)
def _running_statistics(impl, ex, options):
    """After a training step every worker holds the whole batch's running statistics, with the global count M in
    Bessel's correction."""
    e = ex.example
    convention = options.convention
    conv = CONVENTIONS[convention]
    ref, bound = _bound(ex)
    momentum, batches = _momentum(convention, ex)
    rng = e.rng(42)
    running = ((ref.mean.reshape(-1) + rng.normal(0, 1, e.channels)).astype(e.dtype),
               (ref.var.reshape(-1) * rng.uniform(0.5, 2, e.channels) + e.eps).astype(e.dtype))
    weight = {"new": momentum, "old": None if momentum is None else 1 - momentum,
              None: 1 / (batches + 1)}[conv.momentum_weighs]
    expected = bnsym.update_running_stats(*(r.astype(np.float64) for r in running), ref.mean.reshape(-1),
                                          ref.var.reshape(-1), ref.count, momentum=momentum, convention=convention,
                                          num_batches_tracked=batches + 1 if conv.momentum_weighs is None else None)
    if not all(np.all(np.isfinite(v)) and np.all(np.abs(v) <= np.finfo(e.dtype).max) for v in expected):
        return  # the dtype cannot hold the statistics (float16, a wide dynamic range): nothing to check
    correction = ref.count / (ref.count - 1) if conv.unbiased else 1.0
    u = bound.u
    mean_tol = SAFETY * (weight * bound.mean_error.reshape(-1) + 4 * u * (abs(1 - weight) * np.abs(running[0])
                                                                           + weight * np.abs(ref.mean.reshape(-1))))
    var_tol = SAFETY * (weight * correction * bound.var_error.reshape(-1)
                        + 4 * u * (abs(1 - weight) * running[1] + weight * correction * ref.var.reshape(-1)))
    xs, gamma, beta, eps = _inputs(ex)
    result = _call(impl, "sharded_train_forward", xs, gamma, beta, eps, *(np.array(r) for r in running), momentum,
                   batches)
    try:
        _, means, variances = result
    except (TypeError, ValueError):
        raise PropertyFailure(f"sharded_train_forward must return (ys, running_means, running_vars), got "
                              f"{type(result).__name__}") from None
    k = len(ex.sizes)
    label = f"({convention} convention, momentum {momentum}, {batches} batches before, M = {ref.count} in all)"
    for shard, (mean, var) in enumerate(zip(_arrays(means, "running_means", k), _arrays(variances, "running_vars",
                                                                                          k))):
        compare(f"running_mean of worker {shard} {label}", mean, expected[0], mean_tol + bound.tiny)
        compare(f"running_var of worker {shard} {label}", var, expected[1], var_tol + bound.tiny)


# ----- running -----

@dataclass
class ShardedReport(Verdicts):
    """What ran, what held, what failed (with the minimal counterexample), what was skipped and why."""

    implementation: str
    dtype: str
    shards: int
    seed: int
    max_examples: int
    equal_shards: bool = False
    convention: str | None = None
    results: list[PropertyResult] = field(default_factory=list)
    seconds: float = 0.0
    replay_command: str | None = None

    def __str__(self) -> str:
        split = "equal shards (the implementation takes no others)" if self.equal_shards else "uneven shards"
        convention = f", {self.convention} running statistics" if self.convention else ""
        lines = [f"bnsym check --shards {self.shards}: {self.implementation}, {self.dtype}, {split}{convention}, "
                 f"seed {self.seed}, up to {self.max_examples} examples per property"]
        skipped: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == PASSED:
                lines.append(f"  PASS  {r.name} ({r.examples} examples)")
            elif r.status == SKIPPED:
                skipped.setdefault(r.reason, []).append(r.name)
            else:
                lines.append(f"  FAIL  {r.name}: {SHARDED[r.name].description}")
                ce = r.counterexample
                lines.append(f"        {ce.failure if ce is not None else r.reason}")
                if ce is not None:
                    lines.append(f"        minimal counterexample: {ce.example.describe()}")
                    if ce.path is not None:
                        lines.append(f"        saved to {ce.path}")
                        if self.replay_command:
                            lines.append(f"        replay: {self.replay_command.format(path=ce.path)}")
        for reason, names in skipped.items():
            lines.append(f"  SKIP  {', '.join(names)}: {reason}")
        if self.nothing_checked:
            lines.append("nothing was checked: every property was skipped (the reasons are above)")
        lines.append(f"{len(self.results)} properties: {len(self.passed)} passed, {len(self.failed)} failed, "
                     f"{len(self.skipped)} skipped ({self.seconds:.1f} s)")
        return "\n".join(lines)


class ShardedCheckFailed(AssertionError):
    """Raised by :func:`check_sharded` when a property fails; ``report`` has the details."""

    def __init__(self, report: ShardedReport):
        super().__init__(f"sharded batch norm check failed: {', '.join(report.failed)}\n{report}")
        self.report = report


@dataclass
class _Counterexample:
    example: ShardedExample
    failure: PropertyFailure
    path: Path | None = None


def _run_one(prop: ShardedProperty, impl, strategy, max_examples: int, seed: int, options) -> PropertyResult:
    """One sharded property: ``max_examples`` examples of ``strategy(regimes)`` (None: every regime), then one of
    each regime the draws missed (stratified, as the unsharded runner does), with each regime's worst margin."""
    failures: list[tuple[ShardedExample, PropertyFailure]] = []
    margins: dict[str, float] = {}
    count = 0

    def attempt(ex: ShardedExample) -> None:
        nonlocal count
        count += 1
        with observing() as observation:
            try:
                prop.check(impl, ex, options)
            except PropertyFailure as failure:
                failures.append((ex, failure))
                raise
            except Exception as error:  # a bug in a property must not pass silently, nor crash the whole report
                failure = PropertyFailure(f"checking raised {type(error).__name__}: {error}")
                failures.append((ex, failure))
                raise failure from error
            finally:
                regime = ex.example.regime
                margins[regime] = max(margins.get(regime, 0.0), observation.worst)

    def run(examples, size: int) -> PropertyResult | None:
        test = settings(max_examples=size, database=None, deadline=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False,
                        verbosity=Verbosity.quiet, phases=(Phase.explicit, Phase.generate, Phase.shrink))(
            hypothesis_seed(seed)(given(examples)(attempt)))
        try:
            with np.errstate(all="ignore"):
                test()
        except Exception as error:
            if not failures:
                return PropertyResult(prop.name, FAILED, f"the run raised {type(error).__name__}: {error}", count,
                                      seconds=time.perf_counter() - start)
        return None

    start = time.perf_counter()
    broken = run(strategy(None), max_examples)
    for regime in SHARDED_REGIMES:
        if not (broken or failures) and regime not in margins:
            broken = run(strategy((regime,)), 1)
    if broken:
        return broken
    seconds = time.perf_counter() - start
    if failures:
        example, failure = failures[-1]
        return PropertyResult(prop.name, FAILED, failure.message, count, _Counterexample(example, failure), seconds,
                              margins)
    return PropertyResult(prop.name, PASSED, "", count, seconds=seconds, margins=margins)


def run_sharded(impl: ShardedImplementation, *, shards: int, dtype="float64", max_examples: int = 50, seed: int = 0,
                properties=None, convention: str | None = None) -> ShardedReport:
    """The sharded properties (all, or those named) on ``impl`` with the batch split into ``shards`` shards."""
    options = CheckOptions(convention=convention)
    dtype = np.dtype(dtype)
    report = ShardedReport(impl.name, dtype.name, shards, seed, max_examples, impl.equal_shards, convention)
    start = time.perf_counter()
    names = list(properties or SHARDED)
    unknown = [n for n in names if n not in SHARDED]
    if unknown:
        raise ValueError(f"unknown sharded properties {unknown}; known: {', '.join(SHARDED)}")
    reason = impl.unavailable
    def strategy(regimes):
        return sharded_examples(dtype=dtype, shards=shards, equal_shards=impl.equal_shards, regimes=regimes)
    for name in names:
        prop = SHARDED[name]
        if prop.needs_convention and convention is None:
            if properties:
                report.results.append(PropertyResult(name, SKIPPED, "runs with --convention"))
            continue
        missing = prop.needs - impl.capabilities
        if reason:
            report.results.append(PropertyResult(name, SKIPPED, reason))
        elif missing:
            report.results.append(PropertyResult(name, SKIPPED, f"needs {', '.join(sorted(missing))}, which the "
                                                                f"implementation does not offer"))
        else:
            report.results.append(_run_one(prop, impl, strategy, max_examples, seed, options))
    report.seconds = time.perf_counter() - start
    return report


def check_sharded(impl, *, shards: int, dtype="float64", max_examples: int = 50, seed: int = 0, properties=None,
                  convention: str | None = None) -> ShardedReport:
    """Check a data-parallel batch norm (an object of the sharded protocol, module docstring) split into
    ``shards`` shards; returns the report, or raises :class:`ShardedCheckFailed` (an AssertionError) carrying it."""
    if isinstance(shards, bool) or not isinstance(shards, numbers.Integral) or shards < 1:
        raise ValueError(f"shards must be a positive integer (the number of workers), got {shards!r}")
    resolved, max_examples, seed = run_arguments(dtype, max_examples, seed)
    if convention is not None and convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {tuple(CONVENTIONS)} or None, got {convention!r}")
    implementation = ShardedImplementation.wrap(impl)
    if isinstance(properties, str):
        properties = [properties]
    report = run_sharded(implementation, shards=shards, dtype=dtype, max_examples=max_examples, seed=seed,
                         properties=properties, convention=convention)
    if not report.ok:
        raise ShardedCheckFailed(report)
    return report


# ----- counterexamples on disk -----

_FIELDS = ("x", "gamma", "beta", "dy")


def save_counterexample(result: PropertyResult, directory: Path, shards: int, convention: str | None,
                        target: str = "target") -> Path:
    """Write a failed sharded property's counterexample of ``target`` into ``directory``, atomically, named as the
    other counterexamples are (:mod:`bnsym.testing.naming`); returns the path."""
    ce = result.counterexample
    ex = ce.example.example
    fields = dict(property=result.name, regime=ex.regime, eps=ex.eps, seed=ex.seed, sizes=np.asarray(ce.example.sizes),
                  shards=shards, convention=convention or "", **{f: getattr(ex, f) for f in _FIELDS})
    name = counterexample_name(target, result.name, b"".join(getattr(ex, f).tobytes() for f in _FIELDS)
                               + np.asarray(ce.example.sizes).tobytes())
    path = write_atomically(Path(directory) / name, lambda stream: np.savez(stream, **fields))
    ce.path = path
    return path


def replay(impl: ShardedImplementation, path, shards: int) -> ShardedReport:
    """Re-run the sharded property saved in ``path`` on its example. A file that is not a sharded counterexample
    raises ValueError."""
    try:
        with np.load(path) as data:
            name = str(data["property"])
            example = Example(*(data[f] for f in ("x", "gamma", "beta")), float(data["eps"]), data["dy"],
                              str(data["regime"]), int(data["seed"]))
            sizes = tuple(int(s) for s in data["sizes"])
            convention = str(data["convention"]) or None
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a bnsym sharded counterexample: {error}") from None
    if name not in SHARDED:
        raise ValueError(f"{path} names an unknown sharded property {name!r}")
    if len(sizes) != shards:
        raise ValueError(f"{path} splits the batch into {len(sizes)} shards; replay it with --shards {len(sizes)}")
    ex = ShardedExample(example, sizes)
    report = ShardedReport(impl.name, example.dtype.name, shards, example.seed, 1, impl.equal_shards, convention)
    start = time.perf_counter()
    try:
        with np.errstate(all="ignore"):
            SHARDED[name].check(impl, ex, CheckOptions(convention=convention))
        report.results.append(PropertyResult(name, PASSED, "", 1))
    except PropertyFailure as failure:
        report.results.append(PropertyResult(name, FAILED, failure.message, 1, _Counterexample(ex, failure)))
    except Exception as error:
        failure = PropertyFailure(f"checking raised {type(error).__name__}: {error}")
        report.results.append(PropertyResult(name, FAILED, failure.message, 1, _Counterexample(ex, failure)))
    report.seconds = time.perf_counter() - start
    return report


# ----- the command line (``bnsym check TARGET --shards K``) -----

def run_command(args: argparse.Namespace) -> int:
    """``bnsym check`` with ``--shards``: exit 0 when every sharded property holds, 1 when one fails, 2 on a usage
    error."""
    if args.mode != "train" or args.order != 1:
        print("bnsym check: --shards checks the training forward and backward (--mode train --order 1)",
              file=sys.stderr)
        return 2
    properties = args.properties
    if properties:
        unknown = [p for p in properties if p not in SHARDED]
        if unknown:
            print(f"bnsym check: with --shards the properties are {', '.join(SHARDED)}; got {', '.join(unknown)}",
                  file=sys.stderr)
            return 2
    try:
        impl = load(args.target, args.shards)
    except (TargetError, TypeError) as error:
        print(f"bnsym check: {error}", file=sys.stderr)
        return 2
    try:
        if args.replay:
            try:
                report = replay(impl, args.replay, args.shards)
            except ValueError as error:
                print(f"bnsym check: {error}", file=sys.stderr)
                return 2
        else:
            report = run_sharded(impl, shards=args.shards, dtype=args.dtype, max_examples=args.max_examples,
                                 seed=args.seed, properties=properties, convention=args.convention)
            report.replay_command = (f"bnsym check {shlex.quote(args.target)} --shards {args.shards} "
                                     "--replay {path}")
            for result in report.results:
                if result.counterexample is not None:
                    save_counterexample(result, Path(args.save_dir), args.shards, args.convention, args.target)
    finally:
        impl.close()
    print(report)
    return report.exit_status
