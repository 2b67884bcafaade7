"""The references the properties compare against, and their error bounds, for any layer, from its specification
and bnsym's derivation of it.

Notation. A layer normalises *groups* of M values (:mod:`bnsym.spec.layout`): x is seen in the kernels' grouped
layout (``layout.grouped``: group norm's channel axis split into (G, C/G)), a group spans ``layout.axes``, and
group quantities (mean, var or ms, the scale s = invstd or invrms) have length 1 there. gamma and beta have the
layout's parameter broadcast shape; a parameter shared by several groups gets the sum of their gradients over
``layout.parameter_axes``. Batch norm's groups are its channels: its group quantities have shape (1, C, 1, ...).

- :func:`forward`, :func:`backward`, :func:`double_backward`: bnsym's public functions (``bnsym.<layer>``) run in
  float64 on the example's inputs as given (already rounded to the dtype under test), so an implementation is
  compared with what it should have computed from the very values it was given. A group of one value, which a
  layer that refuses it in training (``spec.single_value_error``) does not compute, is evaluated by the
  definition: mean = x, var = 0, x_hat = 0, y = beta.
- :func:`eval_forward`, :func:`eval_backward`, :func:`eval_double_backward`, :func:`update_running_stats`: eval
  mode on running statistics, and their update, for a layer that keeps them (``spec.running_statistics``).
- :func:`exact`: the derived closed forms of y, dx and the parameter adjoints, instantiated for one group of M
  values (:func:`bnsym.symbolic.brute_force.instantiate`) and evaluated in mpmath at 50 digits group by group; a
  parameter's gradient is the mpmath sum over the groups that share it.
- :class:`LayerBound`: the tolerances, by :mod:`bnsym.testing.magnitude`'s running error analysis of each derived
  closed form (y, dx, dgamma, dbeta, gx, ggamma, gdy), read from ``bnsym.symbolic.layers.derivation(layer)``. Its
  atoms are x_hat, the scale s, dy, gamma, beta and the cotangents. The errors of x_hat and s: for a centred layer
  (mean, variance) :class:`bnsym.testing.tolerance.Bound`'s model of a correct two-pass or Welford summation per
  group (a magnitude bound of (x - mean) s would charge it with |x| + |mean| in place of |x - mean|, as large at a
  large offset as a one-pass variance's error); for a layer that takes no mean, which cancels nothing, the layer's
  own forward program definition by definition: the magnitude bound of the mean square (exact for a sum of
  squares) and of x s, and the negative power s = (ms + eps)**(-1/2) by the mean value theorem. A reduction over a
  (nearly) constant group gets the worst-case growth M. The reference's own float64 rounding is part of u.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import sympy

from bnsym.spec import spec
from bnsym.spec.layout import GroupLayout
from bnsym.symbolic.layers import derivation
from bnsym.symbolic.reduction import StopGradient, is_field_expr
from bnsym.testing.magnitude import compiled, evaluate
from bnsym.testing.strategies import Example
from bnsym.testing.tolerance import SAFETY, Bound, growth, unit_roundoff

__all__ = ["EXACT_MAX_COUNT", "EXACT_MAX_GROUPS", "EvalBound", "ForwardReference", "GroupReference", "LayerBound",
           "backward", "by_group", "double_backward", "eval_backward", "eval_double_backward", "eval_forward",
           "eval_scale", "eval_values", "exact", "forward", "from_groups", "public_module", "update_running_stats"]

EXACT_MAX_COUNT = 4  # values per group for the exact reference: the instantiated expressions grow with M
EXACT_MAX_GROUPS = 12  # each group is one mpmath evaluation


def public_module(layer: str):
    """bnsym's public functions of ``layer`` (:func:`bnsym.runtime.functions.functions`: the functions of
    ``bnsym.<name>``, through the same runtime, for any registered layer, a layer of your own too)."""
    from bnsym.runtime.functions import functions

    layer_spec = spec(layer)
    made = _PUBLIC.get(layer)
    if made is None or made.spec is not layer_spec:  # a layer re-registered under the same name gets its own
        made = _PUBLIC[layer] = functions(layer_spec)
    return made


#: The functions :func:`public_module` made, by layer name: the references call them on every example, and making
#: them (signatures, docstrings, a runtime layer) cost about a tenth of a correct implementation's whole check.
_PUBLIC: dict = {}


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _arguments(example: Example, x, gamma, beta) -> list[np.ndarray]:
    """x and the layer's parameters (``spec.parameters``), in the order its public functions take them, then the
    running statistics its training forward reads (:func:`_running_read`)."""
    values = {"gamma": gamma, "beta": beta}
    return [x, *(values[name] for name in example.spec.parameters), *_running_read(example)]


def _running_read(example: Example) -> list[np.ndarray]:
    """The running statistics the layer's training forward reads (``spec.reads_running``), in float64."""
    layer = example.spec
    return [_f64(getattr(example, name)) for name in (layer.running_names if layer.reads_running else ())]


def _scalars(example: Example) -> dict[str, float]:
    """The layer's scalar options (``spec.scalars``) at the example's values, by name."""
    return {name: float(getattr(example, name)) for name in example.spec.scalar_defaults}


def _inference_arguments(example: Example, x, gamma, beta) -> list[np.ndarray]:
    """x and the parameters, as an eval-mode public function takes them (no running statistics read in training)."""
    values = {"gamma": gamma, "beta": beta}
    return [x, *(values[name] for name in example.spec.parameters)]


@dataclass(frozen=True)
class GroupReference:
    """The float64 forward pass of one example, in the grouped layout.

    ``y`` has x's shape; ``x`` (the values the layer normalises: x, or the field output ``LayerSpec.normalises``
    names, fused add + RMS norm's h) and ``x_hat`` are grouped; ``outputs`` holds each field output by name (x's
    shape) and ``fields`` every field input and output by name, grouped (the atoms of the error bounds); ``mean``,
    ``var`` (the variance of the normalised values' group, two-pass, for every layer), ``statistic`` (var, or the
    mean square ms of a layer that takes no mean) and ``scale`` (invstd or invrms) are group-shaped. ``saved`` are
    the statistics the public forward returns, as the public backward takes them.
    """

    layout: GroupLayout
    y: np.ndarray
    x: np.ndarray
    x_hat: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    statistic: np.ndarray
    scale: np.ndarray
    saved: tuple[np.ndarray, ...]
    centred: bool
    outputs: dict = None
    fields: dict = None

    @property
    def count(self) -> int:
        return self.layout.count

    @property
    def invstd(self) -> np.ndarray:
        """The scale s (1/sqrt(var + eps) for a centred layer), as :class:`bnsym.testing.tolerance.Bound` reads it."""
        return self.scale

    def grouped(self, values) -> np.ndarray:
        """An array shaped like x, in the grouped layout (float64)."""
        return _f64(values).reshape(self.layout.grouped)

    def parameter(self, values) -> np.ndarray:
        """A parameter (gamma-shaped) in its broadcast shape (float64)."""
        return _f64(values).reshape(self.layout.parameter_broadcast)


#: The name the sharded check (and :mod:`bnsym.testing.tolerance`) know the forward reference by.
ForwardReference = GroupReference


def _field_inputs(example: Example, replaced: dict) -> list[np.ndarray]:
    """The layer's field inputs (``spec.field_inputs``: fused add + RMS norm's residual) in float64, the example's
    unless ``replaced`` gives them."""
    unknown = set(replaced) - set(example.spec.field_inputs) - {"d" + o for o in example.spec.field_outputs}
    if unknown:
        raise TypeError(f"{example.layer} has no field {', '.join(sorted(unknown))}")
    return [_f64(replaced[f] if replaced.get(f) is not None else getattr(example, f))
            for f in example.spec.field_inputs]


def forward(example: Example, *, x=None, gamma=None, beta=None, eps=None, **fields) -> GroupReference:
    """The float64 reference of ``example`` (or of it with some inputs replaced, a layer's field inputs too, by
    name), from bnsym's public forward."""
    x = _f64(example.x if x is None else x)
    field_inputs = _field_inputs(example, fields)
    gamma = _f64(example.gamma if gamma is None else gamma)
    beta = _f64(example.beta if beta is None else beta)
    eps = float(example.eps if eps is None else eps)
    layout = example.layout if x.shape == example.x.shape else example.replace(x=x).layout
    layer = example.spec
    grouped = x.reshape(layout.grouped)
    mean = np.mean(grouped, axis=layout.axes, keepdims=True)
    var = np.mean((grouped - mean) ** 2, axis=layout.axes, keepdims=True)  # two-pass: invstd**-2 - eps loses it
    if layout.count == 1 and layer.single_value_error is not None and layer.centred:
        # The public function refuses training here (PyTorch's rule), but the definition holds at M = 1: mean = x,
        # var = 0, x_hat = 0, y = beta.
        scale = np.broadcast_to(1 / np.sqrt(np.float64(eps)), mean.shape)
        y = np.broadcast_to(beta.reshape(layout.parameter_broadcast), layout.grouped).reshape(layout.shape).copy()
        saved = (mean.reshape(layout.statistics_shape), scale.reshape(layout.statistics_shape))
        return GroupReference(layout, y, grouped, np.zeros_like(grouped), mean, var, var, scale, saved, True)
    arguments = _arguments(example, x, gamma, beta)
    y, *saved = public_module(example.layer).forward(arguments[0], *field_inputs, *arguments[1:], eps=eps,
                                                     **example.options, **_scalars(example), backend="numpy")
    names = layer.field_outputs
    outputs, saved = dict(zip(names, saved[:len(names)])), saved[len(names):]
    fields = {name: _f64(value).reshape(layout.grouped)
              for name, value in (("x", x), *zip(layer.field_inputs, field_inputs), *outputs.items())}
    if layer.normalises != "x":  # the statistics are those of the normalised field (h = x + residual)
        grouped = fields[layer.normalises]
        mean = np.mean(grouped, axis=layout.axes, keepdims=True)
        var = np.mean((grouped - mean) ** 2, axis=layout.axes, keepdims=True)
    scale = saved[-1].reshape(layout.statistics_broadcast)
    if layer.centred:
        statistic, x_hat = var, (grouped - mean) * scale
    else:
        statistic, x_hat = np.mean(grouped**2, axis=layout.axes, keepdims=True), grouped * scale
    return GroupReference(layout, y, grouped, x_hat, mean, var, statistic, scale, tuple(saved), layer.centred,
                          outputs, fields)


def backward(example: Example, *, dy=None, x=None, gamma=None, eps=None, **fields) -> tuple[np.ndarray, ...]:
    """(dx, dgamma, dbeta), or (dx, dgamma) for a layer with no beta, in float64 from bnsym's public backward; a
    layer with field inputs and outputs gets (dx, *d field inputs, *d parameters) for the upstream gradients dy and
    ``d<o>`` of each field output o (the example's, unless ``fields`` replaces them, as it may the field inputs)."""
    x = _f64(example.x if x is None else x)
    gamma = _f64(example.gamma if gamma is None else gamma)
    dy = _f64(example.dy if dy is None else dy)
    layer = example.spec
    inputs = {name: value for name, value in fields.items() if name in layer.field_inputs}
    ref = forward(example, x=x, gamma=gamma, beta=np.zeros_like(gamma), eps=eps, **inputs)
    upstream = [_f64(fields[name] if fields.get(name) is not None else getattr(example, name))
                for name in ("d" + o for o in layer.field_outputs)]
    normalised = x if layer.normalises == "x" else ref.outputs[layer.normalises]
    return tuple(public_module(example.layer).backward(dy, *upstream, normalised, gamma, *ref.saved,
                                                       *_running_read(example), **example.options,
                                                       **_scalars(example), backend="numpy"))


def double_backward(example: Example, cotangents, *, dy=None, x=None, gamma=None) -> tuple[np.ndarray, ...]:
    """(gx, ggamma, gdy) in float64 from bnsym's public double backward; ``cotangents`` are (ggx, gggamma,
    ggbeta), or (ggx, gggamma) for a layer with no beta. A layer with field inputs and outputs: ``cotangents`` has one
    per gradient of its backward (ggx, ggresidual, gggamma), and the result is (gx, gresidual, ggamma, gdy, gdh)."""
    x = _f64(example.x if x is None else x)
    gamma = _f64(example.gamma if gamma is None else gamma)
    dy = _f64(example.dy if dy is None else dy)
    layer = example.spec
    ref = forward(example, x=x, gamma=gamma, beta=np.zeros_like(gamma))
    upstream = [_f64(getattr(example, "d" + o)) for o in layer.field_outputs]
    normalised = x if layer.normalises == "x" else ref.outputs[layer.normalises]
    return tuple(public_module(example.layer).double_backward(*(_f64(c) for c in cotangents), dy, *upstream,
                                                              normalised, gamma, *ref.saved, *_running_read(example),
                                                              **example.options, **_scalars(example),
                                                              backend="numpy"))


# ----- eval mode and running statistics (a layer that keeps them) -----

def eval_values(example: Example, running, ref: GroupReference | None = None) -> dict[str, np.ndarray]:
    """Every step of the layer's eval forward pass (``derivation.inference_forward``) but y, by name, in float64 and
    the grouped layout (group quantities group-shaped), on the running statistics ``running`` (in the order of
    ``spec.running_names``): the running statistics themselves, and each step they stand for (batch norm: the
    mean is running_mean, the variance running_var), then whatever eval mode computes from them (the scale, for
    batch norm 1/sqrt(running_var + eps), for batch renormalisation 1/running_std; x_hat)."""
    ref = ref or forward(example)
    layout = ref.layout
    d = derivation(example.layer)
    values = {"x": ref.x, "gamma": ref.parameter(example.gamma), "beta": ref.parameter(example.beta),
              "eps": np.float64(example.eps)}
    statistics = {name: _f64(r).reshape(layout.statistics_broadcast)
                  for name, r in zip(example.spec.running_names, running)}
    values.update(statistics)
    values.update({step: statistics[name] for name, step in example.spec.running})
    for definition in d.inference_forward.definitions:
        if definition.name != d.symbols.y:
            values[definition.name.name] = np.broadcast_to(
                evaluate(definition.expr, values, ref.count, layout.axes),
                layout.grouped if is_field_expr(definition.expr) else layout.statistics_broadcast)
    return values


def eval_scale(example: Example, running) -> np.ndarray:
    """The scale eval mode normalises with (invstd: x_hat = (x - running_mean) * invstd), statistics-shaped."""
    name = derivation(example.layer).scale.name
    return eval_values(example, running)[name].reshape(example.layout.statistics_shape)


def eval_forward(example: Example, running, **replaced) -> np.ndarray:
    """The eval-mode y in float64 on the running statistics ``running`` (``spec.running_names``: batch norm's
    (running_mean, running_var))."""
    x, gamma, beta = (_f64(replaced.get(n, getattr(example, n))) for n in ("x", "gamma", "beta"))
    return public_module(example.layer).inference(*_inference_arguments(example, x, gamma, beta),
                                                  *(_f64(r) for r in running),
                                            eps=example.eps, **example.options, backend="numpy")


def eval_backward(example: Example, running) -> tuple[np.ndarray, ...]:
    """The eval-mode (dx, dgamma[, dbeta]) in float64 on the running statistics."""
    dy, x, gamma = (_f64(getattr(example, n)) for n in ("dy", "x", "gamma"))
    return tuple(public_module(example.layer).inference_backward(dy, x, gamma, *(_f64(r) for r in running),
                                                           eps=example.eps, **example.options, backend="numpy"))


def eval_double_backward(example: Example, cotangents, running) -> tuple[np.ndarray, ...]:
    """The eval-mode (gx, ggamma, gdy) in float64: the double backward with the running statistics as its fixed
    centre and scale (running_mean and eval mode's scale, :func:`eval_scale`: 1/sqrt(running_var + eps) for batch
    norm)."""
    dy, x, gamma = (_f64(getattr(example, n)) for n in ("dy", "x", "gamma"))
    mean = _f64(running[example.spec.running_names.index("running_mean")])
    return tuple(public_module(example.layer).double_backward(*(_f64(c) for c in cotangents), dy, x, gamma, mean,
                                                              eval_scale(example, running), *_running_read(example),
                                                              training=False, **example.options, backend="numpy"))


def update_running_stats(example: Example, running, ref: GroupReference, *, momentum, convention,
                         num_batches_tracked):
    """The running statistics after one training step on the batch of ``ref``, in float64, under ``convention``."""
    layout = ref.layout
    return public_module(example.layer).update_running_stats(
        *(_f64(r) for r in running), ref.mean.reshape(layout.statistics_shape),
        ref.var.reshape(layout.statistics_shape), ref.count, momentum=momentum, convention=convention,
        num_batches_tracked=num_batches_tracked)


# ----- the exact reference -----

def by_group(values: np.ndarray, layout: GroupLayout) -> np.ndarray:
    """A grouped array as (number of groups, M): the reduced axes last, flattened (one row per group)."""
    moved = np.moveaxis(values, layout.axes, range(-len(layout.axes), 0))
    return moved.reshape(-1, layout.count)


def from_groups(values: np.ndarray, layout: GroupLayout) -> np.ndarray:
    """The inverse of :func:`by_group`, reshaped to x's shape."""
    kept = [n for i, n in enumerate(layout.grouped) if i not in layout.axes]
    moved = values.reshape(*kept, *(layout.grouped[a] for a in layout.axes))
    return np.moveaxis(moved, range(-len(layout.axes), 0), layout.axes).reshape(layout.shape)


@cache
def _exact_functions(layer: str, n: int):
    """mpmath function of (x_0.., dy_0.., gamma (n values or one), [beta], eps) -> [y_0.., dx_0.., adjoints...],
    and for each parameter adjoint whether it is per element (n values) or per group (one)."""
    import sympy

    from bnsym.symbolic.brute_force import Elements, instantiate
    from bnsym.symbolic.reduction import Field

    d = derivation(layer)
    s = d.symbols
    program, closed = d.backward
    forward_program = d.training_forward
    elements = Elements(n)
    outputs = [instantiate(s.y, elements, i, forward_program) for i in range(n)]
    outputs += [instantiate(closed[program.outputs[0]], elements, i, forward_program) for i in range(n)]
    per_element = []
    for name in program.outputs[1:]:
        field = is_field_expr(closed[name])
        per_element.append(field)
        outputs += [instantiate(closed[name], elements, i, forward_program) for i in range(n if field else 1)]
    arguments = [*elements[s.x], *elements[s.dy]]
    parameter_fields = []
    for p in d.parameters:
        parameter_fields.append(isinstance(p, Field))
        arguments += list(elements[p]) if isinstance(p, Field) else [p]
    arguments += [s.eps, *d.constants]  # the constants: one value per group (or per call) each
    # A stop-gradient value is, evaluated, its value (it matters only to derivatives, which are derived already).
    outputs = [o.replace(StopGradient, lambda argument: argument) for o in outputs]
    return sympy.lambdify(arguments, outputs, modules="mpmath"), tuple(per_element), tuple(parameter_fields)


def exact(example: Example, digits: int = 50) -> tuple[np.ndarray, ...]:
    """(y, dx, dgamma[, dbeta]) of ``example`` from the derived expressions in mpmath, as float64 arrays.

    Every input float converts to mpmath exactly; the only rounding is the final conversion to float64.
    """
    import mpmath

    layout = example.layout
    n = layout.count
    groups = math.prod(layout.statistics_shape)
    if n > EXACT_MAX_COUNT or groups > EXACT_MAX_GROUPS:
        raise ValueError(f"the exact reference is for M <= {EXACT_MAX_COUNT} values per group and at most "
                         f"{EXACT_MAX_GROUPS} groups, got M = {n} and {groups} groups")
    function, per_element, parameter_fields = _exact_functions(example.layer, n)
    x, dy = (by_group(_f64(a).reshape(layout.grouped), layout) for a in (example.x, example.dy))
    names = example.spec.parameters

    def parameter_by_group(values):
        return by_group(np.broadcast_to(_f64(values).reshape(layout.parameter_broadcast), layout.grouped), layout)

    parameters = [parameter_by_group(getattr(example, name)) for name in names]
    index = parameter_by_group(np.arange(example.gamma.size).reshape(example.gamma.shape)).astype(int)
    running = [by_group(np.broadcast_to(value.reshape(layout.statistics_broadcast), layout.grouped), layout)
               for value in _running_read(example)]
    scalars = list(_scalars(example).values())
    y, dx = np.empty((groups, n)), np.empty((groups, n))
    sums: list[dict[int, list]] = [{} for _ in per_element]
    with mpmath.workdps(digits):
        for g in range(groups):
            args = [*x[g], *dy[g]]
            for values, field in zip(parameters, parameter_fields):
                args += list(values[g]) if field else [values[g][0]]
            args = [mpmath.mpf(float(v)) for v in (*args, example.eps, *(r[g][0] for r in running), *scalars)]
            out = function(*args)
            y[g] = [float(v) for v in out[:n]]
            dx[g] = [float(v) for v in out[n:2 * n]]
            position = 2 * n
            for adjoint, field in enumerate(per_element):
                for i in range(n if field else 1):
                    sums[adjoint].setdefault(int(index[g][i]), []).append(out[position + i])
                position += n if field else 1
        gradients = []
        for adjoint in sums:
            total = np.zeros(example.gamma.size)
            for where, terms in adjoint.items():
                total[where] = float(mpmath.fsum(terms))
            gradients.append(total.reshape(example.gamma.shape))
    return (from_groups(y, layout), from_groups(dx, layout), *gradients)


# ----- error bounds from the derived closed forms -----

class LayerBound:
    """Error bounds of a correct implementation of ``example``'s layer running in ``dtype`` (module docstring).

    ``field(expr)`` bounds a per-element closed form (shaped like x); ``parameter(expr)`` a parameter gradient
    (gamma-shaped: the per-group bound summed over the groups that share the parameter, plus the rounding of that
    sum); ``forward()``, ``backward(dy)`` and ``double_backward(cotangents, dy)`` the outputs of each pass.
    ``gamma`` and ``beta`` replace the example's (gamma-shaped).
    """

    def __init__(self, example: Example, ref: GroupReference, *, dtype=None, gamma=None, beta=None):
        self.example, self.ref = example, ref
        self.dtype = np.dtype(dtype or example.dtype)
        self.derivation = derivation(example.layer)
        self.u = unit_roundoff(self.dtype) + unit_roundoff(np.float64)
        self.k = growth(ref.count)
        self.tiny = float(np.finfo(self.dtype).tiny) * 16
        self.values = {"x": ref.x, "x_hat": ref.x_hat, "mean": ref.mean, "var": ref.statistic, "ms": ref.statistic,
                       self.derivation.scale.name: ref.scale,
                       "gamma": ref.parameter(example.gamma if gamma is None else gamma),
                       "beta": ref.parameter(example.beta if beta is None else beta),
                       "eps": np.float64(example.eps)}
        # A layer's field inputs and outputs (fused add + RMS norm's x, residual and h), by name: the forward
        # program's definitions of its field outputs speak of them.
        self.values.update(ref.fields or {})
        # The constants (running statistics read, scalar options): exact inputs.
        layer = example.spec
        for name in (layer.running_names if layer.reads_running else ()):
            self.values[name] = _f64(getattr(example, name)).reshape(ref.layout.statistics_broadcast)
        for name in layer.scalar_defaults:
            self.values[name] = np.float64(getattr(example, name))
        # The forward's other steps (sigma; batch renormalisation's r and d), evaluated from those before them.
        for definition in self.derivation.training_forward.definitions:
            if definition.name.name not in self.values and definition.name != self.derivation.symbols.y:
                self.values[definition.name.name] = evaluate(definition.expr, self.values, ref.count, ref.layout.axes)
        self._stopped: dict = {}  # a StopGradient node of a closed form -> the atom standing for it

    @cached_property
    def _model(self) -> Bound:
        """tolerance.Bound's model of the mean and the two-pass variance, on the groups' statistics."""
        r = self.ref
        return Bound(r, self.dtype, None, None)  # (y, gamma and beta are not used)

    @cached_property
    def errors(self) -> dict[str, np.ndarray]:
        """Bounds on the errors of the forward program's definitions (mean, var or ms, the scale, x_hat)."""
        r = self.ref
        sigma, magnitude = np.sqrt(r.var), np.abs(r.mean)
        near_constant = sigma <= np.maximum(4 * math.sqrt(r.count) * self.u,
                                            2 * r.count * unit_roundoff(np.float64)) * magnitude
        k_statistics = self.k + np.where(near_constant, r.count, 0)
        errors: dict[str, np.ndarray] = {}
        if r.centred:
            # Centring cancels: the magnitude bound of (x - mean) s would charge the rounding and the error of s with
            # |x| + |mean| in place of |x - mean|, as large at a large offset as a one-pass variance's error. The
            # model of a correct two-pass or Welford summation (batch norm's, per group) bounds them instead.
            model = self._model
            errors.update(mean=model.mean_error, var=model.var_error, invstd=model.delta * r.scale,
                          x_hat=model.delta * (1 + np.abs(r.x_hat)))
        y = self.derivation.symbols.y
        for definition in self.derivation.training_forward.definitions:
            name = definition.name.name
            if definition.name == y or name in errors:
                continue
            errors[name] = self._definition_error(definition.expr, errors, k_statistics)
        return errors

    def _stopped_atom(self, node, errors) -> sympy.Symbol:
        """The atom that stands for the stop-gradient value ``node`` in a bound: its value, and its error by moving
        each erroneous atom of its argument by its error bound, every combination of signs (a clip is monotone and
        1-Lipschitz in its argument, so the extreme moves bound it), plus the rounding of its own operations."""
        if node not in self._stopped:
            symbol = sympy.Symbol(f"_stopped{len(self._stopped)}", real=True)
            layout = self.ref.layout
            argument = node.args[0]
            value = evaluate(argument, self.values, self.ref.count, layout.axes)
            moved_atoms = [s.name for s in argument.free_symbols if s.name in errors]
            deviation = np.zeros_like(value)
            for signs in itertools.product((-1.0, 1.0), repeat=len(moved_atoms)):
                moved = dict(self.values)
                for name, sign in zip(moved_atoms, signs):
                    moved[name] = self.values[name] + sign * errors[name]
                deviation = np.maximum(deviation, np.abs(evaluate(argument, moved, self.ref.count, layout.axes)
                                                         - value))
            self.values[symbol.name] = value
            self._stopped_errors[symbol.name] = deviation + 8 * self.u * np.abs(value)
            self._stopped[node] = symbol
        return self._stopped[node]

    def _without_stopped(self, expr, errors):
        """``expr`` with every stop-gradient value an atom of its own (:meth:`_stopped_atom`)."""
        nodes = expr.atoms(StopGradient)
        if not nodes:
            return expr
        return expr.xreplace({node: self._stopped_atom(node, errors) for node in nodes})

    @cached_property
    def _stopped_errors(self) -> dict:
        return {}

    def _definition_error(self, expr, errors, k) -> np.ndarray:
        layout = self.ref.layout
        ndim = len(layout.grouped)
        if isinstance(expr, StopGradient):
            return self._stopped_errors[self._stopped_atom(expr, errors).name]
        expr = self._without_stopped(expr, errors)
        errors = {**errors, **self._stopped_errors}
        if expr.is_Pow and expr.exp.is_negative:
            # s = B**p with p < 0 (1/sqrt(var + eps)): by the mean value theorem |B'**p - B**p| <= |p| L**(p-1) e
            # for |B' - B| <= e, where L > 0 is the least B' can be: B - e, or the floor the derivation's symbols
            # give B (var and ms are sums of squares, nonnegative even when computed: B >= eps); and both powers
            # lie in (0, floor**p]. Plus the rounding of the square root and the division.
            base = evaluate(expr.base, self.values, self.ref.count, layout.axes)
            e = compiled(expr.base).bound(self.values, errors, u=self.u, k=k, count=self.ref.count, ndim=ndim,
                                          axes=layout.axes)
            p = float(expr.exp)
            zeroed = {symbol: 0 for symbol in expr.base.free_symbols
                      if symbol.is_nonnegative and not symbol.is_positive}
            floor = evaluate(expr.base.xreplace(zeroed), self.values, self.ref.count, layout.axes) \
                if zeroed else np.zeros_like(base)
            lower = np.maximum(base - e, floor)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                moved = np.where(lower > 0, abs(p) * np.abs(lower) ** (p - 1) * e, np.inf)
                moved = np.where(floor > 0, np.minimum(moved, np.abs(floor) ** p), moved)
            return moved + 2 * self.u * np.abs(base) ** p
        return compiled(expr).bound(self.values, errors, u=self.u, k=k, count=self.ref.count, ndim=ndim,
                                    axes=layout.axes)

    def _raw(self, expr, extra=None) -> tuple[np.ndarray, dict]:
        errors = self.errors
        expr = self._without_stopped(expr, errors)
        errors = {**errors, **self._stopped_errors}
        values = dict(self.values, **(extra or {}))
        bound = compiled(expr)
        needed = {s.name: values[s.name] for s in bound.atoms}
        layout = self.ref.layout
        raw = bound.bound(needed, errors, u=self.u, k=self.k, count=self.ref.count, ndim=len(layout.grouped),
                          axes=layout.axes)
        return raw, needed

    def field(self, expr, extra=None) -> np.ndarray:
        """Elementwise bound on a per-element closed form, shaped like x."""
        raw, _ = self._raw(expr, extra)
        layout = self.ref.layout
        return (SAFETY * np.broadcast_to(raw, layout.grouped) + self.tiny).reshape(layout.shape)

    def parameter(self, expr, extra=None) -> np.ndarray:
        """Bound on a parameter gradient whose per-group adjoint is ``expr``, gamma-shaped."""
        raw, needed = self._raw(expr, extra)
        layout = self.ref.layout
        magnitude = compiled(self._without_stopped(expr, self.errors)).magnitude(needed, self.ref.count,
                                                                                 len(layout.grouped), layout.axes)
        shape = layout.grouped if is_field_expr(expr) else np.broadcast_shapes(raw.shape, layout.statistics_broadcast)
        raw, magnitude = np.broadcast_to(raw, shape), np.broadcast_to(magnitude, shape)
        terms = math.prod(layout.grouped[a] for a in layout.parameter_axes)
        summed = (np.sum(raw, axis=layout.parameter_axes, keepdims=True)
                  + growth(terms) * self.u * np.sum(magnitude, axis=layout.parameter_axes, keepdims=True))
        return (SAFETY * summed + self.tiny).reshape(self.example.gamma.shape)

    def _outputs(self, program_and_closed, extra) -> list[np.ndarray]:
        program, closed = program_and_closed
        layer = self.example.spec
        fields = {"dx", "gx", "gdy", *("d" + f for f in layer.field_inputs), *("g" + f for f in layer.field_inputs),
                  *("gd" + o for o in layer.field_outputs)}
        return [self.field(closed[name], extra) if name.name in fields else self.parameter(closed[name], extra)
                for name in program.outputs]

    def forward(self) -> np.ndarray:
        """Elementwise bound on |y - y_exact|, shaped like x."""
        program = self.derivation.training_forward
        return self.field(program[self.derivation.symbols.y])

    def output(self, name: str) -> np.ndarray:
        """Elementwise bound on the field output ``name`` (fused add + RMS norm's h = x + residual), like x."""
        program = self.derivation.training_forward
        return self.field(program[getattr(self.derivation.symbols, name)])

    def backward(self, dy, **upstream) -> list[np.ndarray]:
        """Bounds on dx (like x) and the parameter gradients (gamma-shaped), in the backward's order; a layer with
        field inputs and outputs: on dx, the gradient of each field input (like x) and the parameter gradients, for
        the upstream gradients dy and those of ``upstream`` (by name, ``dh``; the example's when not given)."""
        extra = {"dy": self.ref.grouped(dy)}
        for name in ("d" + o for o in self.example.spec.field_outputs):
            extra[name] = self.ref.grouped(upstream[name] if upstream.get(name) is not None
                                           else getattr(self.example, name))
        return self._outputs(self.derivation.backward, extra)

    def double_backward(self, cotangents, dy) -> list[np.ndarray]:
        """Bounds on gx (like x), ggamma (gamma-shaped) and gdy (like x)."""
        return self._second_order(self.derivation.double_backward, cotangents, dy)

    def _second_order(self, program_and_closed, cotangents, dy) -> list[np.ndarray]:
        layer = self.example.spec
        inputs = layer.inputs  # x and any field inputs: their cotangents are shaped like x
        extra = {"dy": self.ref.grouped(dy)}
        extra.update({"gg" + f: self.ref.grouped(c) for f, c in zip(inputs, cotangents)})
        extra.update({"gg" + p: self.ref.parameter(c) for p, c in zip(("gamma", "beta"), cotangents[len(inputs):])})
        extra.update({"d" + o: self.ref.grouped(getattr(self.example, "d" + o)) for o in layer.field_outputs})
        return self._outputs(program_and_closed, extra)

    def slack(self, *values) -> float:
        """The float64 rounding of a checker-side reduction over ``values``: negligible, but never zero."""
        return SAFETY * growth(self.ref.count) * unit_roundoff(np.float64) * sum(
            float(np.sum(np.abs(v))) for v in values)


class EvalBound(LayerBound):
    """Error bounds of a correct eval-mode implementation on the running statistics ``running`` (in the order of
    ``spec.running_names``), from the layer's derived eval-mode closed forms (``derivation.inference_*``).

    Eval mode normalises with the running statistics: x_hat = (x - running_mean) s_r, s_r the scale its declaration
    computes from them (:func:`eval_values`: 1/sqrt(running_var + eps) for batch norm, 1/running_std for batch
    renormalisation). Their errors are those of one subtraction and of s_r (at most a reciprocal square root): a
    few u times s_r (|x| + |running_mean|) for x_hat, which also covers the fused form x * (gamma s_r) + (beta -
    running_mean gamma s_r) that PyTorch's CPU kernel uses, and a few u times s_r for s_r. ``forward()``,
    ``backward(dy)`` and ``double_backward(cotangents, dy)`` bound the eval-mode passes.
    """

    def __init__(self, example: Example, running, *, dtype=None, ref: GroupReference | None = None):
        ref = ref or forward(example)
        super().__init__(example, ref, dtype=dtype)
        self.values.update(eval_values(example, running, ref))
        mean, scale, x_hat = (self.values[n] for n in ("running_mean", self.derivation.scale.name, "x_hat"))
        self._errors = {"x_hat": 4 * self.u * (scale * (np.abs(ref.x) + np.abs(mean)) + np.abs(x_hat)),
                        self.derivation.scale.name: 4 * self.u * scale}

    @property
    def errors(self) -> dict[str, np.ndarray]:
        return self._errors

    def forward(self) -> np.ndarray:
        """Elementwise bound on |y - y_exact| in eval mode, shaped like x."""
        return self.field(self.derivation.inference_forward[self.derivation.symbols.y])

    def backward(self, dy) -> list[np.ndarray]:
        """Bounds on the eval-mode dx (like x) and parameter gradients (gamma-shaped)."""
        return self._outputs(self.derivation.inference_backward, {"dy": self.ref.grouped(dy)})

    def double_backward(self, cotangents, dy) -> list[np.ndarray]:
        """Bounds on the eval-mode gx (like x), ggamma (gamma-shaped) and gdy (like x)."""
        return self._second_order(self.derivation.inference_double_backward, cotangents, dy)
