"""bnsym's property library for normalisation layers: check any training-mode implementation, bnsym's own included.

>>> from bnsym.testing import check_batchnorm, check_normalization
>>> report = check_batchnorm(my_batch_norm)          # doctest: +SKIP  (raises AssertionError on failure)
>>> report = check_normalization(my_layer_norm, layer="layer_norm")   # doctest: +SKIP

A batch norm is a function ``forward(x, gamma, beta, eps) -> y`` or an object with ``forward`` and optionally
``backward(dy, x, gamma, beta, eps) -> (dx, dgamma, dbeta)``: NumPy arrays, channel axis 1, batch statistics,
biased variance (:mod:`bnsym.testing.adapters`). The other layers follow their frameworks' functional forms
(:mod:`bnsym.testing.protocols`). The properties, each written once over a layer's groups, are in
:mod:`bnsym.testing.properties` (training and second order), :mod:`bnsym.testing.running_properties` (eval
mode and running statistics) and :mod:`bnsym.testing.sharded_properties` (data-parallel training); their references
and tolerances in :mod:`bnsym.testing.reference`.

A data-parallel layer is checked by the same functions with ``shards=K`` (:mod:`bnsym.testing.sharded`):

>>> report = check_batchnorm(my_sync_batch_norm, shards=3, convention="torch")   # doctest: +SKIP
"""

from pathlib import Path as _Path

from bnsym.spec.loading import layer_name
from bnsym.testing import (
    running_properties,  # noqa: F401  (registers the eval and running-statistics ones)
    sharded_properties,  # noqa: F401  (registers the sharded ones)
)
from bnsym.testing import strategies as _bst
from bnsym.testing.adapters import Implementation, TargetError, load
from bnsym.testing.counterexamples import save_counterexample
from bnsym.testing.isolation import DEFAULT_TIMEOUT, IsolatedImplementation
from bnsym.testing.options import CheckOptions, run_arguments
from bnsym.testing.properties import registry
from bnsym.testing.protocols import DEFAULT_LAYER, layer_names
from bnsym.testing.results import FAILED as _FAILED
from bnsym.testing.results import CheckFailed, NothingChecked, Report
from bnsym.testing.runner import properties_of_run as _properties_of_run
from bnsym.testing.runner import run_properties
from bnsym.testing.sharded import ShardedImplementation as _ShardedImplementation
from bnsym.testing.sharded import sharded_regimes as _sharded_regimes
from bnsym.testing.sharded_adapters import load as _load_sharded

__all__ = ["DEFAULT_MAX_EXAMPLES", "LAYERS", "PROPERTIES", "CheckFailed", "CheckOptions", "Implementation",
           "NothingChecked", "Report", "TargetError", "check_batchnorm", "check_normalization", "properties_of",
           "selected_regimes"]

DEFAULT_MAX_EXAMPLES = 50
#: Batch norm's properties (the default layer's); :func:`properties_of` gives any layer's.
PROPERTIES: tuple[str, ...] = tuple(registry(DEFAULT_LAYER))
#: The layers bnsym ships, which the checker knows (``layer=`` of :func:`check_normalization`, ``bnsym check
#: --layer``); a layer added with :func:`bnsym.spec.register` is known too.
LAYERS: tuple[str, ...] = layer_names()


def properties_of(layer: str) -> tuple[str, ...]:
    """The names of ``layer``'s properties, in the order they run (every option's; the options select which)."""
    return tuple(registry(layer))


def selected_regimes(regimes=None, exclude_regimes=None, layer: str = DEFAULT_LAYER,
                     shards: int | None = None) -> tuple[str, ...]:
    """The input regimes of ``layer`` (:func:`bnsym.testing.strategies.layer_regimes`; batch norm's are
    :data:`bnsym.testing.strategies.REGIMES`; with ``shards``, those of a sharded run,
    :func:`bnsym.testing.sharded.sharded_regimes`) that ``regimes`` (default all) names, less those
    ``exclude_regimes`` names;
    ValueError for an unknown name or when none is left."""
    known = _bst.layer_regimes(layer) if shards is None else _sharded_regimes(layer)

    def names(value, argument):
        value = [value] if isinstance(value, str) else list(value)
        unknown = [r for r in value if r not in known]
        if unknown:
            raise ValueError(f"{argument} names unknown regimes {unknown!r} for {layer}; known: {', '.join(known)}")
        return value

    chosen = known if regimes is None else tuple(names(regimes, "regimes"))
    excluded = () if exclude_regimes is None else names(exclude_regimes, "exclude_regimes")
    left = tuple(r for r in known if r in chosen and r not in excluded)
    if not left:
        raise ValueError(f"no input regime is left (regimes={regimes!r}, exclude_regimes={exclude_regimes!r})")
    return left


def check_batchnorm(impl, *, dtype="float64", max_examples: int = DEFAULT_MAX_EXAMPLES, seed: int = 0,
                    properties=None, save_dir=None, mode: str = "train", convention: str | None = None,
                    order: int = 1, regimes=None, exclude_regimes=None, isolate: bool = False,
                    timeout: float | None = None, shards: int | None = None) -> Report:
    """Check a batch-norm implementation against every property it offers what is needed for:
    :func:`check_normalization` of batch norm (its arguments, less the layer)."""
    __tracebackhide__ = True  # pytest shows the report, not this function's source
    return check_normalization(impl, layer=DEFAULT_LAYER, dtype=dtype, max_examples=max_examples, seed=seed,
                               properties=properties, save_dir=save_dir, mode=mode, convention=convention,
                               order=order, regimes=regimes, exclude_regimes=exclude_regimes, isolate=isolate,
                               timeout=timeout, shards=shards)


def check_normalization(impl, *, layer: str = DEFAULT_LAYER, dtype="float64",
                        max_examples: int = DEFAULT_MAX_EXAMPLES, seed: int = 0, properties=None, save_dir=None,
                        mode: str = "train", convention: str | None = None, order: int = 1, regimes=None,
                        exclude_regimes=None, isolate: bool = False, timeout: float | None = None,
                        shards: int | None = None) -> Report:
    """Check an implementation of a normalisation layer against every property it offers what is needed for.

    - ``layer`` (default "batch_norm"): a layer of :data:`LAYERS` ("batch_norm", "layer_norm", "rms_norm",
      "group_norm", "instance_norm", the variants, one added with :func:`bnsym.spec.register`, or one declared in a
      file of your own, ``"FILE.py:NAME"``, loaded and registered); the implementation follows
      that layer's protocol (:mod:`bnsym.testing.protocols`: for example layer norm's ``forward(x, gamma, beta,
      eps)`` normalises over the trailing axes of x that ``gamma.shape`` names).

    - ``impl``: a function ``forward`` in the layer's form, or an object (or a class constructible without
      arguments) with ``forward`` and optionally ``backward``; see :mod:`bnsym.testing.adapters`. A string is a
      target as ``bnsym check`` takes it: ``"torch"``, ``"jax"``, ``"path/to/file.py:NAME"``,
      ``"package.module:NAME"``.
    - ``dtype`` (default "float64"): the dtype of the inputs, "float64", "float32" or "float16".
    - ``max_examples`` (default 50): examples per property before it is taken to hold.
    - ``seed`` (default 0): the Hypothesis seed; the same seed tries the same examples.
    - ``properties`` (default: all of the layer's properties, :func:`properties_of`, that the options select): the
      names of those to run.
    - ``save_dir`` (default None): a directory to save each failure's counterexample to as ``.npz``.
    - ``mode`` (default "train"): "train" checks the training forward and backward, "eval" the eval-mode methods
      (batch norm only).
    - ``convention`` (default None): a preset of :mod:`bnsym.conventions` ("torch", "keras", "flax",
      "cumulative", "chainer", "haiku") adds the running-statistics properties for that convention (batch norm
      only).
    - ``order`` (default 1): 2 adds the double-backward properties of the mode.
    - ``regimes``, ``exclude_regimes`` (default None: every regime): the input regimes of the layer
      (:func:`bnsym.testing.strategies.layer_regimes`) to draw from, and those to leave out.
    - ``isolate`` (default False): run the implementation in a child process, where a crash (SIGSEGV, SIGABRT, the
      out-of-memory killer) or a call that does not return within ``timeout`` seconds fails the property and the
      check goes on (:mod:`bnsym.testing.isolation`). ``impl`` is then a target string as for ``bnsym check``
      ("path/to/file.py:NAME", "package.module:NAME", "torch", "jax") or a picklable function, object or class.
      A script that calls this at import time must do so under ``if __name__ == "__main__":``, as any
      multiprocessing code must.
    - ``timeout`` (default 60 with ``isolate``): seconds one call may take.
    - ``shards`` (default None): K, the sharded mode (:mod:`bnsym.testing.sharded`): ``impl`` follows the sharded
      protocol (an object with ``sharded_forward(xs, gamma, beta, eps)``, ...; a string names a target as
      ``bnsym check --shards K`` takes it: "bnsym-torch", "torch-sync", "jax", "path/to/file.py:NAME"), every batch
      is split into K shards, and the sharded properties run. Only for a layer whose groups span samples, in train
      mode, first order (a ValueError says why otherwise). A target string's implementation is closed (its worker
      processes stopped) when the check ends.

    Returns the :class:`Report` when every property holds; raises :class:`CheckFailed` (an AssertionError)
    carrying it otherwise, so that a pytest test is the one line ``check_batchnorm(MyBatchNorm())``, and
    :class:`NothingChecked` (a CheckFailed) when no property ran at all.
    """
    __tracebackhide__ = True  # pytest shows the report, not this function's source
    layer = layer_name(layer)  # an unknown layer: ValueError naming the known ones; a file's layer is loaded
    if timeout is not None and not isolate:
        raise ValueError("timeout needs isolate=True (a call in this process cannot be stopped)")
    options = CheckOptions(mode, convention, order, layer, shards)
    resolved, max_examples, seed = run_arguments(dtype, max_examples, seed)
    if properties is not None:
        properties = [properties] if isinstance(properties, str) else list(properties)
        known = registry(layer) if shards is None else _properties_of_run(options)
        unknown = [p for p in properties if p not in known]
        if unknown or not properties:
            where = f" for {layer}" if shards is None else " of a sharded run"
            raise ValueError(f"unknown properties {unknown!r}{where}; known: {', '.join(known)}")
    chosen_regimes = selected_regimes(regimes, exclude_regimes, layer, shards)
    owned = isolate or (shards is not None and isinstance(impl, str))  # started here: closed here
    if isolate:
        implementation = IsolatedImplementation(impl, timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                                                layer=layer, shards=shards)
    elif shards is not None:
        implementation = _load_sharded(impl, shards, layer) if isinstance(impl, str) else \
            _ShardedImplementation.wrap(impl, layer=layer)
    else:
        implementation = load(impl, layer) if isinstance(impl, str) else Implementation.wrap(impl, layer=layer)
    try:
        report = run_properties(implementation, dtype=resolved, max_examples=max_examples, seed=seed,
                                properties=properties, options=options, regimes=chosen_regimes)
    finally:
        if owned:
            implementation.close()  # no child or worker outlives the check
    if save_dir is not None:
        report.save_dir = _Path(save_dir)
        for result in report.results:
            if result.counterexample is not None and result.status == _FAILED:
                target = impl if isinstance(impl, str) else report.implementation
                save_counterexample(result, _Path(save_dir), options, target)
    if report.failed:
        raise CheckFailed(report)
    if report.nothing_checked:
        raise NothingChecked(report)
    return report
