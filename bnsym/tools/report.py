"""What ``bnsym derive`` shows a person: each layer's derived equations, and a numerical check of its generated code.

The check calls the generated kernels of every registered layer through their declared ``SIGNATURES`` on a small
two-dimensional layout built from the declaration alone (a group is a row when the parameters vary within a group,
a column otherwise), so a new layer is checked with no code here.
"""

from __future__ import annotations

import importlib

import numpy as np
import sympy

from bnsym.spec import spec
from bnsym.symbolic import naming

__all__ = ["derivation_summary", "finite_difference_checks"]

_STEP = 1e-6


def _central(f, h: float = _STEP) -> float:
    return (f(h) - f(-h)) / (2 * h)


def _relative(numeric: float, analytic: float) -> float:
    return abs(numeric - analytic) / max(abs(numeric), 1e-300)


class _Kernels:
    """Calls a layer's generated kernels by the names in their SIGNATURES."""

    def __init__(self, name: str, reducer):
        self.name = name
        self.module = importlib.import_module(spec(name).kernels_module)
        self.reducer = reducer

    def has(self, kernel: str) -> bool:
        return f"{self.name}_{kernel}" in self.module.SIGNATURES

    def __call__(self, kernel: str, **arrays) -> dict[str, np.ndarray]:
        full = f"{self.name}_{kernel}"
        parameters, results = self.module.SIGNATURES[full]
        arrays["reducer"] = self.reducer
        values = getattr(self.module, full)(*(arrays[p] for p in parameters))
        return dict(zip(results, values))


class _WithConstants:
    """Kernels called with the same constants (scalar options, running statistics read) every time."""

    def __init__(self, kernels: _Kernels, constants: dict):
        self.kernels, self.constants = kernels, constants
        self.module = kernels.module

    def __call__(self, kernel: str, **arrays) -> dict[str, np.ndarray]:
        return self.kernels(kernel, **self.constants, **arrays)


def finite_difference_checks(name: str, seed: int = 0, shape=(6, 5), eps: float = 1e-3
                             ) -> dict[str, float]:
    """Relative errors of layer ``name``'s generated derivatives against central finite differences, in float64.

    For random inputs and random directions (never ones: the gradient of sum(y) is zero), with the field inputs
    f (x, and a layer's ``field_inputs``) moving along u_f, the parameters p along a_p, and an upstream gradient
    d_o for each field output o (y, and a layer's ``field_outputs``):

    - ``backward``: sum_f <df, u_f> + sum_p <dp, a_p> against the central difference of sum_o <d_o, o>;
    - ``jvp``: sum_o <d_o, t_o> against the same central difference;
    - ``double backward``: sum_f <gf, u_f> + <ggamma, a_gamma> + sum_o <gd_o, v_o> against the central difference
      of sum_f <ggf, df> + sum_p <ggp, dp> along (u, a_gamma, v), with the gradients from the backward.
    """
    from bnsym.runtime.reduce import Reducer
    from bnsym.symbolic.layers import LAYERS

    declaration = LAYERS[name]
    layer = spec(name)
    rng = np.random.default_rng(seed)
    rows, columns = shape
    # A group is a row (parameters vary within it) or a column (one parameter value per group).
    axes, count = ((1,), columns) if declaration.per_element_parameters else ((0,), rows)
    kernels = _Kernels(name, Reducer(axes, count, (0,) if declaration.per_element_parameters else ()))
    # The forward kernel's parameters say whether the layer has a shift (RMS norm has none).
    parameters = ("gamma", "beta") if "beta" in kernels.module.SIGNATURES[f"{name}_forward"][0] else ("gamma",)
    inputs, outputs = layer.inputs, layer.outputs

    def draw(size):
        return rng.normal(size=size)

    x = {f: 3.0 + 2.0 * draw(shape) for f in inputs}
    u = {f: draw(shape) for f in inputs}
    gg = {f: draw(shape) for f in inputs}
    d = {o: draw(shape) for o in outputs}
    v = {o: draw(shape) for o in outputs}
    p = {k: draw((1, columns)) for k in parameters}
    a = {k: draw((1, columns)) for k in parameters}
    cotangent = {k: draw((1, columns)) for k in parameters}

    # The inputs that are never differentiated: the layer's scalar options at their defaults, and the running
    # statistics a training forward reads. A stop-gradient value (batch renormalisation's r and d) is a constant of
    # the derivatives but not of the function, so finite differences agree with the derivatives only where it is
    # locally constant: the running statistics are far from the batch's (mean -100, spreads 1e-3), where a
    # clipped correction is at its bound.
    layer_spec = spec(name)
    statistics = (1, columns) if not declaration.per_element_parameters else (rows, 1)
    constants = {**layer_spec.scalar_defaults,
                 **{r: np.full(statistics, -100.0 if r == "running_mean" else 1e-3)
                    for r in (layer_spec.running_names if layer_spec.reads_running else ())}}
    kernels = _WithConstants(kernels, constants)

    def forward(h):
        return kernels("forward", eps=eps, **{f: x[f] + h * u[f] for f in inputs},
                       **{k: p[k] + h * a[k] for k in parameters})

    def loss(h):
        results = forward(h)
        return sum(np.vdot(d[o], results[o]) for o in outputs)

    def backward_at(h):
        # The saved statistics (and the normalised field, x or a field output) come from the forward pass; beta
        # moving along with gamma changes nothing here. Each kernel takes the arrays its signature names.
        saved = {**{f: x[f] + h * u[f] for f in inputs}, **forward(h)}
        return kernels("backward", **saved, gamma=p["gamma"] + h * a["gamma"],
                       **{"d" + o: d[o] + h * v[o] for o in outputs})

    def first_order(h):
        grads = backward_at(h)
        return (sum(np.vdot(gg[f], grads["d" + f]) for f in inputs)
                + sum(np.vdot(cotangent[k], grads["d" + k]) for k in parameters))

    grads = backward_at(0.0)
    tangents = {"t" + k: a[k] for k in parameters}
    jvp = kernels("jvp", eps=eps, **x, **p, **{"t" + f: u[f] for f in inputs}, **tangents)
    saved = {**x, **forward(0.0)}
    second = kernels("double_backward", **saved, gamma=p["gamma"], **{"d" + o: d[o] for o in outputs},
                     **{"gg" + f: gg[f] for f in inputs}, **{"gg" + k: cotangent[k] for k in parameters})
    directional = _central(loss)
    return {
        "backward": _relative(directional, sum(np.vdot(grads["d" + f], u[f]) for f in inputs)
                              + sum(np.vdot(grads["d" + k], a[k]) for k in parameters)),
        "jvp": _relative(directional, sum(np.vdot(d[o], jvp["t" + o]) for o in outputs)),
        "double backward": _relative(_central(first_order), sum(np.vdot(second["g" + f], u[f]) for f in inputs)
                                     + np.vdot(second["ggamma"], a["gamma"])
                                     + sum(np.vdot(second["gd" + o], v[o]) for o in outputs)),
    }


def derivation_summary() -> str:
    """Each layer's derived closed forms in plain text, and the finite-difference checks of its generated code."""
    from bnsym.symbolic.layers import LAYERS, derivation

    lines = []
    for name in LAYERS:
        layer = derivation(name)
        lines += [f"{layer.declaration.title} (derivations/{name}.md has every step):", ""]
        for definition in layer.training_forward.definitions:
            lines.append(f"  {definition.name} = {definition.expr}")
        sections = [("backward", layer.backward)]
        if layer.declaration.running_statistics:
            sections.append(("eval-mode backward", layer.inference_backward))
        sections.append(("forward mode", layer.jvp))
        # A parameter shared by several groups (every layer but batch norm) gets the sum of the per-group adjoint
        # over the groups that share it: the closed form is one group's, so the sum is printed around it.
        shared = {naming.adjoint(str(p)): str(p) for p in layer.parameters} if layer.declaration.shared_parameters \
            else {}
        for title, (program, closed) in sections:
            lines += ["", f"  {title}:"]
            for output in program.outputs:
                if output in closed:
                    expression = sympy.factor_terms(closed[output])
                    if str(output) in shared:
                        lines.append(f"    {output} = sum over the groups sharing {shared[str(output)]} of "
                                     f"({expression})")
                    else:
                        lines.append(f"    {output} = {expression}")
            if shared and any(str(output) in shared for output in program.outputs):
                lines.append(f"    (the parameters have {layer.declaration.parameters_are}, while a group is "
                             f"{layer.declaration.group}: each parameter value serves several groups)")
        program, closed = layer.double_backward
        sizes = ", ".join(f"{o} ({sympy.count_ops(closed[o])} operations)" for o in program.outputs)
        lines += ["", f"  double backward: {sizes}; see the document", ""]
    lines += ["Check of the generated code (float64, shape (6, 5), central finite differences, h = 1e-6):"]
    width = max(map(len, LAYERS))
    for name in LAYERS:
        checks = ", ".join(f"{what} {error:.1e} {'ok' if error < 1e-6 else 'MISMATCH'}"
                           for what, error in finite_difference_checks(name).items())
        lines.append(f"  {name:{width}s} {checks}")
    return "\n".join(lines)
