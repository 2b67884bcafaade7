"""The public verbs of every layer (forward, backward, double_backward, jvp; eval mode and running statistics for
the layers that keep them), written once.

A public layer module (``bnsym.batch_norm``, ``bnsym.layer_norm``, ...) declares one :class:`Layer`: its name (the
generated module ``bnsym._generated.<name>`` and its kernels ``<name>_<verb>``), how x's shape and the layer's
options become a :class:`~bnsym.spec.layout.GroupLayout`, its rules for small groups, and whether it keeps
running statistics. Each public function passes its arguments by name to :meth:`Layer.run`, which validates each by
its role (the tables below), arranges it for the kernels, calls the generated kernel with the arguments its
``SIGNATURES`` entry names, and arranges the results back.

Modes. ``training=True`` (the default) runs the training kernels ``<name>_<verb>``, whose statistics are the
batch's own (computed by ``forward``, saved for the others); a group must hold at least one value, and the layer may
refuse groups of one (``single_value_error``). ``training=False`` is eval mode, which only a layer that keeps
running statistics has: the statistics are constants (``running_mean`` and ``running_var``; for the double
backward, the ``mean`` and ``invstd`` made from them), so groups of any size are fine, and the kernels are the
layer's ``<name>_inference`` (forward), ``<name>_inference_backward`` and ``<name>_inference_double_backward``.
:meth:`Layer.update_running_stats` folds a training batch's statistics into the running ones
(:mod:`bnsym.running_stats`).

Roles, by argument name (the names of the generated kernels' signatures):

* fields, shaped like x: x, dy, and ggx, tx (None means zero); for a layer with field inputs and outputs
  (``LayerSpec.field_inputs``, ``field_outputs``: fused add + RMS norm's residual and h) also each field input f
  and field output o, their upstream gradients ``d<o>``, and ggf, tf (None means zero). The backward verbs read
  the normalised field (``LayerSpec.normalises``: x, or h) in place of x; the first field of a call gives the
  shape, the dtype of the results and the backend;
* parameters, of the layer's parameter shape: the specification's parameters, gamma and beta (None means no such
  parameter: its neutral value, ``LayerSpec.neutral_values``, gamma = 1 and beta = 0 for the standard layers,
  gamma = 0 for a scale by 1 + gamma; the gradient for that parameter comes back as None), and their cotangents and
  tangents gggamma, ggbeta, tgamma, tbeta (None means zero);
* statistics saved by the forward pass: mean, invstd, invrms (the statistics shape, such as (N, G) or (C,));
* running statistics (eval mode, and the training verbs of a layer whose training forward reads them,
  ``LayerSpec.reads_running``): the specification's ``running_names``, running_mean and running_var by default
  (the statistics shape; every one but running_mean must be >= 0);
* eps, a scalar; the specification's scalar options (``LayerSpec.scalars``: finite numbers >= 0, in the dtype of
  the arithmetic); the reducer (built from the layout: the reduced axes, M, the parameter-gradient axes).

dtypes: arithmetic runs in float32 for float16 input, else in the dtype of x (and dy); fields and parameter
gradients come back in x's dtype, statistics in the dtype of the arithmetic (float32 for float16: rounded to
float16, a mean near 300 loses its fraction and the backward that reuses it its accuracy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnsym import running_stats
from bnsym.runtime.backends import Backend, resolve
from bnsym.spec import validation as v
from bnsym.spec.layers import LayerSpec
from bnsym.spec.layers import spec as spec_named
from bnsym.spec.layout import GroupLayout

__all__ = ["Layer"]

_FIELDS = ("x", "dy")
_OPTIONAL_FIELDS = ("ggx", "tx")
_PARAMETER_DIRECTIONS = {"gggamma": "gamma", "ggbeta": "beta", "tgamma": "gamma", "tbeta": "beta"}
_STATISTICS = ("mean", "invstd", "invrms")
_FIELD_RESULTS = ("y", "dx", "gx", "gdy", "ty")
_PARAMETER_GRADIENTS = {"dgamma": "gamma", "dbeta": "beta", "ggamma": "gamma"}

_NO_EPS = object()

#: Eval mode's kernel for each verb that has one: ``<name>_<kernel>`` (bnsym.codegen.layer_kernels names them).
_EVAL_KERNELS = {"forward": "inference", "backward": "inference_backward",
                 "double_backward": "inference_double_backward"}


@dataclass(frozen=True)
class Layer:
    """One layer's runtime, read from its specification (:class:`bnsym.spec.LayerSpec`).

    The specification's grouping validates the layer's options (``axis``, ``num_groups``) against x's shape and
    returns the layout; ``min_ndim`` is the fewest dimensions x may have; ``single_value_error``, when set, is the
    message (with ``{where}``, the layout's description) for groups of one value, which the layer refuses in
    training (batch norm and instance norm, as PyTorch does); every layer refuses groups of no value in training.
    ``running_statistics``: the layer keeps running statistics, so it has an eval mode (``training=False``) and
    :meth:`update_running_stats`.
    """

    spec: LayerSpec

    @classmethod
    def named(cls, name: str) -> Layer:
        """The runtime of the layer ``name`` of :data:`bnsym.spec.SPECS`."""
        return cls(spec_named(name))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layout(self) -> Callable[..., GroupLayout]:
        return self.spec.grouping.layout

    @property
    def min_ndim(self) -> int:
        return self.spec.min_ndim

    @functools.cached_property
    def _neutral(self) -> dict[str, float]:
        """The value of each parameter that None stands for (read from the specification once)."""
        return self.spec.neutral_values

    @property
    def single_value_error(self) -> str | None:
        return self.spec.single_value_error

    @property
    def running_statistics(self) -> bool:
        return self.spec.running_statistics

    def run(self, verb: str, arguments: dict, *, eps=_NO_EPS, backend="auto", training=True, **options) -> tuple:
        """Validate ``arguments`` (the public function's, by name), call the kernel of ``verb`` in the mode that
        ``training`` says (module docstring) of the ``backend`` (:mod:`bnsym.runtime.backends`), and return its results
        arranged as the caller sees them, in the kernel's order."""
        kernel_name = self._kernel_name(verb, training)
        roles = self._roles
        primary = "x" if "x" in arguments else self.spec.normalises
        arrays = _Arrays(resolve(backend, arguments[primary]))
        x = arrays.input(arguments[primary], primary, min_ndim=self.min_ndim)
        layout = _layout(self.layout, tuple(x.shape), options)
        fields = {primary: x}
        for name in roles.fields:
            if name in arguments and name != primary:
                fields[name] = arrays.same_shape(arguments[name], name, layout.shape)
        dtype = arrays.compute_dtype(*fields.values())
        prepared = {name: arrays.field(layout, array, dtype) for name, array in fields.items()}
        if eps is not _NO_EPS:
            prepared["eps"] = arrays.eps(eps, dtype)
        absent = set()  # the parameters that are None: no affine part
        for name, value in arguments.items():
            if name in roles.fields:
                continue
            if name in roles.optional_fields:
                prepared[name] = (arrays.full(layout.grouped, 0, dtype) if value is None
                                  else arrays.field(layout, arrays.same_shape(value, name, layout.shape), dtype))
            elif name in self.spec.parameters:
                if value is None:
                    absent.add(name)
                    prepared[name] = arrays.full(layout.parameter_broadcast, self._neutral[name], dtype)
                else:
                    prepared[name] = arrays.parameter(layout, value, name, dtype)
            elif name in _PARAMETER_DIRECTIONS:
                prepared[name] = self._direction(arrays, layout, name, value, arguments, dtype)
            elif name in _STATISTICS:
                prepared[name] = arrays.statistic(layout, value, name, dtype)
            elif name in self.spec.running_names:
                prepared[name] = arrays.statistic(layout, value, name, dtype)
                # Every running statistic but the mean is a spread: a variance (running_var, used as var + eps) is
                # never negative; any other (batch renormalisation's running_std) divides, so it is never 0 either.
                step = dict(self.spec.running)[name]
                zero_allowed = step == "var"
                if step != "mean" and not arrays.all_nonnegative(prepared[name], zero_allowed=zero_allowed):
                    bound = ">= 0" if zero_allowed else "> 0"  # the comparison also refuses NaN
                    raise ValueError(f"{name} must be {bound} (and not NaN), got {arrays.flat(prepared[name])}")
            elif name in self.spec.scalar_defaults:
                prepared[name] = arrays.scalar(v.check_scalar_option(value, name), dtype)
            else:
                raise RuntimeError(f"bnsym.{self.name}.{verb} passed an argument {name!r} that has no role here")
        if training:  # the statistics come from the batch; in eval mode they are given, and any group size will do
            self._require_values(layout)
        kernel, inputs, outputs = self._kernel(kernel_name, set(prepared), arrays.backend)
        results = kernel(*(arrays.reducer(layout) if name == "reducer" else prepared[name] for name in inputs))
        if len(outputs) == 1:  # a kernel of one output returns it alone
            results = (results,)
        return tuple(self._result(arrays, layout, name, result, x.dtype, absent)
                     for name, result in zip(outputs, results))

    @functools.cached_property
    def _roles(self) -> _Roles:
        """The names of the fields, optional fields and field results of this layer's kernels (module docstring)."""
        spec = self.spec
        inputs, outputs = spec.field_inputs, spec.field_outputs
        return _Roles(
            fields=(*_FIELDS, *inputs, *outputs, *("d" + o for o in outputs)),
            optional_fields=(*_OPTIONAL_FIELDS, *("gg" + f for f in inputs), *("t" + f for f in inputs)),
            field_results=(*_FIELD_RESULTS, *outputs, *("d" + f for f in inputs), *("g" + f for f in inputs),
                           *("gd" + o for o in outputs), *("t" + o for o in outputs)))

    def update_running_stats(self, running_mean, running_var, mean, var, count, **options):
        """The running statistics after one training batch (:func:`bnsym.running_stats.update`), with this layer's
        kernels. ``running_var`` is the layer's second running statistic (batch renormalisation's running_std, which
        averages sqrt(var + eps): ``eps`` then defaults to the layer's)."""
        self._require_running_statistics("update_running_stats")
        options.setdefault("eps", self.spec.eps)
        return running_stats.update(self.spec.kernels_module, running_mean, running_var, mean, var, count, **options)

    def _kernel_name(self, verb: str, training) -> str:
        """The generated kernel that runs ``verb`` in the mode ``training`` asks for."""
        if not isinstance(training, bool):
            raise TypeError(f"training must be True or False, got {training!r}")
        if training:
            return f"{self.name}_{verb}"
        self._require_running_statistics(f"{verb} with training=False")
        if verb not in _EVAL_KERNELS:
            raise RuntimeError(f"bnsym.{self.name}.{verb} has no eval mode (training=False)")
        return f"{self.name}_{_EVAL_KERNELS[verb]}"

    def _require_running_statistics(self, what: str) -> None:
        if not self.running_statistics:
            raise ValueError(f"bnsym.{self.name} keeps no running statistics, so it has no eval mode and no running "
                             f"statistics to update ({what})")

    def _direction(self, arrays: _Arrays, layout: GroupLayout, name: str, value, arguments: dict, dtype):
        """A cotangent or tangent of a parameter: None means zero; given for a parameter that is None, refused."""
        parameter = _PARAMETER_DIRECTIONS[name]
        if value is None:
            return arrays.full(layout.parameter_broadcast, 0, dtype)
        if parameter in arguments and arguments[parameter] is None:
            raise ValueError(f"{name} was given, but {parameter} is None: the layer has no {parameter}, so {name} "
                             f"has nothing to belong to; pass {name}=None")
        return arrays.parameter(layout, value, name, dtype)

    def _require_values(self, layout: GroupLayout) -> None:
        if layout.count == 0:
            raise ValueError(f"x has no values to normalise in a group ({layout.where}): every group needs at least "
                             "one value")
        if layout.count == 1 and self.single_value_error is not None:
            raise ValueError(self.single_value_error.format(where=layout.where))

    def _kernel(self, name: str, available: set[str], backend: Backend):
        try:
            module = backend.kernels(self.spec.kernels_module)
        except ModuleNotFoundError as error:
            package = self.spec.kernels_package
            if error.name is None or not (package == error.name or package.startswith(error.name + ".")):
                raise
            # A layer of your own whose kernels package is not on sys.path: say where it is looked for.
            raise ModuleNotFoundError(
                f"the generated kernels of the layer {self.name!r} (its kernels_package {package!r}) cannot be "
                f"imported: write them with `bnsym derive FILE.py:NAME --out {package.replace('.', '/')}` in the "
                "folder of its declaration file (loading FILE.py:NAME puts that folder on sys.path), or add the "
                f"folder that holds {package.split('.')[0]}/ to sys.path", name=error.name) from None
        inputs, outputs = module.SIGNATURES[name]
        wanted = set(inputs) - {"reducer"}
        if wanted != available:
            raise RuntimeError(f"bnsym.{self.name} prepared {sorted(available)} but the generated kernel {name} "
                               f"takes {list(inputs)}: the public function and the kernel disagree")
        return getattr(module, name), inputs, outputs

    def _result(self, arrays: _Arrays, layout: GroupLayout, name: str, value, dtype, absent: set[str]):
        if name in self._roles.field_results:
            return arrays.result(value, layout.shape, dtype)
        if name in _STATISTICS:
            return arrays.result(value, layout.statistics_shape)
        if name in _PARAMETER_GRADIENTS:
            return None if _PARAMETER_GRADIENTS[name] in absent else arrays.result(value, layout.parameter_shape, dtype)
        raise RuntimeError(f"the generated kernels of {self.name} returned {name!r}, which has no role in "
                           f"bnsym.{self.name}")


@dataclass(frozen=True)
class _Roles:
    """The names of one layer's per-element arguments and results, by role."""

    fields: tuple[str, ...]
    optional_fields: tuple[str, ...]
    field_results: tuple[str, ...]


def _layout(layout: Callable[..., GroupLayout], shape: tuple[int, ...], options: dict) -> GroupLayout:
    """``layout(shape, **options)``, remembered for options of plain integers (and tuples of them): a layer is
    called with the same shapes again and again, and working out a layout costs as much as a small call's
    arithmetic. Other options (such as ``axis=1.0``, which must be refused, or a list) are never looked up, so that
    a value equal to an integer is never taken for it."""
    if all(type(value) is int or (type(value) is tuple and all(type(a) is int for a in value))
           for value in options.values()):
        return _remembered_layout(layout, shape, tuple(options.items()))
    return layout(shape, **options)


@functools.lru_cache(maxsize=256)
def _remembered_layout(layout: Callable[..., GroupLayout], shape: tuple[int, ...], options: tuple) -> GroupLayout:
    return layout(shape, **dict(options))


class _Arrays:
    """The array handling of one call, in the library of its backend: NumPy for the NumPy-based backends (through
    :class:`GroupLayout`'s own methods), the array-API namespace ``xp`` otherwise (the same steps, with ``xp``;
    arrays that are not of x's library are converted to it, on x's device)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.numpy = backend.is_numpy
        self.xp = backend.xp
        self.device = None

    def input(self, value, name: str, *, min_ndim: int = 0):
        if self.numpy:
            return v.as_float_array(value, name, min_ndim=min_ndim)
        from array_api_compat import device

        array = v.xp_float_array(self.xp, value, name, min_ndim=min_ndim, device=self.device)
        if self.device is None:
            self.device = device(array)
        return array

    def same_shape(self, value, name: str, shape: tuple[int, ...]):
        if self.numpy:
            return v.check_same_shape(value, name, shape)
        array = self.input(value, name)
        if tuple(array.shape) != shape:
            raise ValueError(f"{name} must have the same shape as x, {shape}, got shape {tuple(array.shape)}")
        return array

    def compute_dtype(self, *arrays):
        if self.numpy:
            return v.compute_dtype(np.result_type(*arrays))
        dtype = self.xp.result_type(*arrays)
        return self.xp.float32 if dtype == self.xp.float16 else dtype

    def eps(self, value, dtype):
        if self.numpy:
            return dtype.type(v.check_eps(value, dtype))
        name = next(n for n in ("float16", "float32", "float64") if dtype == getattr(self.xp, n))
        return float(v.check_eps(value, np.dtype(name)))  # a Python float takes the arrays' dtype

    def scalar(self, value: float, dtype):
        """A scalar option in the dtype of the arithmetic (a Python float takes the arrays' dtype in the array API)."""
        return dtype.type(value) if self.numpy else value

    def full(self, shape, value, dtype):
        if self.numpy:
            return np.full(shape, value, dtype)
        return self.xp.full(shape, value, dtype=dtype, device=self.device)

    def field(self, layout: GroupLayout, array, dtype):
        if self.numpy:
            return layout.field(array, dtype)
        return self.xp.reshape(self.xp.astype(array, dtype, copy=False), layout.grouped)

    def _shaped(self, layout: GroupLayout, value, name: str, shape, broadcast, meaning: str, dtype):
        array = self.input(value, name)
        if tuple(array.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, {meaning} ({layout.where}), got shape "
                             f"{tuple(array.shape)}")
        return self.xp.reshape(self.xp.astype(array, dtype, copy=False), broadcast)

    def parameter(self, layout: GroupLayout, value, name: str, dtype):
        if self.numpy:
            return layout.parameter(value, name, dtype)
        return self._shaped(layout, value, name, layout.parameter_shape, layout.parameter_broadcast,
                            layout.parameter_meaning, dtype)

    def statistic(self, layout: GroupLayout, value, name: str, dtype):
        if self.numpy:
            return layout.statistic(value, name, dtype)
        return self._shaped(layout, value, name, layout.statistics_shape, layout.statistics_broadcast,
                            layout.statistics_meaning, dtype)

    def all_nonnegative(self, array, *, zero_allowed: bool = True) -> bool:
        """Whether every value is >= 0 (> 0 unless ``zero_allowed``; and none is NaN); True without looking for
        arrays that cannot be read here (JAX arrays, which may be traced inside jax.jit)."""
        if self.numpy:
            return bool(np.all(array >= 0 if zero_allowed else array > 0))
        from array_api_compat import is_lazy_array

        if is_lazy_array(array):
            return True
        return bool(self.xp.all(array >= 0 if zero_allowed else array > 0))

    def flat(self, array):
        """A per-group array as one row of values, for a message."""
        return np.reshape(array, -1) if self.numpy else self.xp.reshape(array, (-1,))

    def reducer(self, layout: GroupLayout):
        return self.backend.reducer(layout.axes, layout.count, layout.parameter_axes)

    def result(self, array, shape, dtype=None):
        """A kernel's result in the caller's shape (and dtype, if given)."""
        if self.numpy:
            array = np.reshape(array, shape)
            return array if dtype is None else array.astype(dtype, copy=False)
        array = self.xp.reshape(array, shape)
        return array if dtype is None else self.xp.astype(array, dtype, copy=False)
