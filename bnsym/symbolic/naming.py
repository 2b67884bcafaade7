"""Every name that bnsym gives to a quantity, in code and in LaTeX, in one table.

The derivations, the generated code and the derivation document all take their names from here, so that ``x_hat``
means the same thing in the maths, in ``bnsym/_generated/`` and in ``derivations/batch_norm.md``.

Conventions:

* ``d<name>`` is the adjoint (the gradient of the loss) of ``<name>``: ``dx``, ``dgamma``, ``dy``.
* ``t<name>`` is the tangent of ``<name>`` in forward mode: ``tx``, ``ty``.
* ``gg<name>`` is the cotangent that a double backward receives for the first-order gradient ``d<name>``, and
  ``g<name>`` is what it returns for the input ``<name>``: ``ggx`` in, ``gx`` out.
* ``sum_<a>_<b>`` is the per-group reduction sum_i a_i b_i, and ``count`` is M, the number of elements summed.
"""

from __future__ import annotations

__all__ = ["COUNT", "LATEX", "REDUCER", "adjoint", "latex_name", "reduction_name", "second_order", "tangent"]

#: The code name of M, the number of elements in one group.
COUNT = "count"

#: The code name of the object that computes a kernel's reductions and knows M (bnsym.runtime.reduce.Reducer).
REDUCER = "reducer"

#: LaTeX for the base names; prefixed names (adjoints, tangents) are built from these.
LATEX = {
    "x": "x",
    "y": "y",
    "x_hat": r"\hat{x}",
    "gamma": r"\gamma",
    "beta": r"\beta",
    "eps": r"\epsilon",
    "mean": r"\mu",
    "var": r"\sigma^2",
    "invstd": r"s",
    "ms": r"\nu",
    "invrms": r"r",
    "running_mean": r"\mu_{\mathrm{run}}",
    "running_var": r"\sigma^2_{\mathrm{run}}",
    "M": "M",
    "momentum": "m",
    "num_batches_tracked": "n",
}


def adjoint(name: str) -> str:
    """The name of the adjoint of ``name``: ``x`` -> ``dx``."""
    return "d" + name


def tangent(name: str) -> str:
    """The name of the forward-mode tangent of ``name``: ``x`` -> ``tx``."""
    return "t" + name


def second_order(name: str) -> str:
    """The name of the double-backward adjoint of ``name``: ``x`` -> ``gx``, ``dx`` -> ``gdx``."""
    return "g" + name


def reduction_name(factors: list[str]) -> str:
    """The code name of the reduction of a product of named fields: ``["dy", "x_hat"]`` -> ``sum_dy_x_hat``."""
    return "sum_" + "_".join(factors)


def latex_name(name: str) -> str:
    """LaTeX for a (possibly prefixed) name: ``dx_hat`` -> ``\\bar{\\hat{x}}``, ``tx`` -> ``\\dot{x}``."""
    if name in LATEX:
        return LATEX[name]
    for prefix, accent in (("gg", r"\overline{\overline{%s}}"), ("d", r"\overline{%s}"), ("t", r"\dot{%s}"),
                           ("g", r"\tilde{%s}")):
        # An accent marks a derived name (dx, tgamma); a name whose prefix is a word of its own (d_max) is not one.
        if name.startswith(prefix) and len(name) > len(prefix) and name[len(prefix)] != "_":
            rest = name[len(prefix):]
            inner = latex_name(rest)
            if inner != rest or rest in LATEX:
                return accent % inner
    return name.replace("_", r"\_")
