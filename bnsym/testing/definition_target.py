"""A target written from the definition: any layer's forward Program evaluated with torch, its derivatives by
autograd, so that every layer (a user's new one too) has a ``torch`` implementation with no code of its own.

Notation (as in :mod:`bnsym.spec.layout`). The layer's training forward pass
(:attr:`bnsym.symbolic.layers.Derivation.training_forward`) is a straight-line Program over one group of M values.
:class:`DefinitionTarget` evaluates it on every group at once, in the kernels' grouped layout
(``layout.grouped``: x reshaped, group norm's channel axis split in two), definition by definition:

* a field (x) is x in the grouped layout; a parameter is its array in ``layout.parameter_broadcast``, whether it
  is a field (layer norm's gamma) or one value per group (batch norm's);
* ``BatchSum(e)`` is ``e`` broadcast to the grouped shape and summed over ``layout.axes`` with keepdim, so a group
  scalar (mean, invstd) has length 1 on the reduced axes and broadcasts against the fields;
* M is ``layout.count``, eps a Python float, numbers Python numbers; +, *, powers and the elementwise functions of
  :data:`FUNCTIONS` are torch's.

y is the first output, reshaped to x's shape. ``backward`` is ``torch.autograd.grad`` of y with the upstream
gradient dy; a parameter shared by several groups gets the sum of their gradients because the parameter tensor is
broadcast inside the graph. ``double_backward`` differentiates ``<ggx, dx> + sum_p <ggp, dp>`` again with respect to
x, gamma and dy (``create_graph=True``), a gradient that does not depend on an input being zero; ``jvp`` is
``torch.func.jvp``.

A layer with field inputs and outputs (``LayerSpec.field_inputs``, ``field_outputs``: fused add + RMS norm's
residual and h) takes each field input after x; ``forward`` returns (y, *field outputs) and ``backward`` is
``torch.autograd.grad`` of all of them with an upstream gradient each (dy, dh), returning the gradient of x, of each
field input and of each parameter; ``double_backward`` takes a cotangent for each of those gradients and returns
the gradients with respect to x, the field inputs, gamma and the upstream gradients. Such a layer has no JVP here.

A layer that keeps running statistics (``spec.running_statistics``) also has eval mode and the training step.
``eval_forward`` evaluates :attr:`~bnsym.symbolic.layers.Derivation.inference_forward` (the declared eval mode,
``LayerSpec.inference``, or the training forward with its averaged steps frozen to the running statistics) the
same way, ``eval_backward`` and ``eval_double_backward`` differentiate it by autograd. ``train_forward`` returns y
and each running statistic updated as (1 - f) running + f (the batch's value of the step it averages,
``LayerSpec.running``), f the weight of the batch in the target's ``convention`` (:mod:`bnsym.conventions`;
PyTorch's by default, ``DefinitionTarget(layer, convention="keras")`` another), with the unbiased variance in the
step where the convention asks for it: the update :func:`bnsym.symbolic.running_stats.update` writes down from the
declaration, evaluated with torch on the batch's mean and variance.

Calls follow the checker's protocol of the layer (:mod:`bnsym.testing.protocols`), read from the layer's
specification and derivation, not from a table: ``forward(x, *parameters, eps, *options) -> y``, ``backward(dy, x,
*parameters, eps, *options) -> (dx, *dparameters)``, ``double_backward(ggx, *ggparameters, dy, x, *parameters, eps,
*options) -> (gx, ggamma, gdy)`` and ``jvp(x, *parameters, tx, *tparameters, eps, *options) -> (y, ty)``, where the
parameters are the forward Program's (gamma, beta) or (gamma,) and the positional options are the grouping's
options without a default (group norm's ``num_groups``). The other options take their defaults (channel axis 1),
except that a grouping whose parameters hold one value per value of a group (layer and RMS norm) normalises the
trailing ``gamma.ndim`` axes of x, as ``torch.nn.functional.layer_norm`` reads its normalised shape from its
weight (``gamma.ndim - 1`` when the parameters hold one row per sample, ``Grouping.sample_parameters``: adaptive
layer norm's (N, D) scale). Options given to the constructor (``DefinitionTarget("batch_norm", axis=-1)``)
override both.

dtypes: float16, float32 and float64 (NumPy in, NumPy out in x's dtype). float16 is computed in float32 and the
results rounded to float16 once at the end, as bnsym's own functions do and as PyTorch's CPU normalisation kernels
accumulate half-precision input in float32; eps must be representable (> 0) in the dtype the arithmetic runs in.
Every computation runs on the CPU on one intra-op thread.
"""

from __future__ import annotations

import operator
import warnings
from functools import reduce

import numpy as np
import sympy

from bnsym.conventions import CONVENTIONS
from bnsym.spec.groupings import REQUIRED
from bnsym.spec.layout import GroupLayout
from bnsym.spec.validation import as_float_array, check_eps, check_same_shape, compute_dtype
from bnsym.symbolic.layers import as_derivation
from bnsym.symbolic.program import Program
from bnsym.symbolic.reduction import BatchSum, M, StopGradient
from bnsym.testing.implementation import Implementation, TargetError
from bnsym.testing.protocols import protocol
from bnsym.testing.threads import torch_one_thread

__all__ = ["FUNCTIONS", "DefinitionTarget", "definition_implementation", "evaluate"]


def _torch_functions() -> dict:
    import torch

    return {sympy.exp: torch.exp, sympy.log: torch.log, sympy.tanh: torch.tanh, sympy.sinh: torch.sinh,
            sympy.cosh: torch.cosh, sympy.sin: torch.sin, sympy.cos: torch.cos, sympy.Abs: torch.abs,
            sympy.erf: torch.erf}


#: The SymPy functions a definition may use besides +, *, powers and BatchSum (each becomes torch's namesake).
FUNCTIONS = ("exp", "log", "tanh", "sinh", "cosh", "sin", "cos", "Abs", "erf")


class _Evaluator:
    """Evaluates SymPy expressions of one Program with torch tensors bound to its names (module docstring)."""

    def __init__(self, values: dict, layout: GroupLayout):
        import torch

        self.torch = torch
        self.values = dict(values)
        self.values[M] = layout.count
        self.layout = layout
        self.functions = _torch_functions()

    def reduce(self, value):
        """BatchSum: ``value`` broadcast to the grouped shape, summed over the reduced axes, keepdim."""
        torch = self.torch
        if not isinstance(value, torch.Tensor):  # a number: BatchSum keeps none, but M * c is what it would be
            return value * self.layout.count
        full = torch.broadcast_to(value, torch.broadcast_shapes(value.shape, self.layout.grouped))
        return full.sum(dim=self.layout.axes, keepdim=True)

    def __call__(self, expr: sympy.Expr):
        torch = self.torch
        if expr in self.values:
            return self.values[expr]
        if isinstance(expr, sympy.Integer):
            return int(expr)
        if expr.is_number:  # 1/2, pi, exp(2): constants, in double precision
            return float(expr)
        if isinstance(expr, sympy.Symbol):
            raise ValueError(f"the forward pass uses {expr}, which is neither an input it is given nor defined "
                             "before it is used")
        if isinstance(expr, BatchSum):
            return self.reduce(self(expr.args[0]))
        if isinstance(expr, sympy.Add):
            return reduce(operator.add, (self(arg) for arg in expr.args))
        if isinstance(expr, sympy.Mul):
            return reduce(operator.mul, (self(arg) for arg in expr.args))
        if isinstance(expr, sympy.Pow):
            base, exponent = self(expr.base), self(expr.exp)
            if isinstance(base, torch.Tensor) and isinstance(exponent, float) and abs(exponent) == 0.5:
                return torch.sqrt(base) if exponent > 0 else torch.rsqrt(base)
            return base**exponent
        if isinstance(expr, StopGradient):  # held constant by autograd, as by the derivation
            value = self(expr.args[0])
            return value.detach() if isinstance(value, torch.Tensor) else value
        if isinstance(expr, (sympy.Min, sympy.Max)):
            function = torch.minimum if isinstance(expr, sympy.Min) else torch.maximum
            values = [self(arg) for arg in expr.args]
            like = next((v for v in values if isinstance(v, torch.Tensor)), None)
            values = [v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=like.dtype if like is not None
                                                                           else torch.float64) for v in values]
            return reduce(function, values)
        if expr.func in self.functions:
            (argument,) = expr.args
            value = self(argument)
            return self.functions[expr.func](value if isinstance(value, torch.Tensor) else torch.tensor(value))
        raise NotImplementedError(f"the definition target cannot evaluate {expr.func.__name__} (in {expr}); it knows "
                                  f"+, *, powers, BatchSum, StopGradient, Min, Max and {', '.join(FUNCTIONS)}")


def evaluate(program: Program, values: dict, layout: GroupLayout) -> dict:
    """Every name of ``program`` evaluated with torch, from ``values`` (its inputs: tensors in the grouped layout or
    the parameter broadcast shape, numbers for group scalars such as eps); returns the inputs and every definition,
    by symbol (module docstring)."""
    evaluator = _Evaluator(values, layout)
    for definition in program.definitions:
        evaluator.values[definition.name] = evaluator(definition.expr)
    return evaluator.values




class DefinitionTarget:
    """A layer's forward, backward, double backward and JVP evaluated from its definition with torch (module
    docstring). ``layer``: a registered layer's name, a LayerDeclaration or a Derivation; ``convention``: the
    running-statistics convention of ``train_forward`` (a layer that keeps running statistics); ``options``: options
    of the layer fixed for every call (they are then not taken positionally)."""

    def __init__(self, layer, convention: str = "torch", **options):
        self.derivation = as_derivation(layer)
        self.spec = self.derivation.declaration.spec
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {tuple(CONVENTIONS)}, got {convention!r}")
        self.convention = CONVENTIONS[convention]
        grouping = self.spec.grouping
        unknown = set(options) - set(grouping.option_names)
        if unknown:
            raise TypeError(f"{self.spec.name} has no option {', '.join(sorted(unknown))}; its options are "
                            f"{', '.join(grouping.option_names) or 'none'}")
        self.fixed = dict(options)
        forward = self.derivation.training_forward
        s = self.derivation.symbols
        self.y = forward.outputs[0]
        self.parameter_symbols = tuple(self.derivation.parameters)
        self.parameters = tuple(str(p) for p in self.parameter_symbols)
        self.constants = self.derivation.constants  # running statistics read, scalar options: never differentiated
        # x and the layer's field inputs (residual); y and its field outputs (h), with an upstream gradient each.
        self.field_symbols = tuple(self.derivation.field_inputs)
        self.fields = tuple(str(f) for f in self.field_symbols)
        self.output_symbols = tuple(self.derivation.field_outputs)
        self.upstream = tuple("d" + str(o) for o in self.output_symbols)
        known = {s.eps, *self.field_symbols, *self.parameter_symbols, *self.constants}
        extra = [str(i) for i in forward.inputs if i not in known]
        if extra:
            raise ValueError(f"{self.spec.name}: the forward pass takes {', '.join(extra)}, which the protocol "
                             f"({', '.join(self.fields + self.parameters)}, eps) does not give")
        self.option_arguments = tuple(o.name for o in grouping.options
                                      if o.default is REQUIRED and o.name not in self.fixed)
        self.name = f"{self.spec.name} from its definition (torch)"
        p, opts, f = self.parameters, (*self.option_arguments, *(str(c) for c in self.constants)), self.fields
        self.signatures = {
            "forward": (*f, *p, "eps", *opts),
            "backward": (*self.upstream, *f, *p, "eps", *opts),
        }
        self.signatures["double_backward"] = (*("gg" + g for g in (*f, *p)), *self.upstream, *f, *p, "eps", *opts)
        if self.spec.plain:  # the forward-mode protocol is that of x in, y out
            self.signatures["jvp"] = ("x", *p, "tx", *("t" + q for q in p), "eps", *opts)
        if self.spec.running_statistics:
            self._eval_signatures()

    def _eval_signatures(self) -> None:
        """The eval-mode and training-step methods of a layer that keeps running statistics, as the checker's
        protocol has them (:mod:`bnsym.testing.protocols`): the running statistics after the training arguments,
        unless the training forward reads them already (then they replace the constants in eval mode)."""
        running = self.spec.running_names
        p, options = self.parameters, self.option_arguments
        if self.spec.reads_running:
            self.signatures.update({
                "eval_forward": ("x", *p, "eps", *options, *running),
                "eval_backward": ("dy", "x", *p, "eps", *options, *running),
                "train_forward": (*self.signatures["forward"], "momentum", "num_batches_tracked"),
            })
        else:
            self.signatures.update({
                "eval_forward": (*self.signatures["forward"], *running),
                "eval_backward": (*self.signatures["backward"], *running),
                "train_forward": (*self.signatures["forward"], *running, "momentum", "num_batches_tracked"),
            })
        cotangents = ("ggx", *("gg" + q for q in p))
        self.signatures["eval_double_backward"] = (*cotangents, "dy", "x", *p, "eps", *options, *running)

    def __repr__(self) -> str:
        return f"DefinitionTarget({self.spec.name!r})"

    # ----- arguments -----

    def _arguments(self, method: str, args: tuple) -> dict:
        names = self.signatures[method]
        if len(args) != len(names):
            raise TypeError(f"{self.spec.name} {method} takes ({', '.join(names)}), got {len(args)} arguments")
        return dict(zip(names, args))

    def _layout(self, x: np.ndarray, gamma: np.ndarray, a: dict) -> GroupLayout:
        options = {name: a[name] for name in self.option_arguments}
        options.update(self.fixed)
        grouping = self.spec.grouping
        if grouping.parameter_per_value and "axis" not in options:
            # gamma is (*normalised), or (N, *normalised) when the parameters hold a row per sample (adaptive norms)
            normalised = gamma.ndim - grouping.sample_parameters
            if not 1 <= normalised <= x.ndim - grouping.sample_parameters:
                what = "one row per sample of x's batch axis and " if grouping.sample_parameters else ""
                raise ValueError(f"gamma must have the shape of {what}the trailing normalised axes of x (shape "
                                 f"{x.shape}), got shape {gamma.shape}")
            options["axis"] = tuple(range(x.ndim - normalised, x.ndim))
        return self.spec.layout(x.shape, **options)

    def _prepare(self, method: str, args: tuple):
        """(arguments by name, layout, x's dtype, compute dtype, eps), every array validated."""
        a = self._arguments(method, args)
        x = as_float_array(a["x"], "x", min_ndim=self.spec.min_ndim)
        a["x"] = x
        gamma = as_float_array(a["gamma"], "gamma")
        layout = self._layout(x, gamma, a)
        compute = compute_dtype(x.dtype)
        eps = check_eps(a["eps"], compute)
        for name in self.parameters:
            a[name] = layout.parameter(a[name], name, compute).reshape(layout.parameter_shape)
        for name in ("dy", "tx", "ggx", *self.fields[1:], *self.upstream[1:], *("gg" + f for f in self.fields[1:])):
            if name in a:
                a[name] = check_same_shape(a[name], name, x.shape)
        for prefix in ("t", "gg"):
            for name in self.parameters:
                if prefix + name in a:
                    a[prefix + name] = layout.parameter(a[prefix + name], prefix + name, compute).reshape(
                        layout.parameter_shape)
        # The constants, as the forward pass reads them: a running statistic per group (tensors in the statistics'
        # broadcast shape), a scalar option as a Python float.
        scalars = self.spec.scalar_defaults
        self._constants = {c: (float(a[c.name]) if c.name in scalars
                               else self._tensor(layout.statistic(a[c.name], c.name, compute), compute))
                           for c in self.constants if c.name in a}  # (eval mode takes no scalar options)
        # The running statistics an eval-mode method or a training step is given (never differentiated).
        self._running = {symbol: self._tensor(layout.statistic(a[symbol.name], symbol.name, compute), compute)
                         for symbol in self.derivation.running if symbol.name in a}
        return a, layout, x.dtype, compute, eps

    # ----- evaluation -----

    def _y(self, x, parameters, eps: float, layout: GroupLayout, fields=(), mode: str = "train"):
        """y (x's shape) from torch tensors x (x's shape) and the parameters (parameter shape); ``fields`` are the
        layer's other field inputs (x's shape); ``mode`` as in :meth:`_values`."""
        return self._outputs((x, *fields), parameters, eps, layout, mode)[0]

    def _values(self, fields, parameters, eps: float, layout: GroupLayout, mode: str = "train") -> dict:
        """Every name of the forward pass of ``mode`` (``"train"``: the training forward, with the constants it
        reads; ``"eval"``: :attr:`~bnsym.symbolic.layers.Derivation.inference_forward`, with the running
        statistics) from torch tensors of x and the field inputs (x's shape) and of the parameters (parameter
        shape)."""
        s = self.derivation.symbols
        values = {s.eps: eps, **self._constants}
        if mode == "eval":
            values.update(self._running)
        for symbol, value in zip(self.field_symbols, fields):
            values[symbol] = value.reshape(layout.grouped)
        for symbol, value in zip(self.parameter_symbols, parameters):
            values[symbol] = value.reshape(layout.parameter_broadcast)
        program = self.derivation.inference_forward if mode == "eval" else self.derivation.training_forward
        return evaluate(program, values, layout)

    def _outputs(self, fields, parameters, eps: float, layout: GroupLayout, mode: str = "train") -> list:
        """y and each field output (x's shape) of the forward pass of ``mode`` (:meth:`_values`; eval mode: y)."""
        evaluated = self._values(fields, parameters, eps, layout, mode)
        outputs = (self.y,) if mode == "eval" else self.output_symbols
        return [self._torch.broadcast_to(evaluated[o], layout.grouped).reshape(layout.shape) for o in outputs]

    @property
    def _torch(self):
        import torch

        return torch

    def _tensor(self, value, dtype, grad: bool = False):
        return self._torch.tensor(np.asarray(value, dtype=dtype), requires_grad=grad)

    @staticmethod
    def _numpy(value, dtype) -> np.ndarray:
        return value.detach().numpy().astype(dtype, copy=False)

    # ----- the protocol -----

    def forward(self, *args, method: str = "forward"):
        """y (the protocol's forward, module docstring); (y, *field outputs) for a layer with field outputs."""
        a, layout, dtype, compute, eps = self._prepare(method, args)
        with torch_one_thread(), self._torch.no_grad():
            outputs = self._outputs([self._tensor(a[f], compute) for f in self.fields],
                                    [self._tensor(a[p], compute) for p in self.parameters], eps, layout,
                                    _MODES[method])
        outputs = tuple(self._numpy(o, dtype) for o in outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def backward(self, *args, method: str = "backward") -> tuple[np.ndarray, ...]:
        """(dx, dgamma[, dbeta]) for the upstream gradient dy; (dx, *d field inputs, *d parameters) for the
        upstream gradients of y and of each field output (dy, dh) for a layer with field inputs and outputs."""
        a, layout, dtype, compute, eps = self._prepare(method, args)
        fields = [self._tensor(a[f], compute, True) for f in self.fields]
        parameters = [self._tensor(a[p], compute, True) for p in self.parameters]
        with torch_one_thread():
            outputs = self._outputs(fields, parameters, eps, layout, _MODES[method])
            gradients = self._torch.autograd.grad(outputs, (*fields, *parameters),
                                                  [self._tensor(a[d], compute) for d in self.upstream],
                                                  allow_unused=True)
        return tuple(self._zero_if_unused(g, t, dtype) for g, t in zip(gradients, (*fields, *parameters)))

    def _zero_if_unused(self, gradient, tensor, dtype) -> np.ndarray:
        # A gradient that does not depend on an input (y independent of beta's value, say) comes back as None: zero.
        if gradient is None:
            return np.zeros(tuple(tensor.shape), dtype)
        return self._numpy(gradient, dtype)

    def double_backward(self, *args, method: str = "double_backward") -> tuple[np.ndarray, ...]:
        """(gx, ggamma, gdy): the gradients of <ggx, dx> + sum over the parameters p of <ggp, dp> with respect to x,
        gamma and dy; with a layer's field inputs and outputs (gx, *g field inputs, ggamma, gdy, *gd outputs)."""
        a, layout, dtype, compute, eps = self._prepare(method, args)
        fields = [self._tensor(a[f], compute, True) for f in self.fields]
        parameters = [self._tensor(a[p], compute, True) for p in self.parameters]
        upstream = [self._tensor(a[d], compute, True) for d in self.upstream]
        cotangents = [self._tensor(a["gg" + g], compute) for g in (*self.fields, *self.parameters)]
        with torch_one_thread():
            outputs = self._outputs(fields, parameters, eps, layout, _MODES[method])
            first = self._torch.autograd.grad(outputs, (*fields, *parameters), upstream, create_graph=True,
                                              allow_unused=True)
            total = sum((g * c).sum() for g, c in zip(first, cotangents) if g is not None)
            inputs = (*fields, parameters[0], *upstream)
            if not isinstance(total, self._torch.Tensor) or not total.requires_grad:
                return tuple(np.zeros(tuple(t.shape), dtype) for t in inputs)
            second = self._torch.autograd.grad(total, inputs, allow_unused=True)
        return tuple(self._zero_if_unused(g, t, dtype) for g, t in zip(second, inputs))

    def jvp(self, *args) -> tuple[np.ndarray, np.ndarray]:
        """(y, ty): y and its directional derivative when x and the parameters move along their tangents."""
        a, layout, dtype, compute, eps = self._prepare("jvp", args)
        primals = (self._tensor(a["x"], compute), *(self._tensor(a[p], compute) for p in self.parameters))
        tangents = (self._tensor(a["tx"], compute), *(self._tensor(a["t" + p], compute) for p in self.parameters))
        with torch_one_thread(), warnings.catch_warnings():
            # torch's forward mode loads its decompositions on first use with torch.jit.script, which warns that
            # torch.jit.script is deprecated: torch's own business, not the caller's.
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
            y, ty = self._torch.func.jvp(lambda x, *parameters: self._y(x, parameters, eps, layout), primals,
                                         tangents)
        return self._numpy(y, dtype), self._numpy(ty, dtype)


    # ----- eval mode and the training step (a layer that keeps running statistics) -----

    def eval_forward(self, *args) -> np.ndarray:
        """The eval-mode y: the layer's eval forward pass on the running statistics given."""
        return self.forward(*args, method="eval_forward")

    def eval_backward(self, *args) -> tuple[np.ndarray, ...]:
        """The eval-mode (dx, dgamma[, dbeta]), by autograd through the eval forward pass."""
        return self.backward(*args, method="eval_backward")

    def eval_double_backward(self, *args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The eval-mode (gx, ggamma, gdy), by autograd twice through the eval forward pass."""
        return self.double_backward(*args, method="eval_double_backward")

    def train_forward(self, *args) -> tuple[np.ndarray, ...]:
        """(y, new running statistics...): a training step in the target's convention (``convention``, PyTorch's
        by default). Each running statistic becomes (1 - f) running + f (the batch's value of the step it averages,
        ``LayerSpec.running``), f the convention's weight of the batch, the unbiased variance in the step where the
        convention asks for it: the update :func:`bnsym.symbolic.running_stats.update` writes down, evaluated here
        with torch on the batch's mean and variance. ``num_batches_tracked`` counts the batches before this one."""
        from bnsym.symbolic.running_stats import RUNNING, update

        a, layout, dtype, compute, eps = self._prepare("train_forward", args)
        momentum, batches = a["momentum"], a["num_batches_tracked"]
        if momentum is None and not self.convention.cumulative:
            raise ValueError(f"momentum is None, which only the cumulative convention takes (the target follows "
                             f"{self.convention.name})")
        s = self.derivation.symbols
        with torch_one_thread(), self._torch.no_grad():
            values = self._values([self._tensor(a[f], compute) for f in self.fields],
                                  [self._tensor(a[p], compute) for p in self.parameters], eps, layout, "train")
            y = self._torch.broadcast_to(values[self.y], layout.grouped).reshape(layout.shape)
            given = {s.mean: values[s.mean], s.var: values[s.var], s.eps: eps, **self._running,
                     RUNNING.momentum: None if momentum is None else float(momentum),
                     RUNNING.num_batches_tracked: int(batches) + 1}
            updated = [self._torch.broadcast_to(_Evaluator(given, layout)(expr), layout.statistics_broadcast)
                       for expr in update(self.derivation, self.convention)]
        running_dtype = np.asarray(a[self.spec.running_names[0]]).dtype
        return (self._numpy(y, dtype),
                *(self._numpy(value.reshape(layout.statistics_shape), running_dtype) for value in updated))


#: The forward pass each method differentiates: the training one, or eval mode's.
_MODES = {"forward": "train", "backward": "train", "double_backward": "train", "eval_forward": "eval",
          "eval_backward": "eval", "eval_double_backward": "eval"}


def definition_implementation(layer, **options) -> Implementation:
    """The :class:`~bnsym.testing.implementation.Implementation` of ``layer`` (a registered layer the checker has a
    protocol for) from its definition: :class:`DefinitionTarget`'s forward, backward and double backward.
    TargetError when the target's arguments are not the protocol's (an option fixed that the protocol passes)."""
    target = DefinitionTarget(layer, **options)
    signatures = protocol(target.spec.name).signatures
    methods = [m for m in ("forward", "backward", "double_backward", "eval_forward", "eval_backward",
                           "eval_double_backward", "train_forward") if m in target.signatures and m in signatures]
    for method in methods:
        if method in signatures and signatures[method] != target.signatures[method]:
            raise TargetError(f"{target.name}: {method} takes ({', '.join(target.signatures[method])}), but the "
                              f"{target.spec.name} protocol passes ({', '.join(signatures[method])})")
    return Implementation(target.forward, target.backward, name=target.name, layer=target.spec.name,
                          **{m: getattr(target, m) for m in methods if m not in ("forward", "backward")})
