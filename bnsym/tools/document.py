"""The derivation documents, ``derivations/<layer>.md``, written from the same SymPy objects as the code.

GitHub renders the ```` ```math ```` blocks. Every equation below comes from a :class:`~bnsym.symbolic.program.
Program` or a closed form of the layer's :class:`~bnsym.symbolic.layers.Derivation`; none is typed here.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy

from bnsym.symbolic import running_stats
from bnsym.symbolic.layers import derivation
from bnsym.symbolic.program import Definition
from bnsym.symbolic.reduction import BatchSum
from bnsym.tools.latex import to_latex

__all__ = ["render_layer_document"]

GENERATED_NOTICE = ("<!-- GENERATED FILE: written by `bnsym derive` from bnsym/symbolic/layers.py. "
                    "Do not edit by hand; `bnsym derive --check` fails when it is stale. -->")


def _math(lines: Iterable[str]) -> str:
    body = " \\\\\n".join(lines)
    return "```math\n\\begin{aligned}\n" + body + "\n\\end{aligned}\n```"


def _aligned(definitions: Iterable[Definition]) -> str:
    return _math(f"{to_latex(d.name)} &= {to_latex(d.expr)}" for d in definitions)


def _equation(lhs: sympy.Expr, rhs: sympy.Expr) -> str:
    return f"{to_latex(lhs)} &= {to_latex(rhs)}"


def _notation(layer) -> str:
    d = layer.declaration
    statistic = ("$\\mu$ is the group mean, $\\sigma^2$ the biased group variance, "
                 "$s = 1/\\sqrt{\\sigma^2 + \\epsilon}$ (`invstd` in code)" if d.centred else
                 "$\\nu$ is the mean square of the group (`ms` in code), $r = 1/\\sqrt{\\nu + \\epsilon}$ "
                 "(`invrms` in code)")
    symbols = [sympy.latex(sympy.Symbol(str(p))) for p in layer.parameters]  # the bare letter, no index
    if d.per_element_parameters:
        indexed = " and ".join(f"${s}_i$" for s in symbols)
        parameters = (f"{indexed} carry the index $i$ because they vary within a group" if len(symbols) > 1 else
                      f"{indexed} carries the index $i$ because it varies within a group")
    else:
        plain = " and ".join(f"${s}$" for s in symbols)
        each = "one value for every group, a scalar" if d.spec.grouping.scalar_parameters else "one value per group"
        parameters = f"{plain} {'are' if len(symbols) > 1 else 'is'} {each}"
    return (f"One group holds $M$ values: {d.group}. $M$ is a symbol, so every result holds for every group size. "
            "A subscript $i$ is one element of the group, $\\sum_j$ a sum over all $M$ elements. "
            f"{statistic} and $\\hat{{x}}$ the normalised input; {parameters}. Statistics are taken over "
            f"{d.statistics_over}; the parameters have {d.parameters_are}. An overline is an adjoint: "
            "$\\overline{v} = \\partial L / \\partial v$ for a loss $L$ whose gradient with respect to the "
            "output is $\\overline{y}_i$ (`dy` in code).")


def _parameter_sum_note(layer) -> list[str]:
    d = layer.declaration
    if not d.shared_parameters:
        return []
    return [
        "",
        "These are the adjoints of one group. A parameter value is shared by several groups (" + d.parameters_are +
        ", while a group is " + d.group + "), so the gradient of the parameter is the sum of the expression above "
        "over the groups that share it, for example "
        "$\\overline{\\gamma} = \\sum_{\\text{groups}} \\overline{\\gamma}_{\\text{group}}$. The generated "
        "kernels take that sum with `reducer.parameter_sums`, one rule for every layer "
        "(`bnsym.codegen.layer_kernels`).",
    ]


def render_layer_document(name: str) -> str:
    """The Markdown text of ``derivations/<name>.md`` for the registered layer ``name``."""
    layer = derivation(name)
    d = layer.declaration
    forward = layer.training_forward
    program, closed = layer.backward
    forward_names = {definition.name for definition in forward.definitions}
    steps = [definition for definition in program.definitions if definition.name not in forward_names]
    reductions = sorted(set().union(*(e.atoms(BatchSum) for e in closed.values())), key=sympy.default_sort_key)
    statistic = "$\\mu$ and $s$" if d.centred else "$r$"
    simplification = (
        "the part of $\\overline{\\mu}$ that comes through the variance vanishes because "
        "$\\sum_j (x_j - \\mu) = 0$, and $(\\sigma^2 + \\epsilon)^{-3/2} = s^3$" if d.centred else
        "$(\\nu + \\epsilon)^{-3/2} = r^3$")
    n = d.spec.normalises  # the normalised field: x, or a field output such as fused add + RMS norm's h
    elimination = f"${n}_i = \\mu + \\hat{{x}}_i / s$" if d.centred else f"${n}_i = \\hat{{x}}_i / r$"
    out = [
        GENERATED_NOTICE,
        "",
        f"# {d.title}, derived",
        "",
        "This document is written by `bnsym derive` from the SymPy objects that also generate "
        f"`bnsym/_generated/{name}.py`. Nothing here is typed by hand: the forward pass is defined once, and "
        "every other equation is derived from it by SymPy.",
        "",
        "## Notation",
        "",
        _notation(layer),
        "",
        "## Forward pass (training mode)",
        "",
        f"The definition, written once in `{d.forward_source}` and declared for this layer "
        f"in its specification, `bnsym.spec.SPECS[{name!r}]`. " + (
            "The variance is the two-pass form $\\frac{1}{M}\\sum_j (x_j - \\mu)^2$; it is never expanded into "
            "$E[x^2] - E[x]^2$, which cancels catastrophically in float32." if d.centred else
            f"Nothing is centred: the mean square $\\frac{{1}}{{M}}\\sum_j {n}_j^2$ is a sum of non-negative terms "
            "and cannot cancel."),
        "",
        _aligned(forward.definitions),
        "",
        "## Backward pass, step by step",
        "",
        "Reverse mode visits the definitions above from last to first. Each step is `sympy.diff` of one "
        "definition, with two rules for the reduction: a group quantity that feeds every element (such as "
        f"{statistic}) receives the *sum* of those elements' adjoints, and an element inside a sum "
        "(such as $x_j$ in $\\sum_j x_j$) receives the adjoint of the sum unchanged. "
        "The adjoints, in the order they are computed:",
        "",
        _aligned(steps),
        "",
        f"How the reductions combine. Rewritten with the facts below and with {elimination}, "
        f"the intermediate adjoints simplify: {simplification}:",
        "",
        _math(_equation(step.name, layer.closed_form_of(program, step.name)) for step in steps
              if step.name not in program.outputs),
        "",
        "## Facts the derivation and the property tests rely on",
        "",
        "Each is proved by SymPy from the forward definition before it is used "
        "(`bnsym.symbolic.layers.Derivation.facts`):",
        "",
        _math(_equation(f.lhs, f.rhs) for f in layer.facts),
        "",
        *([("so $\\frac{1}{M}\\sum_j \\hat{x}_j = 0$ and $\\frac{1}{M}\\sum_j \\hat{x}_j^2 = "
            "\\frac{\\sigma^2}{\\sigma^2 + \\epsilon}$, not 1: a test that expects unit variance is wrong by "
            "$\\epsilon/(\\sigma^2+\\epsilon)$.") + (
            " Identity recovery (proved by `identity_recovery_holds`): with "
            "$\\gamma = \\sqrt{\\sigma^2 + \\epsilon}$ and $\\beta = \\mu$ the layer returns its input, "
            "$y_i = x_i$." if layer.identity_recovery_holds() else "")]
          if d.centred else
          ["so $\\frac{1}{M}\\sum_j \\hat{x}_j^2 = \\frac{\\nu}{\\nu + \\epsilon}$, not 1. The layer is "
           "invariant to the scale of its input when $\\epsilon$ scales with it: $x \\to kx$, "
           "$\\epsilon \\to k^2\\epsilon$ leaves $\\hat{x}$ unchanged."]),
        "",
        "## Backward pass, closed form",
        "",
        f"The compact $O(M)$ form, built from {len(reductions)} per-group reductions ("
        + ", ".join(f"${to_latex(r)}$" for r in reductions) + ") instead of an $M \\times M$ Jacobian. This is "
        f"exactly what `bnsym.{name}.backward` evaluates.",
        "",
        _closed_forms(program, closed),
        *_parameter_sum_note(layer),
        "",
    ]
    if d.running_statistics:
        out += _eval_sections(layer)
    out += [
        "## Double backward",
        "",
        "The backward pass above is itself a program of $x$ (through the statistics and $\\hat{x}$), $\\gamma$ "
        "and $\\overline{y}$. Reverse mode through it, with cotangents (a double overline) for the first-order "
        "gradients, gives the gradients (marked with a tilde) of the sum of each cotangent times its gradient "
        "with respect to $x$, $\\gamma$ and $\\overline{y}$. Training mode:",
        "",
        _closed_forms(*layer.double_backward),
    ]
    if d.running_statistics:
        out += [
            "",
            "Eval mode, where $\\mu$ and $s$ are the running statistics and do not depend on $x$:",
            "",
            _closed_forms(*layer.inference_double_backward),
        ]
    out += [
        "",
        "## Forward mode",
        "",
        "Forward mode pushes tangents (a dot) through the same definitions; the tangent of a sum is the sum of the "
        "tangents. For tangents of the inputs:",
        "",
        _closed_forms(*layer.jvp),
        "",
    ]
    if d.running_statistics:
        out += _running_statistics_section(layer)
    if d.conventions:
        out += ["## Where the frameworks differ", ""]
        out += [f"- {paragraph}" for paragraph in d.conventions]
        out += [""]
    out += [
        "## Cross-check",
        "",
        "`tests/symbolic/test_cross_check.py` instantiates these results for small $M$ with $M$ separate scalar "
        "symbols per field, differentiates the explicit forward pass with `sympy.diff` (the full Jacobian, and for "
        "the double backward the Jacobian of that), and proves each difference exactly zero.",
        "",
    ]
    if not d.per_sample:  # a group spans samples, so data-parallel training must combine the shards' sums
        from bnsym.tools.document_sharded import render_sharded_section

        out += [render_sharded_section(layer)]
    return "\n".join(out)


def _eval_sections(layer) -> list[str]:
    return [
        "## Inference mode",
        "",
        _frozen_sentence(layer),
        "",
        _aligned(layer.inference_forward.definitions),
        "",
        "Reverse mode through it gives the eval-mode backward. No reduction reaches $\\overline{x}$: each "
        "output element depends on its own input only.",
        "",
        _closed_forms(*layer.inference_backward),
        "",
    ]


def _frozen_sentence(layer) -> str:
    """How eval mode comes from the training forward pass: the standard freeze, or the layer's own declaration."""
    if layer.declaration.inference is None:
        return ("Eval mode is the same forward pass with the batch statistics frozen: `Program.freeze` replaces the "
                "definitions of $\\mu$ and $\\sigma^2$ by the running statistics and keeps everything downstream:")
    replaced = ", ".join(f"${to_latex(name)} = {to_latex(sympy.sympify(value))}$"
                         for name, value in layer.declaration.inference(layer.symbols).items())
    return ("Eval mode is the same forward pass with the steps that the layer's declaration of its eval mode "
            f"(`LayerSpec.inference`) names replaced, {replaced}, by `Program.freeze`, which keeps everything "
            "downstream:")


def _running_statistics_section(layer) -> list[str]:
    return [
        "## Running statistics",
        "",
        "Every framework folds the batch statistics into running estimates with one exponential moving average; "
        "they differ in what the momentum weighs, in the variance estimator and in zero-debiasing "
        "(`bnsym/conventions.py`). The "
        "unbiased variance $\\frac{1}{M-1}\\sum_j (x_j - \\mu)^2$ is rewritten as "
        f"${to_latex(running_stats.bessel_corrected_variance(layer))}$ (proved from the forward definition). With "
        "$m$ the momentum and $n$ the number of batches seen, including this one:",
        "",
        "| convention | source | " + " | ".join(_running_columns(layer)) + " |",
        "|---|---|---|---|",
        *[_convention_row(layer, c) for c in running_stats.CONVENTIONS.values()],
        "",
    ]


def _running_columns(layer) -> list[str]:
    """The running statistics' column titles: "running mean", "running variance" (batch renormalisation: its own
    names, ``running_std`` averaging sigma)."""
    names = layer.declaration.spec.running_names
    if names == ("running_mean", "running_var"):
        return ["running mean", "running variance"]
    return [f"`{name}` (averages {step})" for name, step in layer.declaration.spec.running]


def _closed_forms(program, closed) -> str:
    return _math(_equation(name, sympy.factor_terms(closed[name])) for name in program.outputs if name in closed)


def _convention_row(layer, convention) -> str:
    new_mean, new_var = running_stats.update(layer, convention)
    return (f"| `{convention.name}` | {convention.source.split(':')[0]} | ${to_latex(new_mean)}$ | "
            f"${to_latex(new_var)}$ |")
