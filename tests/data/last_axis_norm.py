"""A layer that bnsym does not ship, declared in a file of its own: layer norm over the last axis only.

The declaration of docs/own-layers.md, word for word (tests/test_registered_layer.py checks that they agree). Its
kernels are generated into the package ``last_axis_kernels`` wherever a test puts it; nothing else in bnsym knows of
it.
"""

from dataclasses import dataclass

from bnsym.spec import LayerSpec, TrailingAxes
from bnsym.spec.layer_spec import CENTRED_REGIMES


@dataclass(frozen=True)
class LastAxis(TrailingAxes):
    """Each row of x normalised over its last axis, and nothing else; gamma and beta have x.shape[-1:]."""

    def layout(self, shape, axis=-1):
        if axis not in (-1, len(shape) - 1):
            raise ValueError(f"axis must be the last axis of x (shape {tuple(shape)}): -1, got {axis!r}")
        return super().layout(shape, -1)

    def example_sizes(self, shape):
        return (1,)


LAST_AXIS_NORM = LayerSpec(
    "last_axis_norm", "Last-axis normalisation", "last-axis norm", "centred", LastAxis(), eps=1e-5,
    regimes=CENTRED_REGIMES, group="one row of x over its last axis", statistics_over="the last axis",
    parameters_are="the size of the last axis", kernels_package="last_axis_kernels")
