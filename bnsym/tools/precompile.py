"""``bnsym compile``: compile the compiled backend's kernels ahead of time, so that no call pays for it later.

The compiled backend (``backend="numba"``, and ``"auto"`` on NumPy input) keeps its machine code in Numba's disk
cache. :func:`kernels` lists what there is to compile, for the chosen layers, dtypes and layouts, by calling every
public function of each layer on a small representative input under the RECORD policy of
:mod:`bnsym.runtime.compiled`: the generated wrappers choose their loops exactly as they would for a real call and note
the loop function and argument types instead of running them. :func:`compile_kernels` compiles the ones that are
not in the cache yet, in worker processes (:class:`bnsym.runtime.background.CompilerPool`), and reports each as it ends.

Notation. A *layout* is the arrangement of x that decides which loops run: ``channel-first`` (NCHW, and (N, C)),
``channel-last`` (NHWC), ``rows`` (the trailing axes of layer and RMS norm). A *kernel* is one loop function
compiled for one set of argument types (dtype included).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["DTYPES", "LAYOUTS", "Kernel", "cases", "compile_kernels", "kernels"]

DTYPES = ("float32", "float64")
LAYOUTS = ("channel-first", "channel-last", "rows")

#: The small inputs that choose each layout's loops: channel-first, an image batch (runs of spatial values) and an
#: (N, C) batch (one value per channel); channel-last, an image batch; rows, a batch of rows of 10 values.
_SHAPES = {"channel-first": ((4, 6, 3, 5), (8, 6)), "channel-last": ((4, 3, 5, 6),), "rows": ((4, 3, 10),)}


def cases(layer: str) -> dict[str, tuple[tuple[tuple[int, ...], dict, tuple[int, ...]], ...]]:
    """The small inputs of ``layer`` for each layout it has (its grouping's: a layer with a channel axis has the
    channel-first and channel-last layouts, the others rows): x's shape, the layer's options and its parameters'
    shape. Every argument of a public function is made from these by its name (:func:`_arguments`). An input whose
    groups hold one value is left out for a layer that refuses them in training."""
    from bnsym.spec import spec

    chosen, grouping = spec(layer), spec(layer).grouping
    found = {}
    for layout in ("channel-first", "channel-last") if grouping.channel_axis else ("rows",):
        inputs = []
        for shape in _SHAPES[layout]:
            first = (shape[0], shape[-1], *shape[1:-1]) if layout == "channel-last" else shape
            sizes = grouping.example_sizes(first)
            options = grouping.example_options(first, sizes[(len(sizes) - 1) // 2])
            if layout == "channel-last":
                options["axis"] = -1
            grouped = chosen.layout(shape, **options)
            if grouped.count > 1 or chosen.single_value_error is None:
                inputs.append((shape, options, grouped.parameter_shape))
        found[layout] = tuple(inputs)
    return found


def _layers() -> tuple[str, ...]:
    from bnsym.spec import BUILT_IN

    return BUILT_IN


_FIELDS = ("x", "dy", "ggx", "tx")
_PARAMETERS = ("gamma", "beta", "gggamma", "ggbeta", "tgamma", "tbeta")
_RUNNING = ("running_mean", "running_var")


@dataclass(frozen=True)
class Kernel:
    """One compilation: ``label`` (layer, layout, dtype and loop function), the loop function and its argument
    types, and whether it is in Numba's disk cache already."""

    label: str
    dispatcher: object
    types: tuple
    cached: bool


def kernels(layers: Iterable[str] | None = None, dtypes: Iterable[str] | None = None,
            layouts: Iterable[str] | None = None) -> list[Kernel]:
    """The kernels that the public functions of ``layers`` run on input of ``dtypes`` and ``layouts`` (all by
    default), each once, in a fixed order."""
    import bnsym
    from bnsym.runtime import compiled as _compiled

    layers = _chosen("layer", layers, _layers())
    dtypes = _chosen("dtype", dtypes, DTYPES)
    layouts = _chosen("layout", layouts, LAYOUTS)
    found: dict[tuple, Kernel] = {}
    for layer in layers:
        module = getattr(bnsym, layer)
        for layout, inputs in cases(layer).items():
            if layout not in layouts:
                continue
            for dtype in dtypes:
                _compiled.recorded.clear()
                with _compiled.policy(_compiled.RECORD):
                    for shape, options, parameter_shape in inputs:
                        for verb in module.__all__:
                            _record(getattr(module, verb), shape, options, parameter_shape, np.dtype(dtype), module)
                for dispatcher, types in _compiled.recorded:
                    function = dispatcher.py_func.__name__.lstrip("_").removeprefix(f"{layer}_")
                    label = f"{layer}.{function} ({layout}, {dtype})"
                    found.setdefault((dispatcher, types), Kernel(label, dispatcher, types,
                                                                 _compiled.ready_on_disk(dispatcher, types)))
                _compiled.recorded.clear()
    return list(found.values())


def _chosen(what: str, chosen, every: tuple[str, ...]) -> tuple[str, ...]:
    if chosen is None:
        return every
    if isinstance(chosen, str):
        raise TypeError(f"{what}s must be a list of names such as [{chosen!r}], got the string {chosen!r}")
    chosen = tuple(chosen)
    unknown = [c for c in chosen if c not in every]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}: choose from {', '.join(every)}")
    return chosen


def _record(function: Callable, shape, options: dict, parameter_shape, dtype: np.dtype, module) -> None:
    """Call ``function`` (a public function, under the RECORD policy: nothing runs compiled) on arguments made by
    name, once for each value of its boolean keyword options (``training``)."""
    signature = inspect.signature(function)
    switches = [name for name, p in signature.parameters.items()
                if p.kind is p.KEYWORD_ONLY and isinstance(p.default, bool)]
    settings = [{}] + [{name: not signature.parameters[name].default} for name in switches]
    for setting in settings:
        function(**_arguments(signature, shape, options, parameter_shape, dtype, module), **setting,
                 backend="numba")


def _arguments(signature: inspect.Signature, shape, options: dict, parameter_shape, dtype: np.dtype,
               module) -> dict:
    rng = np.random.default_rng(0)
    arguments = {}
    spec = module._LAYER.spec
    # A layer's field inputs and outputs (fused add + RMS norm's residual and h), their upstream gradients,
    # cotangents and tangents are shaped like x too.
    fields = (*_FIELDS, *spec.field_inputs, *spec.field_outputs, *("d" + o for o in spec.field_outputs),
              *("gg" + f for f in spec.field_inputs), *("t" + f for f in spec.field_inputs))
    for name in signature.parameters:
        if name in fields:
            arguments[name] = rng.normal(size=shape).astype(dtype)
        elif name in _PARAMETERS:
            arguments[name] = rng.normal(size=parameter_shape).astype(dtype)
        elif name in _RUNNING or name.startswith("running_"):  # a layer's own (batch renormalisation's running_std)
            arguments[name] = rng.uniform(0.5, 2.0, size=parameter_shape).astype(dtype)
        elif name in options:
            arguments[name] = options[name]
    statistics = [n for n in signature.parameters if n in ("mean", "invstd", "invrms")]
    if statistics:  # the saved statistics, from the forward pass (computed by NumPy: nothing to record)
        forward = inspect.signature(module.forward)
        made = _arguments(forward, shape, options, parameter_shape, dtype, module)
        saved = module.forward(**made, backend="numpy")[-len(statistics):]  # after y and any field outputs
        arguments.update(zip(statistics, saved))
    return arguments


def compile_kernels(chosen: list[Kernel], *, workers: int = 1,
                    on_done: Callable[[Kernel, float, str], None] | None = None) -> list[tuple[Kernel, float, str]]:
    """Compile ``chosen`` into Numba's disk cache with ``workers`` processes; ``on_done(kernel, seconds, error)``
    is called as each ends (error "" when it compiled). Returns those triples in the order they ended."""
    import queue

    from bnsym.runtime.background import CompilerPool

    if not chosen:
        return []
    ended: queue.Queue = queue.Queue()
    by_key = {(k.dispatcher, k.types): k for k in chosen}
    pool = CompilerPool(min(workers, len(chosen)), ended.put)
    try:
        for kernel in chosen:
            pool.submit(kernel.dispatcher, kernel.types)
        results = []
        for _ in chosen:
            outcome = ended.get()
            kernel = by_key[(outcome.dispatcher, outcome.types)]
            results.append((kernel, outcome.seconds, "" if outcome.ok else outcome.error))
            if on_done is not None:
                on_done(*results[-1])
        return results
    finally:
        pool.close()


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#####.....] 5/10``."""
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"

