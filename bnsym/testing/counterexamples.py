"""Counterexample files: a failed property's minimal example on disk, and replaying it.

A run saves each failure's counterexample into one folder (``bnsym check --save-dir``, default
``./bnsym-counterexamples/``) as ``<target>-<property>-<hash>.npz`` (:mod:`bnsym.testing.naming`: two targets
checked into one folder never overwrite each other's files): the inputs (x, gamma, beta, dy, eps), the regime, the
seed of the property's own random draws, the property and the options of the run, with the layer (and group
norm's number of groups; files without a layer are batch norm's) and, from a sharded run, the sizes of the shards
(``shard_sizes``: the file replays as a sharded run of as many shards). Files are written atomically
(a temporary file in the folder, then renamed), so an interrupted run never leaves half a file. ``--replay FILE``
re-runs that one property on that one example.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np

from bnsym.spec.loading import layer_name, reference
from bnsym.testing.adapters import Implementation
from bnsym.testing.failures import PropertyFailure, observing
from bnsym.testing.files import write_atomically
from bnsym.testing.isolation import ImplementationCrashed
from bnsym.testing.naming import counterexample_name
from bnsym.testing.options import CheckOptions
from bnsym.testing.properties import registry
from bnsym.testing.protocols import DEFAULT_LAYER
from bnsym.testing.results import FAILED, PASSED, SKIPPED, Counterexample, PropertyResult, Report
from bnsym.testing.runner import call_property
from bnsym.testing.sharded import ShardedExample
from bnsym.testing.strategies import Example

__all__ = ["DEFAULT_DIRECTORY", "NotACounterexample", "load_counterexample", "replay", "save_counterexample"]

DEFAULT_DIRECTORY = Path("bnsym-counterexamples")
FORMAT = 1  # the version of the file's fields, stored as bnsym_counterexample
_ARRAYS = ("x", "gamma", "beta", "dy")
_FIELD = "field_"  # the prefix of an Example's extra fields (Example.fields) in the file


class NotACounterexample(ValueError):
    """A file given to ``--replay`` that is not a bnsym counterexample (a usage error)."""


def save_counterexample(result: PropertyResult, directory, options: CheckOptions | None = None,
                        target: str = "target") -> Path:
    """Write the counterexample of a failed property of ``target`` into ``directory`` (created if needed), named so
    that no other target's or example's file can take its name (:mod:`bnsym.testing.naming`); returns the path."""
    options = options or CheckOptions()
    ce = result.counterexample
    ex = ce.example
    fields = dict(bnsym_counterexample=FORMAT, property=result.name, regime=ex.regime, eps=ex.eps, seed=ex.seed,
                  mode=options.mode, convention=options.convention or "", order=options.order,
                  **{f: getattr(ex, f) for f in _ARRAYS}, layer=reference(ex.layer),
                  num_groups=-1 if ex.num_groups is None else ex.num_groups)
    # A layer's field inputs and upstream gradients (fused add + RMS norm's residual and dh), one array each.
    fields.update({_FIELD + name: value for name, value in ex.fields})
    if isinstance(ex, ShardedExample):
        fields.update(shard_sizes=np.asarray(ex.sizes, dtype=np.int64))
    # The layer's constants (running statistics read, scalar options), each under "constant_<name>".
    fields.update({f"constant_{key}": np.asarray(value) for key, value in ex.constants})
    name = counterexample_name(target, result.name, b"".join(np.asarray(v).tobytes() for v in fields.values()))
    path = write_atomically(Path(directory) / name, lambda stream: np.savez(stream, **fields))
    ce.path = path
    return path


def load_counterexample(path) -> tuple[str, Example, CheckOptions]:
    """(property name, example, options) from a file written by :func:`save_counterexample`; raises
    :class:`NotACounterexample` for anything else."""
    path = Path(path)
    what = ("a bnsym counterexample is an .npz file written by a failed `bnsym check` (in bnsym-counterexamples/ "
            "unless --save-dir said otherwise)")
    if not path.is_file():
        raise NotACounterexample(f"{path}: no such file; {what}")
    if not zipfile.is_zipfile(path):
        raise NotACounterexample(f"{path} is not a bnsym counterexample (not an .npz archive); {what}")
    try:
        # allow_pickle=False: a counterexample holds plain arrays, and a file that needs pickles is not one.
        with np.load(path, allow_pickle=False) as data:
            missing = [f for f in ("property", "regime", "eps", "seed", *_ARRAYS) if f not in data.files]
            if missing:
                raise NotACounterexample(f"{path} is not a bnsym counterexample: it has no {', '.join(missing)}; "
                                         f"{what}")
            name = str(data["property"])
            # Files written before they named their layer are batch norm's (the default layer's).
            layer = layer_name(str(data["layer"])) if "layer" in data.files else DEFAULT_LAYER
            groups = int(data["num_groups"]) if "num_groups" in data.files else -1
            constants = tuple((f.removeprefix("constant_"), data[f] if data[f].ndim else float(data[f]))
                              for f in data.files if f.startswith("constant_"))
            extra = tuple((f.removeprefix(_FIELD), data[f]) for f in data.files if f.startswith(_FIELD))
            example = Example(*(data[f] for f in ("x", "gamma", "beta")), float(data["eps"]), data["dy"],
                              str(data["regime"]), int(data["seed"]), layer, None if groups < 0 else groups,
                              fields=extra, constants=constants)
            shards = None
            if "shard_sizes" in data.files:
                example = ShardedExample.of(example, data["shard_sizes"])
                shards = len(example.sizes)
            options = CheckOptions(str(data["mode"]) if "mode" in data.files else "train",
                                   (str(data["convention"]) or None) if "convention" in data.files else None,
                                   int(data["order"]) if "order" in data.files else 1, layer, shards)
    except NotACounterexample:
        raise
    except Exception as error:  # a damaged archive, or fields of the wrong kind
        reason = "its fields are not plain arrays" if "pickle" in str(error) else f"{type(error).__name__}: {error}"
        raise NotACounterexample(f"{path} is not a bnsym counterexample ({reason}); {what}") from None
    if name not in registry(options.layer):
        raise NotACounterexample(f"{path} names a property bnsym does not have for {options.layer}: {name!r}")
    return name, example, options


def replay(impl: Implementation, path) -> Report:
    """Re-run the property saved in ``path`` on its example; the report has that one property."""
    name, example, options = load_counterexample(path)
    prop = registry(options.layer)[name]
    report = Report(impl.name, example.dtype.name, example.seed, 1, options=options, regimes=(example.regime,),
                    equal_shards=bool(getattr(impl, "equal_shards", False)))
    unavailable = getattr(impl, "unavailable", None)  # the implementation's reason it cannot run here
    if unavailable:
        report.results.append(PropertyResult(name, SKIPPED, unavailable))
        return report
    missing = prop.needs - impl.capabilities
    if missing:
        report.results.append(PropertyResult(name, SKIPPED, f"needs {', '.join(sorted(missing))}"))
        return report
    start = time.perf_counter()
    with observing() as observation, np.errstate(all="ignore"):
        try:
            call_property(prop, impl, example, options)
            result = PropertyResult(name, PASSED, "", 1)
        except PropertyFailure as failure:
            result = PropertyResult(name, FAILED, failure.message, 1, Counterexample(example, failure))
        except ImplementationCrashed as crash:  # --isolate: the implementation's process died or hung
            failure = PropertyFailure(crash.message)
            result = PropertyResult(name, FAILED, failure.message, 1, Counterexample(example, failure))
    if observation.worst:
        result.margins = {example.regime: observation.worst}
    report.results.append(result)
    report.seconds = time.perf_counter() - start
    return report
