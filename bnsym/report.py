"""What ``bnsym derive`` shows a person: the derived equations, and a numerical check of the generated code."""

from __future__ import annotations

import numpy as np
import sympy

__all__ = ["derivation_summary", "finite_difference_checks"]

_STEP = 1e-6


def _central(f, h: float = _STEP) -> float:
    return (f(h) - f(-h)) / (2 * h)


def _relative(numeric: float, analytic: float) -> float:
    return abs(numeric - analytic) / max(abs(numeric), 1e-300)


def finite_difference_checks(seed: int = 0, shape=(6, 3, 4), eps: float = 1e-3) -> dict[str, float]:
    """Relative errors of the generated derivatives against central finite differences, in float64.

    For random x, gamma, beta, dy and random directions (never ones: the gradient of sum(y) is zero):

    - ``backward``: <dx, u> + <dgamma, a> + <dbeta, b> against the central difference of <dy, y> along (u, a, b);
    - ``jvp``: <dy, ty> against the same central difference;
    - ``double backward``: <gx, u> + <ggamma, a> + <gdy, v> against the central difference of
      <ggx, dx> + gggamma . dgamma + ggbeta . dbeta along (u, a, v), with dx, dgamma, dbeta from the backward.
    """
    import bnsym

    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = rng.normal(3.0, 2.0, size=shape)
    gamma, beta, dy = rng.normal(size=channels), rng.normal(size=channels), rng.normal(size=shape)
    u, a, b, v = rng.normal(size=shape), rng.normal(size=channels), rng.normal(size=channels), rng.normal(size=shape)
    ggx, gggamma, ggbeta = rng.normal(size=shape), rng.normal(size=channels), rng.normal(size=channels)

    def loss(h):
        return np.vdot(dy, bnsym.batch_norm_forward(x + h * u, gamma + h * a, beta + h * b, eps=eps)[0])

    def first_order(h):
        xh, gh, dyh = x + h * u, gamma + h * a, dy + h * v
        _, mean, invstd = bnsym.batch_norm_forward(xh, gh, beta, eps=eps)
        dx, dgamma, dbeta = bnsym.batch_norm_backward(dyh, xh, gh, mean, invstd)
        return np.vdot(ggx, dx) + np.vdot(gggamma, dgamma) + np.vdot(ggbeta, dbeta)

    _, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta, eps=eps)
    dx, dgamma, dbeta = bnsym.batch_norm_backward(dy, x, gamma, mean, invstd)
    _, ty = bnsym.batch_norm_jvp(x, gamma, beta, u, a, b, eps=eps)
    gx, ggamma, gdy = bnsym.batch_norm_double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd)
    directional = _central(loss)
    return {
        "backward": _relative(directional, np.vdot(dx, u) + np.vdot(dgamma, a) + np.vdot(dbeta, b)),
        "jvp": _relative(directional, np.vdot(dy, ty)),
        "double backward": _relative(_central(first_order), np.vdot(gx, u) + np.vdot(ggamma, a) + np.vdot(gdy, v)),
    }


def derivation_summary() -> str:
    """The derived closed forms in plain text, and the finite-difference checks of the generated code."""
    from bnsym.symbolic import batch_norm as bn

    lines = ["Derived from the training forward pass (derivations/batch_norm.md has every step):", ""]
    for definition in bn.training_forward().definitions:
        lines.append(f"  {definition.name} = {definition.expr}")
    for title, derivation in (("backward", bn.backward), ("eval-mode backward", bn.inference_backward),
                              ("forward mode", bn.jvp)):
        lines += ["", f"  {title}:"]
        program, closed = derivation()
        for name in program.outputs:
            if name in closed:
                lines.append(f"    {name} = {sympy.factor_terms(closed[name])}")
    program, closed = bn.double_backward()
    sizes = ", ".join(f"{name} ({sympy.count_ops(closed[name])} operations)" for name in program.outputs)
    lines += ["", f"  double backward: {sizes}; see the document"]
    lines += ["", "Check of the generated code (float64, shape (6, 3, 4), central finite differences, h = 1e-6):"]
    for name, error in finite_difference_checks().items():
        verdict = "ok" if error < 1e-6 else "MISMATCH"
        lines.append(f"  {name:16s} relative error {error:.1e}  {verdict}")
    return "\n".join(lines)
