"""A zoo of the normalisation variants (Gemma's RMS norm, adaptive layer norm): correct implementations that must
pass, and the bugs real implementations of each variant shipped, each caught by the properties named for it.

Each implementation is written here, in plain NumPy (in PyTorch where the bug is about PyTorch's dtype rules), not
with bnsym's code. They follow the protocol of their layer (:mod:`bnsym.testing.protocols`):

* ``gemma_rms_norm``: ``forward(x, gamma, eps)``, ``backward(dy, x, gamma, eps) -> (dx, dgamma)``; y = (1 + gamma)
  x / sqrt(mean(x^2) + eps) over the trailing axes that ``gamma.shape`` names;
* ``adaptive_layer_norm``: ``forward(x, gamma, beta, eps)``, ``backward(dy, x, gamma, beta, eps) -> (dx, dgamma,
  dbeta)``; x (N, ..., *normalised), gamma (DiT's scale) and beta (DiT's shift) (N, *normalised), y = (1 + gamma)
  x_hat + beta, one row of gamma and beta per sample, their gradients summed over the sample's middle axes only.

A variant added later is data: its correct implementations in :data:`CORRECT` and its bugs in :data:`BUGS`
(tests/testing/test_zoo_variants.py runs every entry, and asks every built-in variant for one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _work_dtype(x):
    """float16 is computed in float32 (as Hugging Face and PyTorch do); other dtypes as given."""
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


class _Rows:
    """How one call sees x: the normalised (trailing) axes that gamma's shape names, gamma in x's broadcast shape,
    and the axes a parameter gradient sums over. ``per_sample``: gamma is (N, *normalised), one row per sample,
    broadcast over the middle axes (DiT's ``scale.unsqueeze(1)`` for x of shape (N, T, D))."""

    def __init__(self, x, gamma_shape, per_sample):
        k = len(gamma_shape) - per_sample
        self.axes = tuple(range(x.ndim - k, x.ndim))
        self.per_sample = per_sample
        if per_sample:
            self.view = (x.shape[0],) + (1,) * (x.ndim - 1 - k) + tuple(gamma_shape[1:])
            self.shared = tuple(range(1, x.ndim - k))
        else:
            self.view = tuple(gamma_shape)
            self.shared = tuple(range(x.ndim - k))
        self.count = int(np.prod([x.shape[a] for a in self.axes]))

    def param(self, p):
        return np.asarray(p).reshape(self.view)

    def mean(self, a):
        return a.mean(axis=self.axes, keepdims=True)

    def gradient(self, a, shape):
        return a.sum(axis=self.shared).reshape(shape)


class _Variant:
    """Correct, for both variants: the statistics, the normalised x_hat, the scale (1 + gamma) and the shift, and
    the backward in its compact closed form dx = s (g - mean(g) - x_hat mean(g x_hat)) with g = (1 + gamma) dy
    (without the mean term for RMS norm). The methods below are the parts the planted bugs replace."""

    centred = True
    per_sample = True

    def rows(self, x, gamma):
        return _Rows(x, gamma.shape, self.per_sample)

    def statistics(self, x, rows, eps):
        """(centre, s = 1/sqrt(statistic + eps)) per row."""
        if self.centred:
            mean = rows.mean(x)
            return mean, self.invstd(rows.mean((x - mean) ** 2), eps)
        return 0, self.invstd(rows.mean(x * x), eps)

    def invstd(self, statistic, eps):
        return 1 / np.sqrt(statistic + eps)

    def scale(self, gamma):
        """What x_hat is multiplied by: 1 + gamma."""
        return 1 + gamma

    def modulate(self, x_hat, gamma, beta, rows):
        y = self.scale(rows.param(gamma)) * x_hat
        return y if beta is None else y + rows.param(beta)

    def backward_scale(self, gamma):
        """The factor the backward multiplies dy by: the forward's scale."""
        return self.scale(gamma)

    def gradients(self, dy, x_hat, s, gamma, rows, with_beta):
        g = self.backward_scale(rows.param(gamma)) * dy
        if self.centred:
            dx = s * (g - rows.mean(g) - x_hat * rows.mean(g * x_hat))
        else:
            dx = s * (g - x_hat * rows.mean(g * x_hat))
        grads = [dx, rows.gradient(dy * x_hat, gamma.shape)]
        if with_beta:
            grads.append(rows.gradient(dy, gamma.shape))
        return grads

    # ----- the protocol -----

    def _forward(self, x, gamma, beta, eps):
        out, work = x.dtype, _work_dtype(x)
        rows = self.rows(x, gamma)
        x = x.astype(work)
        centre, s = self.statistics(x, rows, work.type(eps))
        y = self.modulate((x - centre) * s, gamma.astype(work), None if beta is None else beta.astype(work), rows)
        return y.astype(out)

    def _backward(self, dy, x, gamma, eps, with_beta):
        out, work = x.dtype, _work_dtype(x)
        rows = self.rows(x, gamma)
        x, dy = x.astype(work), dy.astype(work)
        centre, s = self.statistics(x, rows, work.type(eps))
        grads = self.gradients(dy, (x - centre) * s, s, gamma.astype(work), rows, with_beta)
        return tuple(np.asarray(g).astype(out) for g in grads)


class GemmaRMSNorm(_Variant):
    """Correct: Gemma's RMS norm, y = (1 + gamma) x / sqrt(mean(x^2) + eps), float16 computed in float32 and rounded
    once (Hugging Face's ``GemmaRMSNorm`` order)."""

    centred = False
    per_sample = False

    def forward(self, x, gamma, eps):
        return self._forward(x, gamma, None, eps)

    def backward(self, dy, x, gamma, eps):
        return self._backward(dy, x, gamma, eps, with_beta=False)


class AdaptiveLayerNorm(_Variant):
    """Correct: DiT's adaLN, LN(x) (1 + scale) + shift with scale = gamma and shift = beta of shape (N, D)."""

    def forward(self, x, gamma, beta, eps):
        return self._forward(x, gamma, beta, eps)

    def backward(self, dy, x, gamma, beta, eps):
        return self._backward(dy, x, gamma, eps, with_beta=True)


class GemmaRMSNormTorch:
    """Correct in float16, float32 and float64: Hugging Face's order of operations, in PyTorch, with autograd's
    backward: the normalised x in float32 (or float64), multiplied by ``1 + gamma`` taken in the same precision,
    rounded to x's dtype once at the end."""

    def _y(self, x, gamma, eps):
        import torch

        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        xw = x.to(work)
        dims = tuple(range(x.ndim - gamma.ndim, x.ndim))
        normalised = xw * torch.rsqrt(xw.pow(2).mean(dim=dims, keepdim=True) + eps)
        return (normalised * (1.0 + gamma.to(work))).to(x.dtype)

    def forward(self, x, gamma, eps):
        import torch

        return self._y(torch.from_numpy(x), torch.from_numpy(gamma), eps).numpy()

    def backward(self, dy, x, gamma, eps):
        import torch

        xt, gt = (torch.tensor(a, requires_grad=True) for a in (x, gamma))
        grads = torch.autograd.grad(self._y(xt, gt, eps), (xt, gt), torch.from_numpy(dy))
        return tuple(g.numpy() for g in grads)


# ----- Gemma's RMS norm: planted bugs -----

class GemmaScaleByGamma(GemmaRMSNorm):
    """Scales by gamma, not 1 + gamma: Gemma's checkpoint weights (stored as w = s - 1) run through Llama's RMS norm
    without the +1 (Liger-Kernel #74, before its offset parameter; ExecuTorch #19901 on its --checkpoint path)."""

    def scale(self, gamma):
        return gamma


class GemmaOffsetOnlyInForward(GemmaRMSNorm):
    """1 + gamma in the forward, but Llama's backward kernel reused, which multiplies dy by gamma alone: y right, dx
    wrong (the offset of a fused kernel forgotten in one of its two kernels)."""

    def backward_scale(self, gamma):
        return gamma


class GemmaEpsOutsideSqrt(GemmaRMSNorm):
    """x / (sqrt(mean(x^2)) + eps)."""

    def invstd(self, statistic, eps):
        return 1 / (np.sqrt(statistic) + eps)


class GemmaSquaresInFloat16(GemmaRMSNorm):
    """Computes in the input's dtype: float16 input squared and averaged in float16 (``x.pow(2).mean()`` without the
    upcast; tinygrad #2932, and PyTorch #189581 for bfloat16 accumulation), so the mean square is infinite once
    |x| > 256 and y comes out 0."""

    def _forward(self, x, gamma, beta, eps):
        if x.dtype != np.float16:
            return super()._forward(x, gamma, beta, eps)
        rows = self.rows(x, gamma)
        ms = (x * x).sum(axis=rows.axes, keepdims=True, dtype=np.float16) / np.float16(rows.count)
        return ((1 + gamma) * (x / np.sqrt(ms + np.float16(eps)))).astype(np.float16)


class GemmaFloat64AsFloat32(GemmaRMSNormTorch):
    """Hugging Face's ``GemmaRMSNorm`` as written, ``self._norm(x.float())``: ``.float()`` is float32, which
    upcasts float16 and bfloat16 as intended but downcasts float64, so float64 input is computed in float32 and
    returned as float64."""

    def _y(self, x, gamma, eps):
        import torch

        xw = x.float()
        dims = tuple(range(x.ndim - gamma.ndim, x.ndim))
        normalised = xw * torch.rsqrt(xw.pow(2).mean(dim=dims, keepdim=True) + eps)
        return (normalised * (1.0 + gamma.float())).type_as(x)


# ----- adaptive layer norm: planted bugs -----

class AdaLNScaleWithoutOne(AdaptiveLayerNorm):
    """``norm(x) * scale + shift``: the scale applied as is, not as 1 + scale (so adaLN-Zero's zero initialisation
    zeroes the block's input instead of passing it through)."""

    def scale(self, gamma):
        return gamma


class AdaLNShiftScaleSwapped(AdaptiveLayerNorm):
    """Shift and scale swapped by the chunk order: DiT chunks ``shift, scale``, Flux's final norm ``scale, shift``
    (diffusers' convert_flux_to_diffusers swaps them; InvokeAI #7708 had to as well); code that unpacks one order
    for the other computes (1 + shift) x_hat + scale. Its backward is consistent with that forward."""

    def modulate(self, x_hat, gamma, beta, rows):
        return super().modulate(x_hat, beta, gamma, rows)

    def backward(self, dy, x, gamma, beta, eps):
        dx, dbeta_as_scale, dgamma_as_shift = AdaptiveLayerNorm().backward(dy, x, beta, gamma, eps)
        return dx, dgamma_as_shift, dbeta_as_scale


class AdaLNGradientsSummedOverBatch(AdaptiveLayerNorm):
    """dscale and dshift summed over the batch as a layer norm's weight gradients are: (D,) instead of (N, D)."""

    def gradients(self, dy, x_hat, s, gamma, rows, with_beta):
        dx, dgamma, dbeta = super().gradients(dy, x_hat, s, gamma, rows, with_beta)
        return dx, dgamma.sum(axis=0), dbeta.sum(axis=0)


class AdaLNGradientsSummedOverBatchExpanded(AdaptiveLayerNorm):
    """dscale and dshift summed over the batch, then expanded back to (N, D) so that the caller's shape check
    passes: every sample gets the batch's gradient."""

    def gradients(self, dy, x_hat, s, gamma, rows, with_beta):
        dx, dgamma, dbeta = super().gradients(dy, x_hat, s, gamma, rows, with_beta)
        return (dx, np.broadcast_to(dgamma.sum(axis=0), dgamma.shape),
                np.broadcast_to(dbeta.sum(axis=0), dbeta.shape))


class AdaLNModulationUnsqueezedAtOne(AdaptiveLayerNorm):
    """DiT's ``modulate`` broadcast, ``scale.unsqueeze(1)``, used whatever x's rank: right for (N, T, D), but for x
    of shape (N, D) it makes y (N, N, D), every sample modulated by every sample's scale and shift (diffusers #7369
    and #7460: the unsqueeze the other way round, a shape error)."""

    def rows(self, x, gamma):
        rows = super().rows(x, gamma)
        rows.view = (gamma.shape[0], 1) + tuple(gamma.shape[1:])
        return rows


class AdaLNFirstSampleModulation(AdaptiveLayerNorm):
    """Every sample modulated with the first sample's scale and shift: a fused layer-norm kernel given (N, 1, D)
    weights that reads only weight[0][0] (vllm-omni #1537, ``npu_layer_norm_eval``): right at batch size 1."""

    def modulate(self, x_hat, gamma, beta, rows):
        return super().modulate(x_hat, np.broadcast_to(gamma[:1], gamma.shape),
                                np.broadcast_to(beta[:1], beta.shape), rows)


class AdaLNAffineLeftOn(AdaptiveLayerNorm):
    """``nn.LayerNorm(D)`` with its default ``elementwise_affine=True`` under the modulation (DiT uses
    ``elementwise_affine=False``): after training, its weight and bias scale and shift a second time
    (Diffusion-Planner #80). The trained weight and bias are fixed here, a function of D."""

    def modulate(self, x_hat, gamma, beta, rows):
        features = x_hat.shape[-1]
        weight = 1 + 0.5 * np.cos(np.arange(features)).astype(x_hat.dtype)
        bias = 0.25 * np.sin(np.arange(features)).astype(x_hat.dtype)
        return super().modulate(weight * x_hat + bias, gamma, beta, rows)


@dataclass(frozen=True)
class Bug:
    """A planted bug: the class of this file that implements it (``bnsym check
    tests/testing/zoo_variants.py:NAME --layer LAYER``), its layer, its bug class, the properties that must each
    fail, and the dtype that exposes it."""

    name: str
    layer: str
    bug_class: str
    caught_by: tuple[str, ...]
    dtype: str = "float32"

    def impl(self):
        return globals()[self.name]()


BUGS = (
    Bug("GemmaScaleByGamma", "gemma_rms_norm", "scale by gamma instead of 1 + gamma",
        ("forward_reference", "standardisation")),
    Bug("GemmaOffsetOnlyInForward", "gemma_rms_norm", "offset applied in the forward but not in the gradient",
        ("backward_reference", "backward_finite_differences")),
    Bug("GemmaEpsOutsideSqrt", "gemma_rms_norm", "eps outside the square root",
        ("forward_reference", "standardisation")),
    Bug("GemmaSquaresInFloat16", "gemma_rms_norm", "computed in the input's dtype (float16 squares)",
        ("forward_reference", "standardisation"), "float16"),
    Bug("GemmaFloat64AsFloat32", "gemma_rms_norm", "float64 input silently computed in float32",
        ("float64_arithmetic", "forward_reference"), "float64"),
    Bug("AdaLNScaleWithoutOne", "adaptive_layer_norm", "scale applied as scale, not 1 + scale",
        ("forward_reference", "standardisation")),
    Bug("AdaLNShiftScaleSwapped", "adaptive_layer_norm", "shift and scale swapped",
        ("forward_reference", "backward_reference", "dbeta_is_sum_dy")),
    Bug("AdaLNGradientsSummedOverBatch", "adaptive_layer_norm", "per-sample gradients summed over the batch",
        ("gradient_shapes_and_dtypes",)),
    Bug("AdaLNGradientsSummedOverBatchExpanded", "adaptive_layer_norm", "per-sample gradients summed over the batch",
        ("backward_reference", "dbeta_is_sum_dy", "dgamma_is_sum_dy_xhat")),
    Bug("AdaLNModulationUnsqueezedAtOne", "adaptive_layer_norm", "modulation broadcast over the wrong axis",
        ("shapes_and_dtypes",)),
    Bug("AdaLNFirstSampleModulation", "adaptive_layer_norm", "one sample's modulation applied to the whole batch",
        ("forward_reference", "batch_permutation_equivariance")),
    Bug("AdaLNAffineLeftOn", "adaptive_layer_norm", "layer norm with its elementwise affine left on",
        ("forward_reference", "standardisation")),
)

#: Each variant's correct implementations, by name: they pass every property in float16, float32 and float64.
CORRECT = {
    "gemma_rms_norm": {"numpy": GemmaRMSNorm, "torch_hugging_face_order": GemmaRMSNormTorch},
    "adaptive_layer_norm": {"numpy": AdaptiveLayerNorm},
}
