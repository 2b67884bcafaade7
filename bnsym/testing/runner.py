"""Runs properties under Hypothesis and collects a :class:`Report`.

Each property runs as its own Hypothesis test with a fixed seed (so a run is reproducible), no example database
(nothing is written to the user's directory unless a save directory is given) and no deadline. Hypothesis
shrinks a failing example, then replays the minimal one last: the last failure recorded is the minimal
counterexample. A property whose needs the implementation does not offer is skipped, with the reason.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed

from bnsym.strategies import Example
from bnsym.testing.adapters import Implementation
from bnsym.testing.isolation import ImplementationCrashed
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import REGISTRY, Property, PropertyFailure

__all__ = ["CheckFailed", "Counterexample", "PropertyResult", "Report", "load_counterexample", "replay",
           "run_properties", "save_counterexample"]

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class Counterexample:
    example: Example
    failure: PropertyFailure
    path: Path | None = None


@dataclass
class PropertyResult:
    name: str
    status: str
    reason: str = ""
    examples: int = 0
    counterexample: Counterexample | None = None
    seconds: float = 0.0


@dataclass
class Report:
    """What ran, what held, what failed (with the minimal counterexample) and what was skipped and why."""

    implementation: str
    dtype: str
    seed: int
    max_examples: int
    results: list[PropertyResult] = field(default_factory=list)
    seconds: float = 0.0
    replay_command: str | None = None  # the command that re-runs a saved counterexample, with {path} in it
    options: CheckOptions = field(default_factory=CheckOptions)
    not_selected: list[str] = field(default_factory=list)  # properties that the options leave out

    def _names(self, status: str) -> list[str]:
        return [r.name for r in self.results if r.status == status]

    @property
    def passed(self) -> list[str]:
        return self._names(PASSED)

    @property
    def failed(self) -> list[str]:
        return self._names(FAILED)

    @property
    def skipped(self) -> list[str]:
        return self._names(SKIPPED)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [f"bnsym check: {self.implementation}, {self.dtype}, {self.options.describe()}, seed {self.seed}, up "
                 f"to {self.max_examples} examples per property"]
        skipped: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == PASSED:
                lines.append(f"  PASS  {r.name} ({r.examples} examples)")
            elif r.status == SKIPPED:
                skipped.setdefault(r.reason, []).append(r.name)
            else:
                lines.append(f"  FAIL  {r.name}: {REGISTRY[r.name].description if r.name in REGISTRY else ''}")
                ce = r.counterexample
                if ce is not None:
                    lines.append(f"        {ce.failure}")
                    lines.append(f"        minimal counterexample: {ce.example.describe()}")
                    if ce.path is not None:
                        lines.append(f"        saved to {ce.path}")
                        if self.replay_command:
                            lines.append(f"        replay: {self.replay_command.format(path=ce.path)}")
                else:
                    lines.append(f"        {r.reason}")
        for reason, names in skipped.items():
            lines.append(f"  SKIP  {', '.join(names)}: {reason}")
        if self.not_selected:
            lines.append(f"  (not selected by these options: {len(self.not_selected)} properties of other modes; "
                         "see --mode, --convention, --order)")
        lines.append(f"{len(self.results)} properties: {len(self.passed)} passed, {len(self.failed)} failed, "
                     f"{len(self.skipped)} skipped ({self.seconds:.1f} s)")
        return "\n".join(lines)


class CheckFailed(AssertionError):
    """Raised by :func:`bnsym.testing.check_batchnorm` when a property fails; ``report`` has the details."""

    def __init__(self, report: Report):
        super().__init__(f"batch norm check failed: {', '.join(report.failed)}\n{report}")
        self.report = report


def _call(prop: Property, impl: Implementation, example: Example, options: CheckOptions) -> None:
    if prop.takes_options:
        prop.check(impl, example, options)
    else:
        prop.check(impl, example)


def _run_one(prop: Property, impl: Implementation, dtype: np.dtype, max_examples: int, seed: int,
             options: CheckOptions) -> PropertyResult:
    failures: list[tuple[Example, PropertyFailure]] = []
    count = 0

    def attempt(example: Example) -> None:
        nonlocal count
        count += 1
        try:
            _call(prop, impl, example, options)
        except PropertyFailure as failure:
            failures.append((example, failure))
            raise
        except Exception as error:  # a bug in a property must not pass silently, nor crash the whole report
            failure = PropertyFailure(f"checking raised {type(error).__name__}: {error}")
            failures.append((example, failure))
            raise failure from error
        except ImplementationCrashed as crash:  # --isolate: the implementation's process died or hung
            failure = PropertyFailure(crash.message + ("; not shrunk, since every attempt could take the whole "
                                                       "timeout" if crash.hung else ""))
            failures.append((example, failure))
            if crash.hung:
                raise  # a BaseException: Hypothesis lets it through, which ends this property's run (below)
            raise failure from None  # a failed example like any other: Hypothesis shrinks a deterministic crash

    test = settings(max_examples=max_examples, database=None, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False,
                    verbosity=Verbosity.quiet, phases=(Phase.explicit, Phase.generate, Phase.shrink))(
        hypothesis_seed(seed)(given(prop.examples(dtype))(attempt)))
    start = time.perf_counter()
    try:
        with np.errstate(all="ignore"):
            test()
    except Exception as error:
        if not failures:
            return PropertyResult(prop.name, FAILED, f"the run raised {type(error).__name__}: {error}", count,
                                  seconds=time.perf_counter() - start)
    except ImplementationCrashed:  # a hang ended the run; its example is the last failure
        pass
    seconds = time.perf_counter() - start
    if failures:
        example, failure = failures[-1]
        return PropertyResult(prop.name, FAILED, failure.message, count, Counterexample(example, failure),
                              seconds)
    return PropertyResult(prop.name, PASSED, "", count, seconds=seconds)


def run_properties(impl: Implementation, *, dtype: np.dtype, max_examples: int, seed: int,
                   properties: list[str] | None = None, options: CheckOptions | None = None) -> Report:
    """The properties that ``options`` select (or those named) on ``impl``, in registry order."""
    options = options or CheckOptions()
    report = Report(impl.name, np.dtype(dtype).name, seed, max_examples, options=options)
    start = time.perf_counter()
    for name in properties or list(REGISTRY):
        prop = REGISTRY[name]
        if not prop.when(options):
            if properties:  # named explicitly: say why it does not run
                report.results.append(PropertyResult(name, SKIPPED, f"runs with {prop.selected_by}"))
            else:
                report.not_selected.append(name)
            continue
        missing = prop.needs - impl.capabilities
        if missing:
            report.results.append(PropertyResult(name, SKIPPED, f"needs {', '.join(sorted(missing))}, which the "
                                                                f"implementation does not offer"))
            continue
        report.results.append(_run_one(prop, impl, np.dtype(dtype), max_examples, seed, options))
    report.seconds = time.perf_counter() - start
    return report


# ----- counterexamples on disk -----

_FIELDS = ("x", "gamma", "beta", "dy")


def save_counterexample(result: PropertyResult, directory: Path, options: CheckOptions | None = None) -> Path:
    """Write the counterexample of a failed property to ``directory`` as ``.npz``; returns the path."""
    options = options or CheckOptions()
    ce = result.counterexample
    ex = ce.example
    digest = hashlib.sha256(b"".join(getattr(ex, f).tobytes() for f in _FIELDS)).hexdigest()[:8]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bnsym-counterexample-{result.name}-{digest}.npz"
    np.savez(path, property=result.name, regime=ex.regime, eps=ex.eps, seed=ex.seed, mode=options.mode,
             convention=options.convention or "", order=options.order, **{f: getattr(ex, f) for f in _FIELDS})
    ce.path = path
    return path


def load_counterexample(path) -> tuple[str, Example, CheckOptions]:
    """(property name, example, options) from a file written by :func:`save_counterexample`."""
    try:
        with np.load(path) as data:
            name = str(data["property"])
            example = Example(*(data[f] for f in ("x", "gamma", "beta")), float(data["eps"]), data["dy"],
                              str(data["regime"]), int(data["seed"]))
            options = CheckOptions(str(data["mode"]), str(data["convention"]) or None, int(data["order"]))
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a bnsym counterexample: {error}") from None
    if name not in REGISTRY:
        raise ValueError(f"{path} names an unknown property {name!r}")
    return name, example, options


def replay(impl: Implementation, path) -> Report:
    """Re-run the property saved in ``path`` on its example; the report has that one property. Only a file that
    is not a counterexample raises (ValueError)."""
    name, example, options = load_counterexample(path)
    prop = REGISTRY[name]
    report = Report(impl.name, example.dtype.name, example.seed, 1, options=options)
    start = time.perf_counter()
    missing = prop.needs - impl.capabilities
    if missing:
        report.results.append(PropertyResult(name, SKIPPED, f"needs {', '.join(sorted(missing))}"))
        return report
    try:
        with np.errstate(all="ignore"):
            _call(prop, impl, example, options)
        report.results.append(PropertyResult(name, PASSED, "", 1))
    except PropertyFailure as failure:
        report.results.append(PropertyResult(name, FAILED, failure.message, 1, Counterexample(example, failure)))
    except Exception as error:  # as in a normal run: a failure of the property, never a crash of the checker
        failure = PropertyFailure(f"checking raised {type(error).__name__}: {error}")
        report.results.append(PropertyResult(name, FAILED, failure.message, 1, Counterexample(example, failure)))
    except ImplementationCrashed as crash:  # --isolate: the implementation's process died or hung
        failure = PropertyFailure(crash.message)
        report.results.append(PropertyResult(name, FAILED, failure.message, 1, Counterexample(example, failure)))
    report.seconds = time.perf_counter() - start
    return report
