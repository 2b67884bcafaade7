"""A zoo of batch renormalisations for testing the checker: a correct one that must pass, and planted bugs that real
implementations of batch renormalisation shipped (or that Keras's defaults amount to), each caught by the
properties named for it.

Every implementation is a plain NumPy one written here (not bnsym's code), in the checker's protocol of the layer
(:mod:`bnsym.testing.protocols`): x of shape (N, C, *spatial), per-channel gamma, beta, running_mean and running_std
of shape (C,), and

    forward(x, gamma, beta, eps, running_mean, running_std, r_max, d_max) -> y
    backward(dy, x, gamma, beta, eps, running_mean, running_std, r_max, d_max) -> (dx, dgamma, dbeta)
    train_forward(x, gamma, beta, eps, running_mean, running_std, r_max, d_max, momentum, num_batches_tracked)
        -> (y, new_running_mean, new_running_std)          (Keras's convention: new = m old + (1 - m) batch)
    eval_forward(x, gamma, beta, eps, running_mean, running_std) -> y = gamma (x - running_mean) / running_std + beta
    eval_backward(dy, x, gamma, beta, eps, running_mean, running_std) -> (dx, dgamma, dbeta)

``CORRECT`` and ``BUGS`` are this zoo's data, which tests/testing/test_zoo_variants.py reads with the other
variants' zoos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _channels(a, ndim):
    return np.asarray(a, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


class TwoPassRenorm:
    """Correct: Ioffe's Algorithm 1, two-pass statistics, r and d constants of the backward."""

    # ----- the parts the bugs replace -----

    def variance(self, x, axes, mean):
        return ((x - mean) ** 2).mean(axis=axes, keepdims=True)

    def corrections(self, mean, sigma, running_mean, running_std, r_max, d_max, momentum=None):
        r = np.clip(sigma / running_std, 1 / r_max, r_max)
        d = np.clip((mean - running_mean) / running_std, -d_max, d_max)
        return r, d

    def batch_std(self, var, eps):
        """What running_std averages: sigma = sqrt(var + eps)."""
        return np.sqrt(var + eps)

    def dx(self, g, x_hat, sigma, r, axes, mean, x, running_std):
        average = lambda a: a.mean(axis=axes, keepdims=True)  # noqa: E731
        return r / sigma * (g - average(g) - x_hat * average(g * x_hat))

    # ----- the protocol -----

    def _statistics(self, x, eps):
        work = np.asarray(x, np.float64)
        axes = (0,) + tuple(range(2, work.ndim))
        mean = work.mean(axis=axes, keepdims=True)
        var = self.variance(work, axes, mean)
        sigma = np.sqrt(var + eps)
        return work, axes, mean, var, sigma

    def _forward(self, x, gamma, beta, eps, running_mean, running_std, r_max, d_max, momentum=None):
        work, axes, mean, var, sigma = self._statistics(x, eps)
        rm, rs = _channels(running_mean, work.ndim), _channels(running_std, work.ndim)
        r, d = self.corrections(mean, sigma, rm, rs, r_max, d_max, momentum)
        x_hat = (work - mean) / sigma
        y = _channels(gamma, work.ndim) * (r * x_hat + d) + _channels(beta, work.ndim)
        return y.astype(x.dtype), mean, var

    def forward(self, x, gamma, beta, eps, running_mean, running_std, r_max, d_max):
        return self._forward(x, gamma, beta, eps, running_mean, running_std, r_max, d_max)[0]

    def backward(self, dy, x, gamma, beta, eps, running_mean, running_std, r_max, d_max):
        work, axes, mean, var, sigma = self._statistics(x, eps)
        rm, rs = _channels(running_mean, work.ndim), _channels(running_std, work.ndim)
        r, d = self.corrections(mean, sigma, rm, rs, r_max, d_max)
        x_hat = (work - mean) / sigma
        dyw = np.asarray(dy, np.float64)
        gamma_c = _channels(gamma, work.ndim)
        dx = self.dx(gamma_c * dyw, x_hat, sigma, r, axes, mean, work, rs)
        dgamma = (dyw * (r * x_hat + d)).sum(axis=axes)
        dbeta = dyw.sum(axis=axes)
        return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_std):
        work = np.asarray(x, np.float64)
        x_hat = (work - _channels(running_mean, work.ndim)) / _channels(running_std, work.ndim)
        return (_channels(gamma, work.ndim) * x_hat + _channels(beta, work.ndim)).astype(x.dtype)

    def eval_backward(self, dy, x, gamma, beta, eps, running_mean, running_std):
        work, dyw = np.asarray(x, np.float64), np.asarray(dy, np.float64)
        axes = (0,) + tuple(range(2, work.ndim))
        std = _channels(running_std, work.ndim)
        x_hat = (work - _channels(running_mean, work.ndim)) / std
        dx = dyw * _channels(gamma, work.ndim) / std
        return dx.astype(x.dtype), (dyw * x_hat).sum(axis=axes).astype(x.dtype), dyw.sum(axis=axes).astype(x.dtype)

    def train_forward(self, x, gamma, beta, eps, running_mean, running_std, r_max, d_max, momentum,
                      num_batches_tracked):
        y, mean, var = self._forward(x, gamma, beta, eps, running_mean, running_std, r_max, d_max, momentum)
        mean, var = mean.reshape(-1), var.reshape(-1)
        new_mean = momentum * np.asarray(running_mean, np.float64) + (1 - momentum) * mean
        new_std = momentum * np.asarray(running_std, np.float64) + (1 - momentum) * self.batch_std(var, eps)
        dtype = np.asarray(running_mean).dtype
        return y, new_mean.astype(dtype), new_std.astype(dtype)


class GradientThroughCorrections(TwoPassRenorm):
    """r and d without the stop-gradient (a missing ``.detach()`` or ``stop_gradient``): the forward is right, but
    the backward, by torch's autograd, also differentiates r = clip(sigma / running_std) and d = clip((mean -
    running_mean) / running_std) wherever they are not clipped."""

    def backward(self, dy, x, gamma, beta, eps, running_mean, running_std, r_max, d_max):
        import torch

        ndim = np.ndim(x)
        axes = (0,) + tuple(range(2, ndim))
        channels = lambda a: torch.tensor(_channels(a, ndim))  # noqa: E731
        xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
        gt = torch.tensor(np.asarray(gamma, np.float64), requires_grad=True)
        bt = torch.tensor(np.asarray(beta, np.float64), requires_grad=True)
        mean = xt.mean(dim=axes, keepdim=True)
        sigma = torch.sqrt(((xt - mean) ** 2).mean(dim=axes, keepdim=True) + eps)
        rm, rs = channels(running_mean), channels(running_std)
        r = torch.clamp(sigma / rs, 1 / r_max, r_max)
        d = torch.clamp((mean - rm) / rs, -d_max, d_max)
        shape = (1, -1) + (1,) * (ndim - 2)
        y = gt.reshape(shape) * (r * (xt - mean) / sigma + d) + bt.reshape(shape)
        grads = torch.autograd.grad(y, (xt, gt, bt), torch.tensor(np.asarray(dy, np.float64)))
        return tuple(g.numpy().astype(np.asarray(x).dtype) for g in grads)


class CorrectionsFromUpdatedStatistics(TwoPassRenorm):
    """r and d from the running statistics after this batch's update (momentum 0.9), not before it."""

    def corrections(self, mean, sigma, running_mean, running_std, r_max, d_max, momentum=None):
        m = 0.9 if momentum is None else momentum
        return super().corrections(mean, sigma, m * running_mean + (1 - m) * mean, m * running_std + (1 - m) * sigma,
                                   r_max, d_max)


class RClippedFromZero(TwoPassRenorm):
    """r clipped to [0, r_max] (Keras's default when ``rmin`` is not given) instead of [1/r_max, r_max]."""

    def corrections(self, mean, sigma, running_mean, running_std, r_max, d_max, momentum=None):
        r, d = super().corrections(mean, sigma, running_mean, running_std, r_max, d_max)
        return np.minimum(sigma / running_std, r_max), d


class UnbiasedBatchStd(TwoPassRenorm):
    """sigma_B from the unbiased batch variance (M - 1 in the denominator)."""

    def variance(self, x, axes, mean):
        count = x.size // x.shape[1]
        return ((x - mean) ** 2).sum(axis=axes, keepdims=True) / max(count - 1, 1)


class RunningStdWithoutEps(TwoPassRenorm):
    """running_std updated with sqrt(var), eps left out (the forward's sigma has it)."""

    def batch_std(self, var, eps):
        return np.sqrt(var)


class EvalWithBatchStatistics(TwoPassRenorm):
    """Eval mode normalising with the batch's own mean and sigma, not the running ones (a layer left in training
    mode, r = 1, d = 0)."""

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_std):
        work, axes, mean, var, sigma = self._statistics(x, eps)
        y = _channels(gamma, work.ndim) * (work - mean) / sigma + _channels(beta, work.ndim)
        return y.astype(x.dtype)


class EvalAppliesCorrections(TwoPassRenorm):
    """Eval mode as the training forward: the batch's statistics corrected by r and d (which only training has),
    rather than the running statistics alone."""

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_std):
        return self.forward(x, gamma, beta, eps, running_mean, running_std, 3.0, 5.0)


class EvalReadsStdAsVariance(TwoPassRenorm):
    """Eval mode dividing by sqrt(running_std + eps), as batch norm divides by sqrt(running_var + eps): the running
    statistic this layer keeps is a standard deviation, eps already in it."""

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_std):
        as_variance = np.sqrt(np.asarray(running_std, np.float64) + eps)
        return super().eval_forward(x, gamma, beta, eps, running_mean, as_variance)

    def eval_backward(self, dy, x, gamma, beta, eps, running_mean, running_std):
        as_variance = np.sqrt(np.asarray(running_std, np.float64) + eps)
        return super().eval_backward(dy, x, gamma, beta, eps, running_mean, as_variance)


class EvalBackwardScaledByR(TwoPassRenorm):
    """Eval backward that keeps training's factor r (from the batch's sigma over running_std) in dx."""

    def eval_backward(self, dy, x, gamma, beta, eps, running_mean, running_std):
        dx, dgamma, dbeta = super().eval_backward(dy, x, gamma, beta, eps, running_mean, running_std)
        work, axes, mean, var, sigma = self._statistics(x, eps)
        r = np.clip(sigma / _channels(running_std, work.ndim), 1 / 3, 3)
        return (dx * r).astype(x.dtype), dgamma, dbeta


@dataclass(frozen=True)
class Bug:
    name: str
    caught_by: tuple[str, ...]
    convention: str | None = None
    mode: str = "train"
    layer: str = "batch_renorm"

    def impl(self):
        return globals()[self.name]()


BUGS = (
    Bug("GradientThroughCorrections", ("backward_reference",)),
    Bug("CorrectionsFromUpdatedStatistics", ("forward_reference",)),
    Bug("RClippedFromZero", ("forward_reference",)),
    Bug("UnbiasedBatchStd", ("forward_reference",)),
    Bug("RunningStdWithoutEps", ("running_stats_read_and_updated",), convention="keras"),
    Bug("EvalWithBatchStatistics", ("eval_forward_reference", "eval_sample_independence"), mode="eval"),
    Bug("EvalAppliesCorrections", ("eval_forward_reference", "eval_sample_independence"), mode="eval"),
    Bug("EvalReadsStdAsVariance", ("eval_forward_reference", "eval_backward_reference",
                                   "eval_is_training_at_batch_statistics"), mode="eval"),
    Bug("EvalBackwardScaledByR", ("eval_backward_reference", "eval_backward_finite_differences"), mode="eval"),
)

#: The correct implementations, by name (as tests/testing/zoo_variants.py's CORRECT holds them per variant).
CORRECT = {"two_pass": TwoPassRenorm}
