"""What a check found: per property a verdict, its worst margin and its minimal counterexample; the text report a
person reads and the JSON a CI system reads.

The margin of a property is the largest ratio |observed error| / tolerance over every comparison it made, with the
input regime where it occurred (and the worst per regime): 0.31 means the worst example used 31% of its error
bound, above 1 is a failure. Failures that share one cause (the same protocol mistake, a NaN from the forward, or
the same minimal example) are reported together under it.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnsym.testing.options import CheckOptions
from bnsym.testing.strategies import Example

__all__ = ["FAILED", "NOTED", "PASSED", "SKIPPED", "CheckFailed", "Counterexample", "NothingChecked", "PropertyResult",
           "Report", "plural", "Verdicts"]

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
#: A finding that does not decide this run: a property that concerns other dtypes' runs failed (float64_arithmetic
#: in a float32 run). Reported, in the text and the JSON, and what requires it is skipped; the exit status is not 1.
NOTED = "noted"


def plural(count: int, noun: str) -> str:
    """``1 example``, ``2 examples``, ``2 properties``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


@dataclass
class Counterexample:
    example: Example
    failure: Exception  # a PropertyFailure
    path: Path | None = None
    shrunk: bool = True  # False for a hang: every attempt to shrink it could wait the whole timeout


@dataclass
class PropertyResult:
    name: str
    status: str
    reason: str = ""
    examples: int = 0
    counterexample: Counterexample | None = None
    seconds: float = 0.0
    margins: dict[str, float] = field(default_factory=dict)  # regime -> worst |error| / tolerance
    cause: str = ""  # what failures of several properties may share (see the module docstring)

    @property
    def margin(self) -> tuple[float, str] | None:
        """(worst ratio, regime) over every regime, or None when the property compared no number or agreed exactly
        everywhere (``margins`` then holds each regime's 0)."""
        if not self.margins or max(self.margins.values()) == 0:
            return None
        regime = max(self.margins, key=self.margins.get)
        return self.margins[regime], regime


def _description(name: str, layer: str) -> str:
    from bnsym.testing.properties import registry

    properties = registry(layer)
    return properties[name].description if name in properties else ""


class Verdicts:
    """The verdicts of a report's ``results`` (a list of :class:`PropertyResult`), shared by every kind of report."""

    results: list[PropertyResult]

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
    def noted(self) -> list[str]:
        """Properties whose failure is a note in this run (:data:`NOTED`): reported, not failing it."""
        return self._names(NOTED)

    @property
    def nothing_checked(self) -> bool:
        """No property ran: every one was skipped or left out. Not a pass (exit status 5, as pytest's)."""
        return not self.passed and not self.failed and not self.noted

    @property
    def ok(self) -> bool:
        return not self.failed and not self.nothing_checked

    @property
    def exit_status(self) -> int:
        return 1 if self.failed else 5 if self.nothing_checked else 0


@dataclass
class Report(Verdicts):
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
    regimes: tuple[str, ...] = ()
    shapes: tuple[tuple[int, ...], ...] = ()
    save_dir: Path | None = None
    long_shapes: tuple = ()  # the run's shapes with long groups (bnsym.testing.strategies.long_shapes)
    equal_shards: bool = False  # a sharded run whose implementation takes shards of equal size only

    def why_nothing_checked(self) -> str:
        """One line: nothing ran, and where the reasons are (the SKIP lines and the not-selected line of the report
        say each once; this line does not repeat them)."""
        if not self.results:
            return ("nothing was checked: no property selected (the options select properties of another mode; see "
                    "--mode, --convention, --order)")
        return (f"nothing was checked: {plural(len(self.results), 'property')} selected, all skipped (each SKIP line "
                "says why)")

    # ----- text -----

    def _failure_groups(self) -> list[list[PropertyResult]]:
        groups: dict[str, list[PropertyResult]] = {}
        for r in self.results:
            if r.status == FAILED:
                groups.setdefault(r.cause or f"property {r.name}", []).append(r)
        return list(groups.values())

    def _failure_lines(self, group: list[PropertyResult]) -> list[str]:
        first = group[0]
        lines = []
        if len(group) == 1:
            lines.append(f"  FAIL  {first.name}: {_description(first.name, self.options.layer)}")
            lines.append(f"        {first.counterexample.failure if first.counterexample else first.reason}")
        else:
            cause = first.cause.split(": ", 1)[-1] if first.cause.startswith(("protocol", "forward")) else \
                "the same minimal counterexample"
            lines.append(f"  FAIL  {len(group)} properties, one cause ({cause}): {', '.join(r.name for r in group)}")
            for r in group:
                lines.append(f"        {r.name}: {r.counterexample.failure if r.counterexample else r.reason}")
        ce = first.counterexample
        if ce is not None:
            label = "minimal counterexample" if ce.shrunk else "counterexample (the first that hung, not shrunk)"
            lines.append(f"        {label}: {ce.example.describe()}")
            for r in group:
                if r.counterexample is not None and r.counterexample.path is not None:
                    lines.append(f"        saved as {r.counterexample.path.name}" if len(group) == 1 else
                                 f"        {r.name} saved as {r.counterexample.path.name}")
        return lines

    def _long_groups(self) -> str:
        from bnsym.testing.strategies import entry_count

        if not self.long_shapes:
            return ""
        counts = sorted({entry_count(self.options.layer, entry) for entry in self.long_shapes})
        return f", long groups of {', '.join(str(n) for n in counts)} values"

    def _note_lines(self, r: PropertyResult) -> list[str]:
        lines = [f"  NOTE  {r.name}: {_description(r.name, self.options.layer)}",
                 f"        {r.counterexample.failure if r.counterexample else r.reason}",
                 f"        (a note, not a failure: this {self.dtype} run checks {self.dtype} arithmetic; a run in the "
                 "dtype it concerns fails on it)"]
        if r.counterexample is not None:
            lines.append(f"        example: {r.counterexample.example.describe()}")
        return lines

    def _split(self) -> str:
        """How a sharded run splits its batches."""
        if self.options.shards is None:
            return ""
        return (", equal shards (the implementation takes no others)" if self.equal_shards else
                ", uneven shards (empty and one-sample ones included)")

    def __str__(self) -> str:
        regimes = "" if not self.regimes or len(self.regimes) >= 6 else f", regimes: {', '.join(self.regimes)}"
        lines = [f"bnsym check: {self.implementation}, {self.dtype}, {self.options.describe()}{self._split()}, seed "
                 f"{self.seed}, up "
                 f"to {plural(self.max_examples, 'example')} per property and one of each regime they miss{regimes}"
                 f"{self._long_groups()}"]
        skipped: dict[str, list[str]] = {}
        for r in self.results:
            if r.status == PASSED:
                margin = r.margin
                detail = plural(r.examples, "example")
                if margin is not None:
                    detail += f", worst {margin[0]:.2g} of the bound, regime {margin[1]}"
                lines.append(f"  PASS  {r.name} ({detail})")
            elif r.status == SKIPPED:
                skipped.setdefault(r.reason, []).append(r.name)
        for group in self._failure_groups():
            lines.extend(self._failure_lines(group))
        for r in self.results:
            if r.status == NOTED:
                lines.extend(self._note_lines(r))
        for reason, names in skipped.items():
            lines.append(f"  SKIP  {', '.join(names)}: {reason}")
        if self.not_selected:
            lines.append(f"  (not selected by these options: {plural(len(self.not_selected), 'property')} of other "
                         "modes; see --mode, --convention, --order)")
        saved = [r.counterexample.path for r in self.results if r.counterexample and r.counterexample.path]
        if saved:
            lines.append(f"counterexamples saved in {saved[0].parent}{'/' if str(saved[0].parent) != '/' else ''}")
            if self.replay_command:
                lines.append(f"  replay one: {self.replay_command.format(path=saved[0])}")
        noted = f", {len(self.noted)} noted" if self.noted else ""
        summary = (f"{plural(len(self.results), 'property')}: {len(self.passed)} passed, {len(self.failed)} failed"
                   f"{noted}, {len(self.skipped)} skipped ({self.seconds:.1f} s)")
        lines.append(summary)
        if self.nothing_checked:
            lines.append(self.why_nothing_checked())
        return "\n".join(lines)

    # ----- JSON -----

    def to_dict(self) -> dict:
        """The whole result, for CI systems: every property with its verdict, margins and counterexample file, and
        the run's options, seed and versions."""
        def counterexample(r: PropertyResult):
            ce = r.counterexample
            if ce is None:
                return None
            sizes = getattr(ce.example, "sizes", None)  # a sharded example's split
            return {"message": str(ce.failure), "input": ce.example.describe(), "shape": list(ce.example.x.shape),
                    "regime": ce.example.regime, "eps": ce.example.eps,
                    "shard_sizes": None if sizes is None else list(sizes),
                    "file": None if ce.path is None else str(ce.path)}

        status = "failed" if self.failed else "nothing checked" if self.nothing_checked else "passed"
        return {
            "implementation": self.implementation,
            "status": status,
            "exit_status": self.exit_status,
            "dtype": self.dtype,
            "seed": self.seed,
            "max_examples": self.max_examples,
            "options": {"layer": self.options.layer, "mode": self.options.mode,
                        "convention": self.options.convention, "order": self.options.order,
                        "shards": self.options.shards, "equal_shards": self.equal_shards,
                        "regimes": list(self.regimes)},
            "shapes": [_entry_json(s) for s in self.shapes],
            "long_shapes": [_entry_json(s) for s in self.long_shapes],
            "seconds": round(self.seconds, 3),
            "save_dir": None if self.save_dir is None else str(self.save_dir),
            "versions": versions(),
            "properties": [{
                "name": r.name, "description": _description(r.name, self.options.layer), "status": r.status,
                "reason": r.reason,
                "examples": r.examples, "seconds": round(r.seconds, 3), "cause": r.cause or None,
                "margin": None if not r.margins else {"worst": max(r.margins.values()),
                                                      "regime": max(r.margins, key=r.margins.get),
                                                      "per_regime": dict(r.margins)},
                "counterexample": counterexample(r)} for r in self.results],
            "notes": [{"name": r.name, "message": str(r.counterexample.failure) if r.counterexample else r.reason}
                      for r in self.results if r.status == NOTED],
            "not_selected": list(self.not_selected),
        }


def _entry_json(entry):
    """A pool entry for JSON: a (shape, size) pair (or a bare shape)."""
    if entry and isinstance(entry[0], tuple):
        return {"shape": list(entry[0]), "size": entry[1]}
    return list(entry)


def versions() -> dict[str, str]:
    """Python, bnsym, NumPy, Hypothesis, and the frameworks the run imported."""
    import hypothesis

    import bnsym

    found = {"python": platform.python_version(), "bnsym": bnsym.__version__, "numpy": np.__version__,
             "hypothesis": hypothesis.__version__}
    for name in ("torch", "jax", "flax"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            found[name] = module.__version__
    return found


def _title(report: Report) -> str:
    from bnsym.testing.protocols import protocol

    return protocol(report.options.layer).title


class CheckFailed(AssertionError):
    """Raised by :func:`bnsym.testing.check_normalization` (and ``check_batchnorm``) when a property fails;
    ``report`` has the details."""

    def __init__(self, report: Report):
        super().__init__(f"{_title(report)} check failed: {', '.join(report.failed)}\n{report}")
        self.report = report


class NothingChecked(CheckFailed):
    """Raised by :func:`bnsym.testing.check_normalization` (and ``check_batchnorm``) when no property ran: nothing
    checked is not a pass."""

    def __init__(self, report: Report):
        AssertionError.__init__(self, f"{_title(report)} check: {report.why_nothing_checked()}\n{report}")
        self.report = report
