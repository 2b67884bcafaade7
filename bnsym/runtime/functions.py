"""The public functions of any specified layer, made from its specification: what ``bnsym.layer_norm`` is for a
built-in layer, for a layer with no module of its own (a variant declared in :mod:`bnsym.layers`, served as
``bnsym.<name>``; a user's own layer; a test's).

``functions(spec)`` returns a :class:`LayerFunctions` whose members are plain functions with real signatures
(``inspect.signature`` shows them), taking their arguments in the order of the built-in modules, with the layer's
parameters (``spec.parameters``), saved statistics (``spec.saved``) and options (``spec.options``; an option without
a default comes before eps, the others after it) in place of a particular layer's::

    forward(x, gamma, beta, eps=spec.eps, **options)                         -> (y, *saved)
    backward(dy, x, gamma, *saved, **options)                                -> (dx, dgamma, dbeta)
    double_backward(ggx, gggamma, ggbeta, dy, x, gamma, *saved, **options)    -> (gx, ggamma, gdy)
    jvp(x, gamma, beta, tx, tgamma, tbeta, eps=spec.eps, **options)          -> (y, ty)

(a layer without beta drops beta and its cotangent and tangent; a layer whose training forward reads its running
statistics takes them after the fields and parameters, and a layer with scalar options takes them last, with their
defaults). A layer with field inputs and outputs (``spec.field_inputs``, ``spec.field_outputs``; fused add + RMS
norm's residual and h) takes each field input after x and returns each field output after y; the backward verbs
take an upstream gradient per field output after dy and read the normalised field (``spec.normalises``: h) in place
of x::

    forward(x, residual, gamma, eps, axis)                          -> (y, h, invrms)
    backward(dy, dh, h, gamma, invrms, axis)                        -> (dx, dresidual, dgamma)
    double_backward(ggx, ggresidual, gggamma, dy, dh, h, gamma, invrms, axis) -> (gx, gresidual, ggamma, gdy, gdh)
    jvp(x, residual, gamma, tx, tresidual, tgamma, eps, axis)       -> (y, h, ty, th)

For a layer that keeps running statistics
``inference(x, gamma, beta, running_mean, running_var, eps, **options) -> y``, ``inference_backward(dy, x, gamma,
running_mean, running_var, eps, **options) -> (dx, dgamma, dbeta)``, ``double_backward(..., training=True)`` and
``update_running_stats``. Every function takes the keyword ``backend`` as the built-in modules do. Each validates
and arranges its arguments through :class:`bnsym.runtime.layer.Layer`, exactly as the built-in modules' functions
do, and runs the layer's generated kernels (:attr:`bnsym.spec.LayerSpec.kernels_module`).

:func:`module` makes the same functions a module (``__all__``, the verbs), and :class:`DeclaredModules` serves such
a module on import for every layer of a package that has no module file of its own (``import bnsym.<name>``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import inspect
import types
from collections.abc import Callable

from bnsym.runtime.layer import Layer
from bnsym.spec.groupings import REQUIRED
from bnsym.spec.layer_spec import LayerSpec

__all__ = ["DeclaredModules", "LayerFunctions", "functions", "module"]

_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _signature(spec: LayerSpec, arguments: tuple[str, ...], *, takes_eps: bool, training: bool = False,
               scalars: bool = False) -> inspect.Signature:
    """``(*arguments, required options, [eps=spec.eps], other options, [scalar options], *, [training=True],
    backend="auto")``."""
    parameters = [inspect.Parameter(name, _POSITIONAL) for name in arguments]
    options = spec.grouping.options
    parameters += [inspect.Parameter(o.name, _POSITIONAL) for o in options if o.default is REQUIRED]
    if takes_eps:
        parameters.append(inspect.Parameter("eps", _POSITIONAL, default=spec.eps))
    parameters += [inspect.Parameter(o.name, _POSITIONAL, default=o.default) for o in options
                   if o.default is not REQUIRED]
    if scalars:
        parameters += [inspect.Parameter(name, _POSITIONAL, default=value)
                       for name, value in spec.scalar_defaults.items()]
    if training:
        parameters.append(inspect.Parameter("training", _KEYWORD, default=True))
    parameters.append(inspect.Parameter("backend", _KEYWORD, default="auto"))
    return inspect.Signature(parameters)


def _function(layer: Layer, verb: str, kernel_verb: str, signature: inspect.Signature, doc: str, *,
              training: bool = True, single: bool = False) -> Callable:
    """A public function of ``layer``: binds its arguments by ``signature`` (a TypeError names the function, as
    Python's own would) and runs ``kernel_verb`` through :meth:`Layer.run`."""
    spec = layer.spec
    constants = spec.constant_names
    eval_arguments = () if training else tuple(signature.parameters)

    def function(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{spec.name}.{verb}(): {error}") from None
        bound.apply_defaults()
        values = dict(bound.arguments)
        backend = values.pop("backend")
        mode = values.pop("training", training)
        extra = {"eps": values.pop("eps")} if "eps" in values else {}
        options = {name: values.pop(name) for name in spec.options}
        if not mode:  # eval mode reads no training-only constants (the running statistics are its own inputs)
            for name in constants:
                if name not in eval_arguments:
                    values.pop(name, None)
        results = layer.run(kernel_verb, values, backend=backend, training=mode, **extra, **options)
        return results[0] if single else results

    function.__name__ = function.__qualname__ = verb
    function.__signature__ = signature
    function.__doc__ = doc
    return function


def _none_note(spec: LayerSpec) -> str:
    values = ", ".join(f"{name} = {value}" for name, value in spec.neutral_values.items())
    return (f"A parameter that is None means no such parameter ({values}), and its gradient comes back as None; a "
            "cotangent or tangent that is None means zero.")


class LayerFunctions:
    """The public functions of one layer (module docstring): ``forward``, ``backward``, ``double_backward``,
    ``jvp`` (and ``inference``, ``inference_backward``, ``update_running_stats`` for a layer that keeps running
    statistics); ``verbs`` names them (without ``update_running_stats``, which takes per-channel arrays only)."""

    def __init__(self, spec: LayerSpec):
        if not isinstance(spec, LayerSpec):
            raise TypeError(f"functions takes a LayerSpec, got {type(spec).__name__}")
        self.spec = spec
        self._layer = layer = Layer(spec)
        p, saved, title = spec.parameters, spec.saved, spec.title
        note = _none_note(spec)
        running = spec.running_statistics
        reads = spec.running_names if spec.reads_running else ()
        scalars = bool(spec.scalars)
        # x and the field inputs (fused add + RMS norm's residual); y and the field outputs (its h); the backward
        # reads the normalised field (x, or h) with the saved statistics.
        fields_in, fields_out, normalised = spec.inputs, spec.outputs, spec.normalises
        upstream = tuple("d" + o for o in fields_out)
        outputs = ", ".join((*fields_out, *saved))
        self.forward = _function(layer, "forward", "forward",
                                 _signature(spec, (*fields_in, *p, *reads), takes_eps=True, scalars=scalars),
                                 f"{title} in training mode: ``({outputs})``, with the statistics of "
                                 f"each group that the backward reuses. {note}")
        gradients = ", ".join("d" + q for q in (*fields_in, *p))
        self.backward = _function(layer, "backward", "backward",
                                  _signature(spec, (*upstream, normalised, "gamma", *saved, *reads), takes_eps=False,
                                             scalars=scalars),
                                  f"The gradients for the upstream gradient{'s' * (len(upstream) > 1)} "
                                  f"{', '.join(upstream)}, ``({gradients})``, from the "
                                  f"statistics that :func:`forward` returned. {note}")
        terms = " + ".join(f"<gg{q}, d{q}>" for q in (*fields_in[1:], *p))
        *wrt, last = (*fields_in, "gamma", *upstream)
        second = ", ".join("g" + f for f in fields_in) + ", ggamma, " + ", ".join("g" + u for u in upstream)
        self.double_backward = _function(
            layer, "double_backward", "double_backward",
            _signature(spec, (*("gg" + f for f in fields_in), *("gg" + q for q in p), *upstream, normalised,
                              "gamma", *saved, *reads), takes_eps=False, training=running, scalars=scalars),
            f"The double backward: the gradients of ``<ggx, dx> + {terms}`` with respect to {', '.join(wrt)} and "
            f"{last}, ``({second})``. {note}")
        tangents = ", ".join("t" + o for o in fields_out)
        self.jvp = _function(layer, "jvp", "jvp",
                             _signature(spec, (*fields_in, *p, *("t" + f for f in fields_in), *("t" + q for q in p),
                                               *reads), takes_eps=True, scalars=scalars),
                             f"Forward mode: ``({', '.join(fields_out)}, {tangents})``, the output"
                             f"{'s' * (len(fields_out) > 1)} and {'its' if len(fields_out) == 1 else 'their'} "
                             f"directional derivative{'s' * (len(fields_out) > 1)} along the tangents of "
                             f"{', '.join(fields_in)} and the parameters. {note}")
        self.verbs: tuple[str, ...] = ("forward", "backward", "double_backward", "jvp")
        if running:
            self.inference = _function(
                layer, "inference", "forward", _signature(spec, ("x", *p, *spec.running_names), takes_eps=True),
                "Eval mode: y normalised with the given running statistics.", training=False, single=True)
            self.inference_backward = _function(
                layer, "inference_backward", "backward",
                _signature(spec, ("dy", "x", "gamma", *spec.running_names), takes_eps=True),
                "The eval-mode backward, the running statistics constant.", training=False)
            self.update_running_stats = layer.update_running_stats
            self.verbs += ("inference", "inference_backward")

    def __repr__(self) -> str:
        return f"functions({self.spec.name!r})"


def functions(spec: LayerSpec) -> LayerFunctions:
    """The public functions of the specified layer ``spec`` (module docstring)."""
    return LayerFunctions(spec)


def module(spec: LayerSpec, name: str) -> types.ModuleType:
    """The public functions of ``spec`` as the module ``name`` (``bnsym.gemma_rms_norm``): its verbs, ``__all__``
    naming them (sorted, as the built-in modules list theirs), ``update_running_stats`` for a layer that keeps
    running statistics, and ``_LAYER``, its :class:`~bnsym.runtime.layer.Layer`."""
    made = LayerFunctions(spec)
    served = types.ModuleType(name, f"{spec.title}: {spec.group}; statistics over {spec.statistics_over}; the "
                                    f"parameters have {spec.parameters_are}.\n\nThe public functions of the layer "
                                    f"{spec.name!r}, made from its specification (bnsym.runtime.functions); all "
                                    f"arithmetic is in the generated kernels ({spec.kernels_module}).\n")
    for verb in made.verbs:
        function = getattr(made, verb)
        function.__module__ = name
        setattr(served, verb, function)
    if spec.running_statistics:
        served.update_running_stats = made.update_running_stats
    served.__all__ = sorted(made.verbs)
    served._LAYER = made._layer
    return served


class DeclaredModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook that serves ``<package>.<name>`` as :func:`module` of the layer ``specs()[name]``, for the
    names no file provides (it sits last on ``sys.meta_path``, so a real module always wins)."""

    def __init__(self, package: str, specs: Callable[[], dict[str, LayerSpec]]):
        self.package = package
        self.specs = specs

    def find_spec(self, fullname: str, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != self.package or name not in self.specs():
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return module(self.specs()[spec.name.rpartition(".")[2]], spec.name)

    def exec_module(self, served: types.ModuleType) -> None:
        """Nothing to run: :meth:`create_module` made the module whole."""
