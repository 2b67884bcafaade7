"""What ``bnsym derive`` shows a person: the derived equations, and a numerical check of the generated code."""

from __future__ import annotations

import numpy as np
import sympy

__all__ = ["derivation_summary", "finite_difference_check"]


def finite_difference_check(seed: int = 0, shape=(6, 3, 4), eps: float = 1e-3) -> dict[str, float]:
    """Relative errors of the generated backward against central finite differences of the generated forward.

    Everything is float64. For random x, gamma, beta, dy and directions u (of x) and a, b (of gamma, beta), it
    compares <dx, u> + <dgamma, a> + <dbeta, b> with the central difference of <dy, y> along (u, a, b).
    """
    from bnsym import batch_norm_backward, batch_norm_forward

    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    dy = rng.normal(size=shape)
    y, mean, invstd = batch_norm_forward(x, gamma, beta, eps=eps)
    dx, dgamma, dbeta = batch_norm_backward(dy, x, gamma, mean, invstd)
    errors = {}
    for name, (u, a, b) in {
        "dx": (rng.normal(size=shape), 0 * gamma, 0 * beta),
        "dgamma": (0 * x, rng.normal(size=shape[1]), 0 * beta),
        "dbeta": (0 * x, 0 * gamma, rng.normal(size=shape[1])),
    }.items():
        h = 1e-6
        plus = np.vdot(dy, batch_norm_forward(x + h * u, gamma + h * a, beta + h * b, eps=eps)[0])
        minus = np.vdot(dy, batch_norm_forward(x - h * u, gamma - h * a, beta - h * b, eps=eps)[0])
        numeric = (plus - minus) / (2 * h)
        analytic = np.vdot(dx, u) + np.vdot(dgamma, a) + np.vdot(dbeta, b)
        errors[name] = abs(numeric - analytic) / max(abs(numeric), 1e-300)
    return errors


def derivation_summary() -> str:
    """The derived closed forms in plain text, and the finite-difference check of the generated code."""
    from bnsym.symbolic import batch_norm as bn

    lines = ["Derived from the training forward pass (derivations/batch_norm.md has every step):", ""]
    for definition in bn.training_forward().definitions:
        lines.append(f"  {definition.name} = {definition.expr}")
    lines.append("")
    program, closed = bn.backward()
    for name in program.outputs:
        lines.append(f"  {name} = {sympy.factor_terms(closed[name])}")
    lines += ["", "Check of the generated code (float64, shape (6, 3, 4), central finite differences, h = 1e-6):"]
    for name, error in finite_difference_check().items():
        verdict = "ok" if error < 1e-6 else "MISMATCH"
        lines.append(f"  {name:7s} relative error {error:.1e}  {verdict}")
    return "\n".join(lines)
