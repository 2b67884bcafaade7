"""The public functions of any specified layer, made from its specification: what ``bnsym.layer_norm`` is for a
built-in layer, for a layer registered at run time (a user's own, or a test's).

``functions(spec)`` returns a :class:`LayerFunctions` whose members take their arguments in the order of the
built-in modules, with the layer's parameters (``spec.parameters``), saved statistics (``spec.saved``) and options
(``spec.options``) in place of a particular layer's::

    forward(x, gamma, beta, eps=spec.eps, **options)             -> (y, *saved)
    backward(dy, x, gamma, *saved, **options)                    -> (dx, dgamma, dbeta)
    double_backward(ggx, gggamma, ggbeta, dy, x, gamma, *saved, **options, training=True) -> (gx, ggamma, gdy)
    jvp(x, gamma, beta, tx, tgamma, tbeta, eps=spec.eps, **options) -> (y, ty)

(a layer without beta drops beta and its cotangent and tangent), and for a layer that keeps running statistics
``inference(x, gamma, beta, running_mean, running_var, eps, **options) -> y``, ``inference_backward(dy, x, gamma,
running_mean, running_var, eps, **options)`` and ``update_running_stats``. Every keyword takes ``backend`` as the
built-in modules do. Each one validates and arranges its arguments through :class:`bnsym.runtime.layer.Layer`,
exactly as the built-in modules' functions do, and runs the layer's generated kernels
(:attr:`bnsym.spec.LayerSpec.kernels_module`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bnsym.runtime.layer import Layer
from bnsym.spec.groupings import REQUIRED
from bnsym.spec.layers import LayerSpec

__all__ = ["LayerFunctions", "functions"]


@dataclass(frozen=True)
class LayerFunctions:
    """The public functions of one layer (module docstring)."""

    spec: LayerSpec

    @property
    def _layer(self) -> Layer:
        return Layer(self.spec)

    def _bind(self, names: tuple[str, ...], args: tuple, kwargs: dict, verb: str) -> tuple[dict, dict]:
        """The positional arguments by name, and the layer's options (defaults filled in; unknown keywords and
        missing arguments are a TypeError naming them, as Python's own would be)."""
        if len(args) > len(names):
            raise TypeError(f"{self.spec.name}.{verb} takes {len(names)} positional arguments ({', '.join(names)}), "
                            f"got {len(args)}")
        arguments = dict(zip(names, args))
        for name in names[len(args):]:
            if name not in kwargs:
                raise TypeError(f"{self.spec.name}.{verb} is missing the argument {name!r}")
            arguments[name] = kwargs.pop(name)
        options = {}
        for option in self.spec.grouping.options:
            if option.name in kwargs:
                options[option.name] = kwargs.pop(option.name)
            elif option.default is REQUIRED:
                raise TypeError(f"{self.spec.name}.{verb} needs the option {option.name!r}: {option.meaning}")
            else:
                options[option.name] = option.default
        return arguments, options

    def _run(self, verb: str, names: tuple[str, ...], args, kwargs, *, takes_eps: bool, training=True):
        kwargs = dict(kwargs)
        backend = kwargs.pop("backend", "auto")
        eps = kwargs.pop("eps", self.spec.eps) if takes_eps else None
        arguments, options = self._bind(names, args, kwargs, verb)
        if kwargs:
            raise TypeError(f"{self.spec.name}.{verb} got unexpected keyword arguments {sorted(kwargs)}; its "
                            f"options are {list(self.spec.options)}")
        extra = {"eps": eps} if takes_eps else {}
        return self._layer.run(verb, arguments, backend=backend, training=training, **extra, **options)

    @property
    def _parameters(self) -> tuple[str, ...]:
        return self.spec.parameters

    def forward(self, *args, **kwargs):
        """``(y, *saved)`` of x (module docstring)."""
        return self._run("forward", ("x", *self._parameters), args, kwargs, takes_eps=True)

    def backward(self, *args, **kwargs):
        """``(dx, dgamma[, dbeta])`` for the upstream gradient dy, from the saved statistics of :meth:`forward`."""
        return self._run("backward", ("dy", "x", "gamma", *self.spec.saved), args, kwargs, takes_eps=False)

    def double_backward(self, *args, training: bool = True, **kwargs):
        """``(gx, ggamma, gdy)``: the gradients of <ggx, dx> + <gggamma, dgamma> (+ <ggbeta, dbeta>)."""
        cotangents = tuple("gg" + p for p in self._parameters)
        return self._run("double_backward", ("ggx", *cotangents, "dy", "x", "gamma", *self.spec.saved), args,
                         kwargs, takes_eps=False, training=training)

    def jvp(self, *args, **kwargs):
        """``(y, ty)``: the output and its directional derivative along the tangents of x and the parameters."""
        tangents = tuple("t" + p for p in self._parameters)
        return self._run("jvp", ("x", *self._parameters, "tx", *tangents), args, kwargs, takes_eps=True)

    def inference(self, *args, **kwargs):
        """Eval mode: y normalised with the given running statistics (layers that keep them)."""
        (y,) = self._run("forward", ("x", *self._parameters, "running_mean", "running_var"), args, kwargs,
                         takes_eps=True, training=False)
        return y

    def inference_backward(self, *args, **kwargs):
        """Eval-mode backward, the running statistics constant (layers that keep them)."""
        return self._run("backward", ("dy", "x", "gamma", "running_mean", "running_var"), args, kwargs,
                         takes_eps=True, training=False)

    def update_running_stats(self, running_mean, running_var, mean, var, count, **options):
        """The running statistics after one training batch (:func:`bnsym.running_stats.update`)."""
        return self._layer.update_running_stats(running_mean, running_var, mean, var, count, **options)

    @property
    def verbs(self) -> tuple[str, ...]:
        """The names of its public functions (eval mode's only for a layer that keeps running statistics)."""
        verbs = ("forward", "backward", "double_backward", "jvp")
        if self.spec.running_statistics:
            verbs += ("inference", "inference_backward")
        return verbs


def functions(spec: LayerSpec) -> LayerFunctions:
    """The public functions of the specified layer ``spec`` (module docstring)."""
    if not isinstance(spec, LayerSpec):
        raise TypeError(f"functions takes a LayerSpec, got {type(spec).__name__}")
    return LayerFunctions(spec)

