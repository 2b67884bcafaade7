"""Which layer a target computes, when it is not the one it was checked as: "did you mean --layer layer_norm?".

A new user who forgets ``--layer`` checks a layer norm as a batch norm, and gets advice about channel-last
transposes. When a check fails at the first hurdle (the protocol probe, or ``forward_reference``), the target is
tried as each other layer on a few examples of ``forward_reference``; a layer it passes as is the suggestion.
"""

from __future__ import annotations

import numpy as np

from bnsym.testing.adapters import BUILTIN, load
from bnsym.testing.options import CheckOptions
from bnsym.testing.protocols import layer_names

__all__ = ["GUESS_EXAMPLES", "computes", "guess_layer", "suggestion"]

#: Well-conditioned examples of forward_reference a target must pass as another layer to be suggested it (the run
#: adds its long groups).
GUESS_EXAMPLES = 3


def computes(target: str, layer: str) -> bool:
    """Whether ``target`` loaded as ``layer`` passes ``forward_reference`` on well-conditioned float64 examples."""
    from bnsym.testing.runner import run_properties  # the runner imports the properties: only on this path

    try:
        impl = load(target, layer)
        report = run_properties(impl, dtype=np.dtype("float64"), max_examples=GUESS_EXAMPLES, seed=0,
                                properties=["forward_reference"], options=CheckOptions(layer=layer),
                                regimes=("well-conditioned",))
    except Exception:  # a target that cannot be loaded as, or breaks on the inputs of, a layer is not that layer
        return False
    return report.passed == ["forward_reference"]


def guess_layer(target: str, checked_as: str) -> str | None:
    """The first other layer (in the order of :func:`bnsym.testing.protocols.layer_names`) whose forward the target
    ``target`` (a string, as ``bnsym check`` takes it) computes, by ``forward_reference`` in float64; None when it
    computes none of them, and None when it computes the layer it was checked as (its failure is then about a
    dtype or a regime, not the layer: ``torch`` and ``jax`` are every layer). A built-in target (``bnsym``,
    ``torch``, ``jax``) is never sent to another layer: it computes whichever it is checked as, so a failure that
    stops it from computing that one (the kernels of a layer of your own not generated yet) is not a wrong
    ``--layer``."""
    if target in BUILTIN or computes(target, checked_as):
        return None
    return next((layer for layer in layer_names() if layer != checked_as and computes(target, layer)), None)


def suggestion(target: str, checked_as: str) -> str:
    """A sentence for the report, or "": "did you mean `--layer L`? ..."."""
    layer = guess_layer(target, checked_as)
    if layer is None:
        return ""
    return (f"did you mean `--layer {layer}`? {target} computes {layer}'s forward (forward_reference holds when it is "
            f"checked as {layer}); it was checked as {checked_as}, whose protocol it does not follow")
