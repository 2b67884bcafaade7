"""A zoo of fused residual add + RMS norms for testing the checker: a correct one that must pass, and planted bugs
that must be caught, each by the properties named for it.

The layer (``bnsym.layers.fused_add_rms_norm``): h = x + residual, y = gamma * h / sqrt(mean(h^2) + eps) over the
trailing axes that ``gamma.shape`` names. Its checker protocol (:mod:`bnsym.testing.protocols`)::

    forward(x, residual, gamma, eps)            -> (y, h)
    backward(dy, dh, x, residual, gamma, eps)   -> (dx, dresidual, dgamma)

Each bug is a small variation of :class:`FusedAddRMSNorm`, a plain NumPy implementation written here (not bnsym's
code), reproducing a mistake real fused kernels made or invite: the residual stream's own gradient dropped from
the backward, the statistics of x instead of h, the two outputs returned the wrong way round, the vLLM / FlashInfer
in-place convention (h written over ``residual``, y over ``x``) behind a functional interface, dresidual not
returned, dgamma from h instead of x_hat, the mean square accumulated in float16, and a double backward whose gdh
forgets the cotangent of dresidual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYER = "fused_add_rms_norm"


def _work_dtype(x):
    """float16 is computed in float32, as vLLM's and Liger's kernels accumulate; other dtypes as given."""
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


class FusedAddRMSNorm:
    """Correct: h = x + residual, ms = mean(h^2) over the normalised axes, x_hat = h / sqrt(ms + eps),
    y = gamma x_hat; backward dx = dresidual = dh + s (g - x_hat mean(g x_hat)) with g = gamma dy, s = invrms,
    dgamma = sum over the rows of dy x_hat."""

    # ----- the parts the bugs replace -----

    def add(self, x, residual):
        return x + residual

    def mean_square(self, values, axes):
        return (values * values).mean(axis=axes, keepdims=True)

    def statistics_of(self, x, h):
        """The values whose mean square is taken."""
        return h

    def outputs(self, y, h):
        return y, h

    def dgamma(self, dy, x_hat, h, rows):
        return (dy * x_hat).sum(axis=rows)

    def gradients(self, dh_total, dgamma):
        return dh_total, dh_total, dgamma

    def upstream_of_h(self, dh):
        return dh

    # ----- the protocol -----

    def _state(self, x, residual, gamma, eps):
        work = _work_dtype(x)
        k = gamma.ndim
        axes = tuple(range(x.ndim - k, x.ndim))
        h = self.add(x.astype(work), residual.astype(work))
        s = 1 / np.sqrt(self.mean_square(self.statistics_of(x.astype(work), h), axes) + work.type(eps))
        return work, axes, tuple(range(x.ndim - k)), h, s, h * s

    def forward(self, x, residual, gamma, eps):
        work, _, _, h, _, x_hat = self._state(x, residual, gamma, eps)
        y = gamma.astype(work) * x_hat
        return tuple(a.astype(x.dtype) for a in self.outputs(y, h))

    def backward(self, dy, dh, x, residual, gamma, eps):
        work, axes, rows, h, s, x_hat = self._state(x, residual, gamma, eps)
        dy = dy.astype(work)
        g = gamma.astype(work) * dy
        through_y = s * (g - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))
        dh_total = self.upstream_of_h(dh.astype(work)) + through_y
        return tuple(a.astype(x.dtype) for a in self.gradients(dh_total, self.dgamma(dy, x_hat, h, rows)))


# ----- planted bugs -----

class IgnoresDh(FusedAddRMSNorm):
    """The backward drops the residual stream's own gradient: dx = dresidual = the gradient through y alone (a
    backward written for RMS norm and reused after the add was fused in)."""

    def upstream_of_h(self, dh):
        return 0 * dh


class StatisticsOfX(FusedAddRMSNorm):
    """The mean square of x, the input before the add, normalises h."""

    def statistics_of(self, x, h):
        return x


class OutputsSwapped(FusedAddRMSNorm):
    """The outputs the wrong way round: the normalised output returned as the new residual stream."""

    def outputs(self, y, h):
        return h, y


class InPlace(FusedAddRMSNorm):
    """vLLM's and FlashInfer's in-place convention behind the functional protocol: h is written over the caller's
    ``residual`` and y over ``x``."""

    def forward(self, x, residual, gamma, eps):
        y, h = super().forward(x, residual, gamma, eps)
        residual[...] = h
        x[...] = y
        return y.copy(), h.copy()


class NoDresidual(FusedAddRMSNorm):
    """dresidual is not returned: zeros in its place (the residual treated as a constant of the graph)."""

    def gradients(self, dh_total, dgamma):
        return dh_total, np.zeros_like(dh_total), dgamma


class DgammaFromH(FusedAddRMSNorm):
    """dgamma sums dy times h, the unnormalised values, instead of dy times x_hat."""

    def dgamma(self, dy, x_hat, h, rows):
        return (dy * h).sum(axis=rows)


class Float16Accumulation(FusedAddRMSNorm):
    """float16 input whose mean square is accumulated in float16: it overflows for |h| above about 256."""

    def mean_square(self, values, axes):
        half = values.astype(np.float16)
        return (half * half).mean(axis=axes, keepdims=True, dtype=np.float16).astype(values.dtype)


class GdhWithoutGgresidual:
    """The double backward of the torch target written from the definition, with gdh = ggx: the cotangent of
    dresidual forgotten in the gradient for dh (dh reaches dx and dresidual alike, so gdh = ggx + ggresidual)."""

    def __init__(self):
        from bnsym.testing.definition_target import DefinitionTarget

        self.target = DefinitionTarget(LAYER)
        self.forward, self.backward = self.target.forward, self.target.backward

    def double_backward(self, ggx, ggresidual, gggamma, dy, dh, x, residual, gamma, eps):
        gx, gresidual, ggamma, gdy, _ = self.target.double_backward(ggx, ggresidual, gggamma, dy, dh, x, residual,
                                                                    gamma, eps)
        return gx, gresidual, ggamma, gdy, ggx.copy()


@dataclass(frozen=True)
class Bug:
    name: str
    bug_class: str
    caught_by: tuple[str, ...]
    dtype: str = "float32"
    layer: str = LAYER
    order: int = 1

    def impl(self):
        return globals()[self.name]()


BUGS = [
    Bug("IgnoresDh", "backward ignoring dh (the residual stream's gradient)",
        ("backward_reference", "backward_finite_differences")),
    Bug("StatisticsOfX", "statistics of x instead of h = x + residual", ("forward_reference", "standardisation")),
    Bug("OutputsSwapped", "the normalised output returned as the new residual", ("forward_reference",)),
    Bug("InPlace", "h written over residual and y over x (vLLM's in-place convention)", ("inputs_not_modified",)),
    Bug("NoDresidual", "dresidual not returned (zero)", ("backward_reference", "backward_finite_differences")),
    Bug("DgammaFromH", "dgamma summed from h instead of x_hat", ("backward_reference", "backward_finite_differences")),
    Bug("Float16Accumulation", "float16 accumulation", ("forward_reference", "standardisation"), "float16"),
    Bug("GdhWithoutGgresidual", "double backward: gdh missing the cotangent of dresidual",
        ("double_backward_reference", "double_backward_finite_differences"), "float64", order=2),
]


class RoundsHFirst(FusedAddRMSNorm):
    """Correct too (vLLM's order of operations): x + residual is added and rounded in x's dtype, and the mean square
    is taken of the rounded h. In float16 this differs from bnsym's (the unrounded sum normalised) by at most one
    rounding of h per element, within the error bound of y."""

    def add(self, x, residual):
        return (x + residual).astype(self.dtype).astype(x.dtype)

    def _state(self, x, residual, gamma, eps):
        self.dtype = x.dtype
        return super()._state(x, residual, gamma, eps)

#: The correct implementations, by name (as tests/testing/zoo_variants.py's CORRECT holds them per variant).
CORRECT = {"numpy": FusedAddRMSNorm, "rounds_h_first": RoundsHFirst}
