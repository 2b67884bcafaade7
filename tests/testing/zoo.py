"""A zoo of batch norms for testing the checker: correct ones that must pass, and planted bugs that must be caught.

Each bug is a small variation of :class:`TwoPass` (the textbook two-pass algorithm) reproducing a bug that real
implementations shipped (each named by its bug class), with the properties that must catch it and the dtype
that exposes it. All follow the protocol of :mod:`bnsym.testing.adapters`: NumPy in and out, channel axis 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _channel(v, x):
    return np.asarray(v).reshape((1, -1) + (1,) * (x.ndim - 2))


def _work_dtype(x):
    """float16 is computed in float32, as PyTorch and Keras do; other dtypes as given."""
    return np.float32 if x.dtype == np.float16 else x.dtype


class TwoPass:
    """Correct: mean, then the mean of squared deviations; the backward in its compact closed form."""

    def statistics(self, x, eps):
        axes = _axes(x)
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        return mean, var

    def invstd(self, var, eps):
        return 1 / np.sqrt(var + eps)

    def forward(self, x, gamma, beta, eps):
        out = x.dtype
        x = x.astype(_work_dtype(x))
        mean, var = self.statistics(x, eps)
        x_hat = (x - mean) * self.invstd(var, x.dtype.type(eps))
        return (_channel(gamma, x).astype(x.dtype) * x_hat + _channel(beta, x).astype(x.dtype)).astype(out)

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        count = x_hat.size // x_hat.shape[1]
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * x_hat).sum(axis=axes)
        dx = gamma * invstd * (dy - _channel(dbeta, dy) / count - x_hat * _channel(dgamma, dy) / count)
        return dx, dgamma, dbeta

    def backward(self, dy, x, gamma, beta, eps):
        out = x.dtype
        work = _work_dtype(x)
        x, dy = x.astype(work), dy.astype(work)
        mean, var = self.statistics(x, eps)
        invstd = self.invstd(var, x.dtype.type(eps))
        x_hat = (x - mean) * invstd
        grads = self.gradients(dy, x_hat, _channel(gamma, x).astype(work), invstd, _axes(x))
        return tuple(g.astype(out) for g in grads)


class Welford(TwoPass):
    """Correct: Welford's one-pass running mean and M2, sequentially over each channel's values."""

    def statistics(self, x, eps):
        values = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        mean = np.zeros(x.shape[1], x.dtype)
        m2 = np.zeros(x.shape[1], x.dtype)
        for n, value in enumerate(values, start=1):
            delta = value - mean
            mean = mean + delta / x.dtype.type(n)
            m2 = m2 + delta * (value - mean)
        return _channel(mean, x), _channel(m2 / x.dtype.type(len(values)), x)


class Torch:
    """Correct: PyTorch's batch norm through bnsym's adapter."""

    def __init__(self):
        from bnsym.testing.adapters import torch_implementation

        adapter = torch_implementation()
        self.forward, self.backward = adapter.forward, adapter.backward


# ----- forward bugs -----

class FastVarianceClamped(TwoPass):
    """var = max(0, E[x^2] - E[x]^2): cancels catastrophically for a large offset (flax #1491, pytorch #5410)."""

    def statistics(self, x, eps):
        axes = _axes(x)
        mean = x.mean(axis=axes, keepdims=True)
        return mean, np.maximum((x * x).mean(axis=axes, keepdims=True) - mean * mean, 0)


class FastVarianceUnclamped(TwoPass):
    """var = E[x^2] - E[x]^2, unclamped: slightly negative on a constant channel of large magnitude, so NaN."""

    def statistics(self, x, eps):
        axes = _axes(x)
        mean = x.mean(axis=axes, keepdims=True)
        return mean, (x * x).mean(axis=axes, keepdims=True) - mean * mean


class HalfSumOfSquares(TwoPass):
    """float16 kept for E[x^2] and E[x]^2 (the mean accumulated in float32): x^2 overflows float16 at |x| ~ 256."""

    def forward(self, x, gamma, beta, eps):
        axes = _axes(x)
        mean = x.astype(np.float32).mean(axis=axes, keepdims=True).astype(x.dtype)
        mean_square = (x * x).astype(np.float32).mean(axis=axes, keepdims=True).astype(x.dtype)
        var = (mean_square - mean * mean).astype(np.float32)
        x_hat = (x.astype(np.float32) - mean) / np.sqrt(var + np.float32(eps))
        return (_channel(gamma, x) * x_hat + _channel(beta, x)).astype(x.dtype)


class EpsOutsideSqrt(TwoPass):
    """(x - mean) / (sqrt(var) + eps) (keras PR #10427)."""

    def invstd(self, var, eps):
        return 1 / (np.sqrt(var) + eps)


class MaxVarEps(TwoPass):
    """1 / sqrt(max(var, eps))."""

    def invstd(self, var, eps):
        return 1 / np.sqrt(np.maximum(var, eps))


class EpsInFloat32(TwoPass):
    """eps rounded to float32 whatever the dtype (a kernel whose eps argument is a C float): float64 arithmetic with a
    wrong eps, which float64_arithmetic must not take for float32 arithmetic."""

    def invstd(self, var, eps):
        return 1 / np.sqrt(var + np.float64(np.float32(eps)))


class DropsPartialBlock(TwoPass):
    """Sums each channel's M values in blocks of 1024 and, when M is longer than one block, never adds the partial
    last block (a kernel whose tail loop does not run), still dividing by M: right whenever M <= 1024."""

    def statistics(self, x, eps):
        values = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
        count = values.shape[1]
        keep = np.arange(count) < (count // 1024 * 1024 if count > 1024 else count)
        mean = (values * keep).sum(axis=1) / count
        var = (keep * (values - mean[:, None]) ** 2).sum(axis=1) / count
        return _channel(mean, x), _channel(var, x)


class EpsMissing(TwoPass):
    """1 / sqrt(var): no eps at all."""

    def invstd(self, var, eps):
        return 1 / np.sqrt(var)


class UnbiasedVariance(TwoPass):
    """Normalises with the unbiased variance var * M / (M - 1) (pytorch #3122)."""

    def statistics(self, x, eps):
        mean, var = super().statistics(x, eps)
        count = x.size // x.shape[1]
        return mean, var * count / (count - 1)


class PerSampleStatistics(TwoPass):
    """Statistics per (sample, channel), over the spatial axes only: instance norm by mistake."""

    def statistics(self, x, eps):
        axes = tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        return mean, ((x - mean) ** 2).mean(axis=axes, keepdims=True)


class ChannelsLastReshape(TwoPass):
    """Statistics of x.reshape(-1, C): reads an NCHW buffer as if it were NHWC."""

    def statistics(self, x, eps):
        channels = x.shape[1]
        flat = x.reshape(-1, channels)
        mean = flat.mean(axis=0)
        var = ((flat - mean) ** 2).mean(axis=0)
        return _channel(mean, x), _channel(var, x)


class SingleValueNaN(TwoPass):
    """The unbiased variance (kept for running statistics) rescaled by (M - 1)/M: 0/0 = NaN when M = 1."""

    def statistics(self, x, eps):
        axes = _axes(x)
        count = x.size // x.shape[1]
        mean = x.mean(axis=axes, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            unbiased = ((x - mean) ** 2).sum(axis=axes, keepdims=True) / x.dtype.type(count - 1)
        return mean, unbiased * x.dtype.type((count - 1) / count)


class InPlaceCentring(TwoPass):
    """Centres x in place (x -= mean) to save memory: the caller's array is changed."""

    def forward(self, x, gamma, beta, eps):
        axes = _axes(x)
        mean = x.mean(axis=axes, keepdims=True)
        x -= mean
        var = (x**2).mean(axis=axes, keepdims=True)
        return _channel(gamma, x) * x / np.sqrt(var + eps) + _channel(beta, x)


# ----- backward bugs -----

class DxMissingMeanTerm(TwoPass):
    """dx without - mean(dy)."""

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        dx, dgamma, dbeta = super().gradients(dy, x_hat, gamma, invstd, axes)
        count = x_hat.size // x_hat.shape[1]
        return dx + gamma * invstd * _channel(dbeta, dy) / count, dgamma, dbeta


class DxMissingVarianceTerm(TwoPass):
    """dx without - x_hat mean(dy x_hat): the variance treated as a constant."""

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        dx, dgamma, dbeta = super().gradients(dy, x_hat, gamma, invstd, axes)
        count = x_hat.size // x_hat.shape[1]
        return dx + gamma * invstd * x_hat * _channel(dgamma, dy) / count, dgamma, dbeta


class DgammaFromX(TwoPass):
    """dgamma = sum(dy * x) instead of sum(dy * x_hat)."""

    def backward(self, dy, x, gamma, beta, eps):
        dx, _, dbeta = super().backward(dy, x, gamma, beta, eps)
        return dx, (dy * x).sum(axis=_axes(x)).astype(x.dtype), dbeta


class DgammaFromCentredX(TwoPass):
    """dgamma = sum(dy * (x - mean)): the normalisation forgotten."""

    def backward(self, dy, x, gamma, beta, eps):
        dx, _, dbeta = super().backward(dy, x, gamma, beta, eps)
        centred = x - x.mean(axis=_axes(x), keepdims=True)
        return dx, (dy * centred).sum(axis=_axes(x)).astype(x.dtype), dbeta


class DxMissingGamma(TwoPass):
    """dx without the factor gamma."""

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        return super().gradients(dy, x_hat, np.ones_like(gamma), invstd, axes)[0], *super().gradients(
            dy, x_hat, gamma, invstd, axes)[1:]


class DxGammaTwice(TwoPass):
    """dx with gamma applied twice."""

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        dx, dgamma, dbeta = super().gradients(dy, x_hat, gamma, invstd, axes)
        return dx * gamma, dgamma, dbeta


class AbsDy(TwoPass):
    """dbeta = sum(|dy|): not linear in dy."""

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        dx, dgamma, _ = super().gradients(dy, x_hat, gamma, invstd, axes)
        return dx, dgamma, np.abs(dy).sum(axis=axes)


class SquaredDy(TwoPass):
    """dx computed from dy * |dy|: not linear in dy."""

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        _, dgamma, dbeta = super().gradients(dy, x_hat, gamma, invstd, axes)
        return super().gradients(dy * np.abs(dy), x_hat, gamma, invstd, axes)[0], dgamma, dbeta


class Float32Always(TwoPass):
    """Computes in float32 whatever it is given and returns the input's dtype, as Keras does on its JAX and torch
    backends (float32 by default): correct in float32, silently float32 for float64 input."""

    def forward(self, x, gamma, beta, eps):
        return super().forward(x.astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32),
                               eps).astype(x.dtype)

    def backward(self, dy, x, gamma, beta, eps):
        grads = super().backward(*(a.astype(np.float32) for a in (dy, x, gamma, beta)), eps)
        return tuple(g.astype(x.dtype) for g in grads)


class StatisticsInFloat32(TwoPass):
    """x_hat computed in float32 from any input, gamma and beta applied in the input's dtype (as Hugging Face's
    LlamaRMSNorm does): y of float64 input is not representable in float32, yet it is not float64 arithmetic."""

    def forward(self, x, gamma, beta, eps):
        x32 = x.astype(np.float32)
        mean, var = self.statistics(x32, eps)
        x_hat = ((x32 - mean) * self.invstd(var, np.float32(eps))).astype(x.dtype)
        return _channel(gamma, x) * x_hat + _channel(beta, x)

    def backward(self, dy, x, gamma, beta, eps):
        grads = super().backward(*(a.astype(np.float32) for a in (dy, x, gamma, beta)), eps)
        return tuple(g.astype(x.dtype) for g in grads)


class Float64Gradients(TwoPass):
    """Gradients promoted to float64 for float32 input: the count of values per channel is a NumPy int64 that
    meets a float32 array in a division (NumPy 2 keeps float32 for Python ints, not for int64 arrays)."""

    def gradients(self, dy, x_hat, gamma, invstd, axes):
        count = np.array(x_hat.size // x_hat.shape[1])
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * x_hat).sum(axis=axes)
        dx = gamma * invstd * (dy - _channel(dbeta, dy) / count - x_hat * _channel(dgamma, dy) / count)
        return dx, dgamma.astype(np.float64), dbeta.astype(np.float64)

    def backward(self, dy, x, gamma, beta, eps):
        work = _work_dtype(x)
        x, dy = x.astype(work), dy.astype(work)
        mean, var = self.statistics(x, eps)
        invstd = self.invstd(var, x.dtype.type(eps))
        return self.gradients(dy, (x - mean) * invstd, _channel(gamma, x).astype(work), invstd, _axes(x))


class FusedForm(TwoPass):
    """Correct: y = x * k + (beta - mean * k) with k = gamma / sqrt(var + eps), as fused CPU kernels evaluate it.
    With one value per channel it returns beta only to about u |x gamma| / sqrt(eps) (a false alarm once)."""

    def forward(self, x, gamma, beta, eps):
        out = x.dtype
        x = x.astype(_work_dtype(x))
        mean, var = self.statistics(x, eps)
        k = _channel(gamma, x).astype(x.dtype) * self.invstd(var, x.dtype.type(eps))
        return (x * k + (_channel(beta, x).astype(x.dtype) - mean * k)).astype(out)


class ForwardOnly:
    """Correct, forward only: a plain function object (gradients are checked by finite differences)."""

    def __call__(self, x, gamma, beta, eps):
        return TwoPass().forward(x, gamma, beta, eps)


@dataclass(frozen=True)
class Bug:
    name: str
    impl: type
    caught_by: tuple[str, ...]  # each of these properties must fail
    dtype: str = "float64"
    bug_class: str = ""  # the kind of bug, as real libraries shipped it


BUGS = (
    Bug("fast_variance_clamped", FastVarianceClamped, ("forward_reference", "shift_invariance"), "float32",
        "variance as E[x^2] - E[x]^2"),
    Bug("fast_variance_unclamped", FastVarianceUnclamped, ("finite_outputs",), "float32",
        "slightly negative variance -> NaN"),
    Bug("half_sum_of_squares", HalfSumOfSquares, ("finite_outputs", "forward_reference"), "float16",
        "float16 sum of squares overflows"),
    Bug("eps_outside_sqrt", EpsOutsideSqrt, ("standardisation", "scale_covariance", "forward_reference"),
        bug_class="eps outside the sqrt"),
    Bug("max_var_eps", MaxVarEps, ("standardisation", "forward_reference"), bug_class="sqrt(max(var, eps))"),
    Bug("eps_missing", EpsMissing, ("standardisation", "forward_reference"), bug_class="eps missing"),
    Bug("unbiased_variance", UnbiasedVariance, ("standardisation", "exact_reference"),
        bug_class="unbiased variance used to normalise"),
    Bug("per_sample_statistics", PerSampleStatistics, ("layout_equivariance", "forward_reference"),
        bug_class="statistics over the wrong axes (per sample)"),
    Bug("channels_last_reshape", ChannelsLastReshape, ("layout_equivariance", "forward_reference"),
        bug_class="statistics over the wrong axes (NHWC vs NCHW)"),
    Bug("single_value_nan", SingleValueNaN, ("one_value_per_channel",), bug_class="one value per channel"),
    Bug("in_place_centring", InPlaceCentring, ("inputs_not_modified",), bug_class="inputs modified in place"),
    Bug("dx_missing_mean_term", DxMissingMeanTerm, ("dx_sums_to_zero", "dx_invariant_to_dy_shift",
                                                    "backward_finite_differences"),
        bug_class="dx missing the mean term"),
    Bug("dx_missing_variance_term", DxMissingVarianceTerm, ("dx_xhat_identity", "backward_reference"),
        bug_class="dx missing the variance term"),
    Bug("dgamma_from_x", DgammaFromX, ("dgamma_affine_invariance", "dgamma_is_sum_dy_xhat"),
        bug_class="dgamma computed from x"),
    Bug("dgamma_from_centred_x", DgammaFromCentredX, ("dgamma_affine_invariance", "exact_reference"),
        bug_class="dgamma computed from x - mean"),
    Bug("dx_missing_gamma", DxMissingGamma, ("dx_scales_with_gamma", "backward_reference"),
        bug_class="gamma missing from dx"),
    Bug("dx_gamma_twice", DxGammaTwice, ("dx_scales_with_gamma", "backward_finite_differences"),
        bug_class="gamma applied twice"),
    Bug("abs_dy", AbsDy, ("linearity_in_dy", "dbeta_is_sum_dy"), bug_class="gradients not linear in dy"),
    Bug("statistics_in_float32_in_a_float64_run", StatisticsInFloat32, ("float64_arithmetic", "forward_reference"),
        bug_class="float64 input silently computed in float32"),
    Bug("float64_in_float32_in_a_float64_run", Float32Always, ("float64_arithmetic", "forward_reference"),
        bug_class="float64 input silently computed in float32"),
    Bug("float64_gradients", Float64Gradients, ("gradient_shapes_and_dtypes",), "float32",
        "float64 gradients returned for float32 input"),
    Bug("squared_dy", SquaredDy, ("linearity_in_dy", "jacobian_symmetry"), bug_class="gradients not linear in dy"),
)

CORRECT = {"two_pass": TwoPass, "welford": Welford, "torch": Torch, "fused_form": FusedForm}
