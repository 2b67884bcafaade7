"""The public verbs of the normalisation family (forward, backward, double_backward, jvp), written once.

A public layer module (``bnsym.layer_norm``, ...) declares one :class:`Layer`: its name (the generated module
``bnsym._generated.<name>`` and its kernels ``<name>_<verb>``), how x's shape and the layer's options become a
:class:`~bnsym._family_layout.GroupLayout`, and its rules for small groups. Each public function passes its
arguments by name to :meth:`Layer.run`, which validates each by its role (the tables below), arranges it for the
kernels, calls the generated kernel with the arguments its ``SIGNATURES`` entry names, and arranges the results back.

Roles, by argument name (the names of the generated kernels' signatures):

* fields, shaped like x: x, dy, and ggx, tx (None means zero);
* parameters, of the layer's parameter shape: gamma, beta (None means no affine part: gamma = 1, beta = 0, and the
  gradient for that parameter comes back as None), and their cotangents and tangents gggamma, ggbeta, tgamma, tbeta
  (None means zero);
* statistics saved by the forward pass: mean, invstd, invrms (the statistics shape, such as (N, G));
* eps, a scalar; the reducer (built from the layout: the reduced axes, M, the parameter-gradient axes).

dtypes: arithmetic runs in float32 for float16 input, else in the dtype of x (and dy); fields and parameter
gradients come back in x's dtype, statistics in the dtype of the arithmetic (float32 for float16: rounded to
float16, a mean near 300 loses its fraction and the backward that reuses it its accuracy).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnsym import _validation as v
from bnsym._family_layout import GroupLayout

__all__ = ["Layer"]

_FIELDS = ("x", "dy")
_OPTIONAL_FIELDS = ("ggx", "tx")
_AFFINE = {"gamma": np.ones, "beta": np.zeros}  # the value of a parameter that is None
_PARAMETER_DIRECTIONS = {"gggamma": "gamma", "ggbeta": "beta", "tgamma": "gamma", "tbeta": "beta"}
_STATISTICS = ("mean", "invstd", "invrms")
_FIELD_RESULTS = ("y", "dx", "gx", "gdy", "ty")
_PARAMETER_GRADIENTS = {"dgamma": "gamma", "dbeta": "beta", "ggamma": "gamma"}

_NO_EPS = object()


@dataclass(frozen=True)
class Layer:
    """One layer of the family, as its public module declares it.

    ``layout(shape, **options)`` validates the layer's options (``axis``, ``num_groups``) against x's shape and
    returns the layout. ``min_ndim`` is the fewest dimensions x may have. ``single_value_error``, when set, is the
    message (with ``{where}``, the layout's description) for groups of one value, which the layer refuses
    (instance norm, as PyTorch does); every layer refuses groups of no value.
    """

    name: str
    layout: Callable[..., GroupLayout]
    min_ndim: int = 2
    single_value_error: str | None = None

    def run(self, verb: str, arguments: dict, *, eps=_NO_EPS, **options) -> tuple:
        """Validate ``arguments`` (the public function's, by name), call the kernel ``<name>_<verb>``, and return
        its results arranged as the caller sees them, in the kernel's order."""
        x = v.as_float_array(arguments["x"], "x", min_ndim=self.min_ndim)
        layout = self.layout(x.shape, **options)
        arrays = {"x": x}
        if "dy" in arguments:
            arrays["dy"] = v.check_same_shape(arguments["dy"], "dy", x.shape)
        dtype = v.compute_dtype(np.result_type(*arrays.values()))
        prepared = {name: layout.field(array, dtype) for name, array in arrays.items()}
        if eps is not _NO_EPS:
            prepared["eps"] = dtype.type(v.check_eps(eps, dtype))
        absent = set()  # the parameters that are None: no affine part
        for name, value in arguments.items():
            if name in _FIELDS:
                continue
            if name in _OPTIONAL_FIELDS:
                prepared[name] = (np.zeros(layout.grouped, dtype) if value is None
                                  else layout.field(v.check_same_shape(value, name, x.shape), dtype))
            elif name in _AFFINE:
                if value is None:
                    absent.add(name)
                    prepared[name] = _AFFINE[name](layout.parameter_broadcast, dtype)
                else:
                    prepared[name] = layout.parameter(value, name, dtype)
            elif name in _PARAMETER_DIRECTIONS:
                prepared[name] = self._direction(layout, name, value, arguments, dtype)
            elif name in _STATISTICS:
                prepared[name] = layout.statistic(value, name, dtype)
            else:
                raise RuntimeError(f"bnsym.{self.name}.{verb} passed an argument {name!r} that has no role here")
        self._require_values(layout)
        kernel, inputs, outputs = self._kernel(verb, set(prepared))
        results = kernel(*(layout.reducer() if name == "reducer" else prepared[name] for name in inputs))
        return tuple(self._result(layout, name, result, x.dtype, absent) for name, result in zip(outputs, results))

    def _direction(self, layout: GroupLayout, name: str, value, arguments: dict, dtype) -> np.ndarray:
        """A cotangent or tangent of a parameter: None means zero; given for a parameter that is None, refused."""
        parameter = _PARAMETER_DIRECTIONS[name]
        if value is None:
            return np.zeros(layout.parameter_broadcast, dtype)
        if parameter in arguments and arguments[parameter] is None:
            raise ValueError(f"{name} was given, but {parameter} is None: the layer has no {parameter}, so {name} "
                             f"has nothing to belong to; pass {name}=None")
        return layout.parameter(value, name, dtype)

    def _require_values(self, layout: GroupLayout) -> None:
        if layout.count == 0:
            raise ValueError(f"x has no values to normalise in a group ({layout.where}): every group needs at least "
                             "one value")
        if layout.count == 1 and self.single_value_error is not None:
            raise ValueError(self.single_value_error.format(where=layout.where))

    def _kernel(self, verb: str, available: set[str]):
        # Imported on first use, not with bnsym, so that `bnsym derive` can regenerate a broken or missing module.
        module = importlib.import_module(f"bnsym._generated.{self.name}")
        name = f"{self.name}_{verb}"
        inputs, outputs = module.SIGNATURES[name]
        wanted = set(inputs) - {"reducer"}
        if wanted != available:
            raise RuntimeError(f"bnsym.{self.name}.{verb} prepared {sorted(available)} but the generated kernel "
                               f"{name} takes {list(inputs)}: the public function and the kernel disagree")
        return getattr(module, name), inputs, outputs

    def _result(self, layout: GroupLayout, name: str, value: np.ndarray, dtype, absent: set[str]):
        if name in _FIELD_RESULTS:
            return layout.field_result(value, dtype)
        if name in _STATISTICS:
            return layout.statistics_result(value)
        if name in _PARAMETER_GRADIENTS:
            return None if _PARAMETER_GRADIENTS[name] in absent else layout.parameter_result(value, dtype)
        raise RuntimeError(f"the generated kernels of {self.name} returned {name!r}, which has no role in "
                           f"bnsym.{self.name}")
