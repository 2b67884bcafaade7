"""The derivation document, ``derivations/batch_norm.md``, written from the same SymPy objects as the code.

GitHub renders the ```` ```math ```` blocks. Every equation below comes from a :class:`~bnsym.symbolic.program.
Program` or a closed form in :mod:`bnsym.symbolic.batch_norm`; none is typed here.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy

from bnsym.latex import to_latex
from bnsym.symbolic import batch_norm as bn
from bnsym.symbolic import running_stats
from bnsym.symbolic.program import Definition

__all__ = ["render_batch_norm_document"]

GENERATED_NOTICE = ("<!-- GENERATED FILE: written by `bnsym derive` from bnsym/symbolic/batch_norm.py. "
                    "Do not edit by hand; `bnsym derive --check` fails when it is stale. -->")


def _math(lines: Iterable[str]) -> str:
    body = " \\\\\n".join(lines)
    return "```math\n\\begin{aligned}\n" + body + "\n\\end{aligned}\n```"


def _aligned(definitions: Iterable[Definition]) -> str:
    return _math(f"{to_latex(d.name)} &= {to_latex(d.expr)}" for d in definitions)


def _equation(lhs: sympy.Expr, rhs: sympy.Expr) -> str:
    return f"{to_latex(lhs)} &= {to_latex(rhs)}"


def render_batch_norm_document() -> str:
    """The Markdown text of ``derivations/batch_norm.md``."""
    forward = bn.training_forward()
    program, closed = bn.backward()
    forward_names = {d.name for d in forward.definitions}
    steps = [d for d in program.definitions if d.name not in forward_names]
    facts = bn.facts()
    dx, dgamma, dbeta = program.outputs
    out = [
        GENERATED_NOTICE,
        "",
        "# Batch normalisation, derived",
        "",
        "This document is written by `bnsym derive` from the SymPy objects that also generate "
        "`bnsym/_generated/batch_norm.py`. Nothing here is typed by hand: the forward pass is defined once, and "
        "every other equation is derived from it by SymPy.",
        "",
        "## Notation",
        "",
        "One channel holds $M$ values (batch times spatial positions); $M$ is a symbol, so every result holds for "
        "every batch size. A subscript $i$ is one element of the channel, $\\sum_j$ a sum over all $M$ elements. "
        "$\\mu$ is the batch mean, $\\sigma^2$ the biased batch variance, $s = 1/\\sqrt{\\sigma^2 + \\epsilon}$ "
        "(`invstd` in code) and $\\hat{x}$ the normalised input. An overline is an adjoint: "
        "$\\overline{v} = \\partial L / \\partial v$ for a loss $L$ whose gradient with respect to the output is "
        "$\\overline{y}_i$ (`dy` in code).",
        "",
        "## Forward pass (training mode)",
        "",
        "The definition, written once in `bnsym.symbolic.batch_norm.training_forward`. The variance is the "
        "two-pass form $\\frac{1}{M}\\sum_j (x_j - \\mu)^2$; it is never expanded into "
        "$E[x^2] - E[x]^2$, which cancels catastrophically in float32.",
        "",
        _aligned(forward.definitions),
        "",
        "## Backward pass, step by step",
        "",
        "Reverse mode visits the definitions above from last to first. Each step is `sympy.diff` of one "
        "definition, with two rules for the reduction: a channel quantity that feeds every element (such as "
        "$\\mu$ in $x_i - \\mu$) receives the *sum* of those elements' adjoints, and an element inside a sum "
        "(such as $x_j$ in $\\sum_j x_j$) receives the adjoint of the sum unchanged. "
        "The adjoints, in the order they are computed:",
        "",
        _aligned(steps),
        "",
        "How the reductions combine. Rewritten with the facts below and with $x_i = \\mu + \\hat{x}_i / s$, "
        "the intermediate adjoints simplify: the part of $\\overline{\\mu}$ that comes through the variance "
        "vanishes because $\\sum_j (x_j - \\mu) = 0$, and $(\\sigma^2 + \\epsilon)^{-3/2} = s^3$:",
        "",
        _math(_equation(d.name, bn.closed_form_of(program, d.name)) for d in steps
              if d.name not in program.outputs),
        "",
        "## Facts the derivation and the property tests rely on",
        "",
        "Each is proved by SymPy from the forward definition before it is used (`bnsym.symbolic.batch_norm."
        "facts`):",
        "",
        _math(_equation(f.lhs, f.rhs) for f in facts),
        "",
        "so $\\frac{1}{M}\\sum_j \\hat{x}_j = 0$ and $\\frac{1}{M}\\sum_j \\hat{x}_j^2 = "
        "\\frac{\\sigma^2}{\\sigma^2 + \\epsilon}$, not 1: a test that expects unit variance is wrong by "
        "$\\epsilon/(\\sigma^2+\\epsilon)$. Identity recovery (proved by `identity_recovery_holds`): with "
        "$\\gamma = \\sqrt{\\sigma^2 + \\epsilon}$ and $\\beta = \\mu$ the layer returns its input, $y_i = x_i$.",
        "",
        "## Backward pass, closed form",
        "",
        "The compact $O(M)$ form, built from two per-channel reductions "
        "($\\sum_j \\overline{y}_j$ and $\\sum_j \\overline{y}_j \\hat{x}_j$) instead of an $M \\times M$ "
        "Jacobian. This is exactly what `bnsym.batch_norm_backward` evaluates.",
        "",
        _math(_equation(name, sympy.factor_terms(closed[name])) for name in (dx, dgamma, dbeta)),
        "",
        "## Inference mode",
        "",
        "Eval mode is the same forward pass with the batch statistics frozen: `Program.freeze` replaces the "
        "definitions of $\\mu$ and $\\sigma^2$ by the running statistics and keeps everything downstream:",
        "",
        _aligned(bn.inference_forward().definitions),
        "",
        "Reverse mode through it gives the eval-mode backward. No reduction reaches $\\overline{x}$: each "
        "output element depends on its own input only.",
        "",
        _closed_forms(*bn.inference_backward()),
        "",
        "## Double backward",
        "",
        "The backward pass above is itself a program of $x$ (through $\\mu$, $s$ and $\\hat{x}$), $\\gamma$ and "
        "$\\overline{y}$. Reverse mode through it, with cotangents $\\overline{\\overline{x}}$, "
        "$\\overline{\\overline{\\gamma}}$, $\\overline{\\overline{\\beta}}$ for $\\overline{x}$, "
        "$\\overline{\\gamma}$, $\\overline{\\beta}$, gives the gradients (marked with a tilde) of "
        "$\\sum_i \\overline{\\overline{x}}_i \\overline{x}_i + \\overline{\\overline{\\gamma}}\\,"
        "\\overline{\\gamma} + \\overline{\\overline{\\beta}}\\,\\overline{\\beta}$ "
        "with respect to $x$, $\\gamma$ and $\\overline{y}$. Training mode:",
        "",
        _closed_forms(*bn.double_backward()),
        "",
        "Eval mode, where $\\mu$ and $s$ are the running statistics and do not depend on $x$:",
        "",
        _closed_forms(*bn.inference_double_backward()),
        "",
        "## Forward mode",
        "",
        "Forward mode pushes tangents (a dot) through the same definitions; the tangent of a sum is the sum of the "
        "tangents. For tangents $\\dot{x}$, $\\dot{\\gamma}$, $\\dot{\\beta}$ of the inputs:",
        "",
        _closed_forms(*bn.jvp()),
        "",
        "## Running statistics",
        "",
        "Every framework folds the batch statistics into running estimates with one exponential moving average; "
        "they differ in what the momentum weighs, in the variance estimator and in zero-debiasing "
        "(`bnsym/conventions.py`). The "
        "unbiased variance $\\frac{1}{M-1}\\sum_j (x_j - \\mu)^2$ is rewritten as "
        f"${to_latex(running_stats.bessel_corrected_variance())}$ (proved from the forward definition). With "
        "$m$ the momentum and $n$ the number of batches seen, including this one:",
        "",
        "| convention | source | running mean | running variance |",
        "|---|---|---|---|",
        *[_convention_row(c) for c in running_stats.CONVENTIONS.values()],
        "",
        "## Cross-check",
        "",
        "`tests/symbolic/test_cross_check.py` instantiates these results for small $M$ (1 to 6 for the backward, "
        "1 to 5 for the rest) with $M$ separate scalar symbols, differentiates the explicit forward pass with "
        "`sympy.diff` (the full Jacobian, and for the double backward the Jacobian of that), and proves each "
        "difference exactly zero.",
        "",
    ]
    return "\n".join(out)


def _closed_forms(program, closed) -> str:
    return _math(_equation(name, sympy.factor_terms(closed[name])) for name in program.outputs if name in closed)


def _convention_row(convention) -> str:
    new_mean, new_var = running_stats.update(convention)
    return (f"| `{convention.name}` | {convention.source.split(':')[0]} | ${to_latex(new_mean)}$ | "
            f"${to_latex(new_var)}$ |")
