"""A zoo of layer, RMS, group and instance norms for testing the checker: correct ones that must pass, and planted
bugs that must be caught, each by the properties named for it.

Each bug is a small variation of :class:`TwoPass`, a plain NumPy two-pass implementation written here (not bnsym's
code), reproducing a bug class that real implementations shipped. All follow the layers' protocols
(:mod:`bnsym.testing.protocols`): layer norm ``forward(x, gamma, beta, eps)`` over the trailing axes that
``gamma.shape`` names, RMS norm ``forward(x, gamma, eps)``, group norm ``forward(x, gamma, beta, eps, num_groups)``,
instance norm ``forward(x, gamma, beta, eps)``, each with its ``backward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import bnsym

LAYERS = ("layer_norm", "rms_norm", "group_norm", "instance_norm")


def _work_dtype(x):
    """float16 is computed in float32, as PyTorch and Flax do; other dtypes as given."""
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


class _Grouped:
    """How one call sees x: ``view`` makes x's groups explicit, ``axes`` are the reduced axes of that view,
    ``param`` puts a (C,)- or normalised-shaped parameter in the view's broadcast shape, ``shared`` are the axes
    a parameter gradient sums over."""

    def __init__(self, layer: str, x, gamma, num_groups=None, strided=False):
        self.shape, nd = x.shape, x.ndim
        if layer in ("layer_norm", "rms_norm"):
            k = gamma.ndim
            self.grouped = x.shape
            self.axes = tuple(range(nd - k, nd))
            self.param_shape = gamma.shape
            self.shared = tuple(range(nd - k))
        elif layer == "group_norm":
            n, c, *spatial = x.shape
            g = num_groups
            # Contiguous groups: channel c is in group c // (C/G). With a stride (the bug): c % G.
            self.grouped = (n, c // g, g, *spatial) if strided else (n, g, c // g, *spatial)
            within = 1 if strided else 2
            self.axes = (within,) + tuple(range(3, nd + 1))
            self.param_shape = (1, *self.grouped[1:3], *(1,) * len(spatial))
            self.shared = (0,) + tuple(range(3, nd + 1))
        else:  # instance norm
            self.grouped = x.shape
            self.axes = tuple(range(2, nd))
            self.param_shape = (1, x.shape[1]) + (1,) * (nd - 2)
            self.shared = (0,) + tuple(range(2, nd))

    def view(self, a):
        return a.reshape(self.grouped)

    def param(self, p):
        return np.asarray(p).reshape(self.param_shape)

    def back(self, a):
        return a.reshape(self.shape)

    def gradient(self, a, gamma_shape):
        return a.sum(axis=self.shared).reshape(gamma_shape)

    @property
    def count(self):
        return int(np.prod([self.grouped[a] for a in self.axes]))


class TwoPass:
    """Correct: each group's mean, then the mean of squared deviations (RMS norm: the mean square); the backward in
    its compact closed form, dx = s (g - mean(g) - x_hat mean(g x_hat)) with g = gamma dy."""

    layer = "layer_norm"
    centred = True
    strided = False

    # ----- the parts the bugs replace -----

    def grouping(self, x, gamma, num_groups):
        return _Grouped(self.layer, x, gamma, num_groups, self.strided)

    def statistics(self, xg, grouping, eps):
        """(centre, scale s) per group."""
        if self.centred:
            mean = xg.mean(axis=grouping.axes, keepdims=True)
            var = ((xg - mean) ** 2).mean(axis=grouping.axes, keepdims=True)
            return mean, self.invstd(var, eps)
        ms = (xg * xg).mean(axis=grouping.axes, keepdims=True)
        return 0, self.invstd(ms, eps)

    def invstd(self, var, eps):
        return 1 / np.sqrt(var + eps)

    def dx(self, g, x_hat, s, grouping):
        mean = lambda a: a.mean(axis=grouping.axes, keepdims=True)  # noqa: E731
        if self.centred:
            return s * (g - mean(g) - x_hat * mean(g * x_hat))
        return s * (g - x_hat * mean(g * x_hat))

    def dgamma(self, dy, x_hat, grouping, gamma_shape):
        return grouping.gradient(dy * x_hat, gamma_shape)

    # ----- the protocol, for every layer -----

    def _forward(self, x, gamma, beta, eps, num_groups=None):
        out, work = x.dtype, _work_dtype(x)
        grouping = self.grouping(x, gamma, num_groups)
        xg = grouping.view(x.astype(work))
        centre, s = self.statistics(xg, grouping, work.type(eps))
        x_hat = (xg - centre) * s
        y = grouping.param(gamma).astype(work) * x_hat
        if beta is not None:
            y = y + grouping.param(beta).astype(work)
        return grouping.back(y).astype(out)

    def _backward(self, dy, x, gamma, eps, num_groups=None, with_beta=True):
        out, work = x.dtype, _work_dtype(x)
        grouping = self.grouping(x, gamma, num_groups)
        xg, dyg = grouping.view(x.astype(work)), grouping.view(dy.astype(work))
        centre, s = self.statistics(xg, grouping, work.type(eps))
        x_hat = (xg - centre) * s
        dx = self.dx(grouping.param(gamma).astype(work) * dyg, x_hat, s, grouping)
        gradients = [grouping.back(dx), self.dgamma(dyg, x_hat, grouping, gamma.shape)]
        if with_beta:
            gradients.append(grouping.gradient(dyg, gamma.shape))
        return tuple(g.astype(out) for g in gradients)


class LayerNorm(TwoPass):
    layer = "layer_norm"

    def forward(self, x, gamma, beta, eps):
        return self._forward(x, gamma, beta, eps)

    def backward(self, dy, x, gamma, beta, eps):
        return self._backward(dy, x, gamma, eps)


class RMSNorm(TwoPass):
    layer = "rms_norm"
    centred = False

    def forward(self, x, gamma, eps):
        return self._forward(x, gamma, None, eps)

    def backward(self, dy, x, gamma, eps):
        return self._backward(dy, x, gamma, eps, with_beta=False)


class GroupNorm(TwoPass):
    layer = "group_norm"

    def forward(self, x, gamma, beta, eps, num_groups):
        return self._forward(x, gamma, beta, eps, num_groups)

    def backward(self, dy, x, gamma, beta, eps, num_groups):
        return self._backward(dy, x, gamma, eps, num_groups)


class InstanceNorm(TwoPass):
    layer = "instance_norm"

    def forward(self, x, gamma, beta, eps):
        return self._forward(x, gamma, beta, eps)

    def backward(self, dy, x, gamma, beta, eps):
        return self._backward(dy, x, gamma, eps)


TWO_PASS = {"layer_norm": LayerNorm, "rms_norm": RMSNorm, "group_norm": GroupNorm, "instance_norm": InstanceNorm}


class Bnsym:
    """Correct: bnsym's own public functions (``bnsym.layer_norm`` and the others), in the layer's protocol, with
    the double backward, through ``backend`` (bnsym's default: "auto")."""

    def __init__(self, layer: str, backend: str = "auto"):
        self.layer = layer
        self.module = getattr(bnsym, layer)
        self.backend = backend

    def _options(self, x, gamma, num_groups):
        if self.layer in ("layer_norm", "rms_norm"):
            return {"axis": tuple(range(x.ndim - gamma.ndim, x.ndim)), "backend": self.backend}
        options = {"num_groups": num_groups, "axis": 1} if self.layer == "group_norm" else {"axis": 1}
        return options | {"backend": self.backend}

    def _split(self, args, cotangents=0):
        """(cotangents, dy, x, gamma, beta, eps, num_groups) from the protocol's positional arguments."""
        args = list(args)
        lead = [args.pop(0) for _ in range(cotangents)]
        dy = args.pop(0) if cotangents or len(args) > (3 if self.layer == "rms_norm" else 4) + \
            (self.layer == "group_norm") else None
        x, gamma = args.pop(0), args.pop(0)
        beta = None if self.layer == "rms_norm" else args.pop(0)
        eps = args.pop(0)
        num_groups = args.pop(0) if self.layer == "group_norm" else None
        return lead, dy, x, gamma, beta, eps, num_groups

    def _saved(self, x, gamma, beta, eps, options):
        if self.layer == "rms_norm":
            return self.module.forward(x, gamma, eps=eps, **options)[1:]
        return self.module.forward(x, gamma, beta, eps=eps, **options)[1:]

    def forward(self, *args):
        _, _, x, gamma, beta, eps, groups = self._split(args)
        options = self._options(x, gamma, groups)
        if self.layer == "rms_norm":
            return self.module.forward(x, gamma, eps=eps, **options)[0]
        return self.module.forward(x, gamma, beta, eps=eps, **options)[0]

    def backward(self, *args):
        _, dy, x, gamma, beta, eps, groups = self._split(args)
        options = self._options(x, gamma, groups)
        return self.module.backward(dy, x, gamma, *self._saved(x, gamma, beta, eps, options), **options)

    def double_backward(self, *args):
        lead, dy, x, gamma, beta, eps, groups = self._split(args, 3 if self.layer != "rms_norm" else 2)
        options = self._options(x, gamma, groups)
        return self.module.double_backward(*lead, dy, x, gamma, *self._saved(x, gamma, beta, eps, options),
                                           **options)


# ----- planted bugs -----

class _OverAxes:
    """Statistics over other axes than the layer's: ``axes(x_ndim, k)`` says which."""

    def grouping(self, x, gamma, num_groups):
        grouping = super().grouping(x, gamma, num_groups)
        grouping.axes = self.wrong_axes(x, gamma)
        return grouping


class LayerNormOverBatch(_OverAxes, LayerNorm):
    def wrong_axes(self, x, gamma):
        return (0,)


class LayerNormLastAxisOnly(_OverAxes, LayerNorm):
    def wrong_axes(self, x, gamma):
        return (x.ndim - 1,)


class RMSNormLastAxisOnly(_OverAxes, RMSNorm):
    def wrong_axes(self, x, gamma):
        return (x.ndim - 1,)


class InstanceNormOverBatch(_OverAxes, InstanceNorm):
    def wrong_axes(self, x, gamma):
        return (0,) + tuple(range(2, x.ndim))


class GroupNormStrided(GroupNorm):
    strided = True


class RMSNormCentres(RMSNorm):
    """Subtracts the mean: layer norm without beta."""

    def statistics(self, xg, grouping, eps):
        mean = xg.mean(axis=grouping.axes, keepdims=True)
        return mean, self.invstd(((xg - mean) ** 2).mean(axis=grouping.axes, keepdims=True), eps)


class LayerNormOnePassVariance(LayerNorm):
    """var = E[x^2] - E[x]^2, as Flax's LayerNorm and GroupNorm compute it by default (use_fast_variance=True)."""

    def statistics(self, xg, grouping, eps):
        mean = xg.mean(axis=grouping.axes, keepdims=True)
        var = np.maximum((xg * xg).mean(axis=grouping.axes, keepdims=True) - mean * mean, 0)
        return mean, self.invstd(var, eps)


class LayerNormInFloat32(LayerNorm):
    """Computes in float32 whatever it is given, and returns the input's dtype (as Keras does on its JAX and
    torch backends)."""

    def _forward(self, x, gamma, beta, eps, num_groups=None):
        y = super()._forward(x.astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32), eps)
        return y.astype(x.dtype)


class LayerNormMaxVarEps(LayerNorm):
    """1 / sqrt(max(var, eps)): float64 arithmetic with a wrong formula."""

    def invstd(self, var, eps):
        return 1 / np.sqrt(np.maximum(var, eps))


class LayerNormEpsInFloat32(LayerNorm):
    """eps rounded to float32 whatever the dtype (a kernel whose eps argument is a C float)."""

    def invstd(self, var, eps):
        return 1 / np.sqrt(var + np.float64(np.float32(eps)))


class RMSNormStatisticsInFloat32(RMSNorm):
    """As Hugging Face's LlamaRMSNorm: x_hat computed in float32 from any input, gamma applied in the input's dtype,
    so y of float64 input is not representable in float32, yet it is float32 arithmetic."""

    def _forward(self, x, gamma, beta, eps, num_groups=None):
        x_hat = super()._forward(x.astype(np.float32), np.ones(gamma.shape, np.float32), None, eps)
        return gamma.astype(x.dtype) * x_hat.astype(x.dtype)

    def _backward(self, dy, x, gamma, eps, num_groups=None, with_beta=True):
        gradients = super()._backward(dy.astype(np.float32), x.astype(np.float32), gamma.astype(np.float32), eps,
                                      with_beta=with_beta)
        return tuple(g.astype(x.dtype) for g in gradients)


BLOCK = 1024


def _full_blocks(xg, axes, block=BLOCK):
    """A 0/1 mask over each group's values (in C order over the group's axes): 0 on the partial last block of a
    group longer than one block, 1 elsewhere."""
    shape = [xg.shape[a] for a in axes]
    count = int(np.prod(shape))
    index = np.arange(count).reshape(shape)
    keep = (index < count // block * block) if count > block else np.ones(shape, bool)
    full = [1] * xg.ndim
    for a, n in zip(axes, shape):
        full[a] = n
    return keep.reshape(full).astype(xg.dtype)


class LayerNormDropsPartialBlock(LayerNorm):
    """Sums each row in blocks of 1024 values and, in a row longer than one block, never adds the partial last
    block (a kernel whose tail loop does not run), still dividing by M: right on every row of 1024 values or
    fewer."""

    def statistics(self, xg, grouping, eps):
        keep = _full_blocks(xg, grouping.axes)
        mean = (xg * keep).sum(axis=grouping.axes, keepdims=True) / grouping.count
        var = (keep * (xg - mean) ** 2).sum(axis=grouping.axes, keepdims=True) / grouping.count
        return mean, self.invstd(var, eps)


class LayerNormEpsInFloat16(LayerNorm):
    """float16 input computed in float32, but eps rounded to float16 first (eps = 1e-12 becomes 0): NaN on a constant
    row, right wherever eps is representable in float16 or the row is not constant."""

    def statistics(self, xg, grouping, eps):
        return super().statistics(xg, grouping, xg.dtype.type(np.float16(eps)))


class _DgammaNotSummed:
    """dgamma from the first sample only, not summed over the batch."""

    def dgamma(self, dy, x_hat, grouping, gamma_shape):
        return super().dgamma(dy[:1], x_hat[:1], grouping, gamma_shape)


class _EpsOutsideSqrt:
    def invstd(self, var, eps):
        return 1 / (np.sqrt(var) + eps)


class _DxWithoutStatistics:
    """dx without the term through the variance (RMS norm: through the mean square)."""

    def dx(self, g, x_hat, s, grouping):
        mean = lambda a: a.mean(axis=grouping.axes, keepdims=True)  # noqa: E731
        return s * (g - mean(g)) if self.centred else s * g


class _Float16Accumulation:
    """Sums of float16 input accumulated in float16: x.sum() overflows at 65504."""

    def _forward(self, x, gamma, beta, eps, num_groups=None):
        if x.dtype != np.float16:
            return super()._forward(x, gamma, beta, eps, num_groups)
        grouping = self.grouping(x, gamma, num_groups)
        xg = grouping.view(x)
        count = np.float16(grouping.count)
        if self.centred:
            centre = xg.sum(axis=grouping.axes, keepdims=True, dtype=np.float16) / count
            d = xg - centre
            stat = (d * d).sum(axis=grouping.axes, keepdims=True, dtype=np.float16) / count
        else:
            centre, stat = 0, (xg * xg).sum(axis=grouping.axes, keepdims=True, dtype=np.float16) / count
        y = grouping.param(gamma) * ((xg - centre) / np.sqrt(stat + np.float16(eps)))
        if beta is not None:
            y = y + grouping.param(beta)
        return grouping.back(y).astype(np.float16)


def _family_bugs(base, name):
    return {f"{name}DgammaNotSummed": type(f"{name}DgammaNotSummed", (_DgammaNotSummed, base), {}),
            f"{name}EpsOutsideSqrt": type(f"{name}EpsOutsideSqrt", (_EpsOutsideSqrt, base), {}),
            f"{name}DxWithoutStatistics": type(f"{name}DxWithoutStatistics", (_DxWithoutStatistics, base), {}),
            f"{name}Float16Accumulation": type(f"{name}Float16Accumulation", (_Float16Accumulation, base), {})}


_GENERATED = {}
for _base, _name in ((LayerNorm, "LayerNorm"), (RMSNorm, "RMSNorm"), (GroupNorm, "GroupNorm"),
                     (InstanceNorm, "InstanceNorm")):
    _GENERATED.update(_family_bugs(_base, _name))
globals().update(_GENERATED)  # importable by name: tests/testing/zoo_family.py:LayerNormEpsOutsideSqrt


@dataclass(frozen=True)
class Bug:
    name: str
    layer: str
    bug_class: str
    caught_by: tuple[str, ...]
    dtype: str = "float32"

    def impl(self):
        return globals()[self.name]()


_GENERIC = (
    ("DgammaNotSummed", "dgamma not summed over the batch", ("backward_reference", "dgamma_is_sum_dy_xhat"),
     "float32"),
    ("EpsOutsideSqrt", "eps outside the square root", ("forward_reference", "standardisation"), "float32"),
    ("DxWithoutStatistics", "dx missing the term through the statistics",
     ("backward_reference", "backward_finite_differences", "dx_xhat_identity"), "float32"),
    ("Float16Accumulation", "float16 accumulation", ("forward_reference", "finite_outputs"), "float16"),
)
# RMS norm's overflowing mean square is infinite, not NaN: y comes out 0, finite, with the wrong moments.
_CAUGHT = {("rms_norm", "Float16Accumulation"): ("forward_reference", "standardisation")}
_NAMES = {"layer_norm": "LayerNorm", "rms_norm": "RMSNorm", "group_norm": "GroupNorm",
          "instance_norm": "InstanceNorm"}

BUGS = [
    Bug("LayerNormOverBatch", "layer_norm", "statistics over the wrong axes (the batch axis)",
        ("forward_reference", "standardisation", "sample_independence")),
    Bug("LayerNormOnePassVariance", "layer_norm", "variance as E[x^2] - E[x]^2 (Flax's use_fast_variance=True)",
        ("forward_reference", "shift_invariance", "standardisation")),
    Bug("LayerNormInFloat32", "layer_norm", "float64 input silently computed in float32",
        ("float64_arithmetic", "forward_reference"), "float64"),
    Bug("LayerNormLastAxisOnly", "layer_norm",
        "statistics over the wrong axes (the last axis only when several are normalised)",
        ("forward_reference", "standardisation")),
    Bug("RMSNormLastAxisOnly", "rms_norm",
        "statistics over the wrong axes (the last axis only when several are normalised)",
        ("forward_reference", "standardisation")),
    Bug("RMSNormCentres", "rms_norm", "RMS norm that centres",
        ("forward_reference", "standardisation", "identity_recovery")),
    Bug("GroupNormStrided", "group_norm", "group norm grouping channels with a stride instead of contiguously",
        ("forward_reference", "standardisation", "feature_permutation_equivariance")),
    Bug("InstanceNormOverBatch", "instance_norm", "statistics over the wrong axes (the batch axis: batch norm)",
        ("forward_reference", "standardisation", "sample_independence")),
] + [Bug(_NAMES[layer] + suffix, layer, bug_class, _CAUGHT.get((layer, suffix), caught_by), dtype)
     for layer in LAYERS for suffix, bug_class, caught_by, dtype in _GENERIC]
