"""Planted bugs in the rest of the layer (eval mode, running statistics, double backward), for the checker's tests.

:class:`Layer` is a correct implementation of the whole protocol, in NumPy on top of bnsym's public functions, for
one running-statistics convention; each bug overrides one method with a mistake that real implementations made
(the bugs real libraries shipped) and names the options that expose it and the properties that must catch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import bnsym
from bnsym.conventions import CONVENTIONS


def _biased_variance(x):
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    return ((x - mean) ** 2).mean(axis=axes)


class Layer:
    """Correct: every method of the protocol, with the running statistics of ``convention``."""

    convention = "torch"

    def forward(self, x, gamma, beta, eps):
        return bnsym.batch_norm_forward(x, gamma, beta, eps=eps)[0]

    def backward(self, dy, x, gamma, beta, eps):
        _, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta, eps=eps)
        return bnsym.batch_norm_backward(dy, x, gamma, mean, invstd)

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_var):
        return bnsym.batch_norm_inference(x, gamma, beta, running_mean, running_var, eps=eps)

    def eval_backward(self, dy, x, gamma, beta, eps, running_mean, running_var):
        return bnsym.batch_norm_inference_backward(dy, x, gamma, running_mean, running_var, eps=eps)

    def weight(self, momentum, num_batches_tracked):
        """What update_running_stats needs: (momentum, num_batches_tracked including this batch)."""
        convention = CONVENTIONS[self.convention]
        return (None if convention.cumulative else momentum,
                num_batches_tracked + 1 if convention.uses_batch_count else None)

    def train_forward(self, x, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        y, mean, _ = bnsym.batch_norm_forward(x, gamma, beta, eps=eps)
        momentum, batches = self.weight(momentum, num_batches_tracked)
        new_mean, new_var = bnsym.update_running_stats(running_mean, running_var, mean, _biased_variance(x),
                                                       x.size // x.shape[1], momentum=momentum,
                                                       convention=self.convention, num_batches_tracked=batches)
        return y, new_mean, new_var

    def double_backward(self, ggx, gggamma, ggbeta, dy, x, gamma, beta, eps):
        _, mean, invstd = bnsym.batch_norm_forward(x, gamma, beta, eps=eps)
        return bnsym.batch_norm_double_backward(ggx, gggamma, ggbeta, dy, x, gamma, mean, invstd)

    def eval_double_backward(self, ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running_mean, running_var):
        invstd = 1 / np.sqrt(running_var + eps)
        return bnsym.batch_norm_double_backward(ggx, gggamma, ggbeta, dy, x, gamma, running_mean, invstd,
                                                training=False)


class CumulativeLayer(Layer):
    convention = "cumulative"


class FlaxLayer(Layer):
    convention = "flax"


class ChainerLayer(Layer):
    convention = "chainer"


class HaikuLayer(Layer):
    convention = "haiku"


class MomentumFlipped(Layer):
    """torch convention with the momentum weighing the old value, as Keras's does."""

    def weight(self, momentum, num_batches_tracked):
        return 1 - momentum, None


class NoBesselCorrection(Layer):
    """torch convention, but running_var from the biased batch variance."""

    def train_forward(self, x, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        y, mean, _ = bnsym.batch_norm_forward(x, gamma, beta, eps=eps)
        var = _biased_variance(x)
        return y, (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


class StatisticsUpdatedInEval(Layer):
    """An eval forward that still folds the batch into the running statistics (in place, as a module would)."""

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_var):
        y = super().eval_forward(x, gamma, beta, eps, running_mean, running_var)
        axes = (0,) + tuple(range(2, x.ndim))
        running_mean *= 0.9
        running_mean += 0.1 * x.mean(axis=axes).astype(running_mean.dtype)
        return y


class EvalWithBatchStatistics(Layer):
    """Eval mode that normalises with the batch's statistics instead of the running ones."""

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_var):
        return bnsym.batch_norm_forward(x, gamma, beta, eps=eps)[0]


class EvalWithoutEps(Layer):
    """Eval mode dividing by sqrt(running_var), eps left out (training mode has it)."""

    def eval_forward(self, x, gamma, beta, eps, running_mean, running_var):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(running_var, np.float64))
        y = (x - np.reshape(running_mean, shape)) * scale.reshape(shape) + np.reshape(beta, shape)
        return y.astype(x.dtype)


class CumulativeOffByOne(CumulativeLayer):
    """The cumulative average with 1/(n + 1) where n already counts this batch."""

    def weight(self, momentum, num_batches_tracked):
        return None, num_batches_tracked + 2


class EquinoxEma(FlaxLayer):
    """Equinox's BatchNorm in its default "ema" mode: a training step updates the running statistics and then
    normalises the batch with them, not with the batch's own statistics."""

    def train_forward(self, x, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        _, new_mean, new_var = super().train_forward(x, gamma, beta, eps, running_mean, running_var, momentum,
                                                     num_batches_tracked)
        return bnsym.batch_norm_inference(x, gamma, beta, new_mean, new_var, eps=eps), new_mean, new_var


class ZeroTrainOutput(Layer):
    """A train_forward that updates the running statistics right and returns zeros for y."""

    def train_forward(self, x, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        _, new_mean, new_var = super().train_forward(x, gamma, beta, eps, running_mean, running_var, momentum,
                                                     num_batches_tracked)
        return np.zeros_like(x), new_mean, new_var


class DetachedMeanDoubleBackward:
    """The variance taken around a detached (constant) mean, as shipped libraries did: var = mean((x - c)^2) with
    c = stop_gradient(mean(x)). The first derivative is right (sum(x - mean) = 0 hides it); the second is not, and
    the Hessian stays symmetric. Written in PyTorch, whose autograd differentiates exactly what is written."""

    def _y(self, x, gamma, beta, eps):
        import torch

        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(dim=axes, keepdim=True)
        var = ((x - mean.detach()) ** 2).mean(dim=axes, keepdim=True)
        return gamma.reshape(shape) * (x - mean) / torch.sqrt(var + eps) + beta.reshape(shape)

    def forward(self, x, gamma, beta, eps):
        import torch

        return self._y(*(torch.from_numpy(a) for a in (x, gamma, beta)), eps).numpy()

    def backward(self, dy, x, gamma, beta, eps):
        import torch

        xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        return tuple(g.numpy() for g in torch.autograd.grad(self._y(xt, gt, bt, eps), (xt, gt, bt),
                                                             torch.from_numpy(dy)))

    def double_backward(self, ggx, gggamma, ggbeta, dy, x, gamma, beta, eps):
        import torch

        xt, gt, bt, dyt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta, dy))
        dx, dgamma, dbeta = torch.autograd.grad(self._y(xt, gt, bt, eps), (xt, gt, bt), dyt, create_graph=True)
        total = ((dx * torch.from_numpy(ggx)).sum() + (dgamma * torch.from_numpy(gggamma)).sum()
                 + (dbeta * torch.from_numpy(ggbeta)).sum())
        return tuple(g.detach().numpy() for g in torch.autograd.grad(total, (xt, gt, dyt)))


class DoubleBackwardMissingTerm(Layer):
    """gx without its gggamma term: the dependence of dgamma = sum(dy x_hat) on x through x_hat's numerator."""

    def double_backward(self, ggx, gggamma, ggbeta, dy, x, gamma, beta, eps):
        gx, ggamma, gdy = super().double_backward(ggx, gggamma, ggbeta, dy, x, gamma, beta, eps)
        _, _, invstd = bnsym.batch_norm_forward(x, gamma, beta, eps=eps)
        channel = (1, -1) + (1,) * (x.ndim - 2)
        return gx - dy * (gggamma * invstd).reshape(channel), ggamma, gdy


class EvalDoubleBackwardSwapped(Layer):
    """Eval double backward whose gx uses ggx where dy belongs."""

    def eval_double_backward(self, ggx, gggamma, ggbeta, dy, x, gamma, beta, eps, running_mean, running_var):
        return super().eval_double_backward(ggx, gggamma, ggbeta, ggx, x, gamma, beta, eps, running_mean,
                                            running_var)


@dataclass(frozen=True)
class LayerBug:
    name: str
    impl: type
    caught_by: tuple[str, ...]
    options: dict = field(default_factory=dict)
    bug_class: str = ""


BUGS = (
    LayerBug("momentum_flipped", MomentumFlipped, ("running_stats_one_step_from_zero", "running_stats_several_steps"),
             {"convention": "torch"}, "momentum convention flipped"),
    LayerBug("no_bessel_correction", NoBesselCorrection, ("running_stats_full_momentum",), {"convention": "torch"},
             "running_var without Bessel's correction (PyTorch convention)"),
    LayerBug("statistics_updated_in_eval", StatisticsUpdatedInEval, ("eval_leaves_running_stats_unchanged",),
             {"convention": "torch"}, "running statistics changed by an eval-mode forward"),
    LayerBug("eval_with_batch_statistics", EvalWithBatchStatistics,
             ("eval_forward_reference", "eval_sample_independence"), {"mode": "eval"},
             "eval mode normalising with batch statistics"),
    LayerBug("eval_without_eps", EvalWithoutEps, ("eval_forward_reference", "eval_is_training_at_batch_statistics"),
             {"mode": "eval"}, "eval mode without eps"),
    LayerBug("cumulative_off_by_one", CumulativeOffByOne,
             ("running_stats_one_step_from_zero", "running_stats_full_momentum"), {"convention": "cumulative"},
             "cumulative average wrong"),
    LayerBug("equinox_ema", EquinoxEma, ("train_forward_batch_statistics",), {"convention": "flax"},
             "training output normalised with running statistics"),
    LayerBug("zero_train_output", ZeroTrainOutput, ("train_forward_batch_statistics",), {"convention": "torch"},
             "train_forward y not checked"),
    LayerBug("detached_mean_double_backward", DetachedMeanDoubleBackward,
             ("double_backward_reference", "double_backward_finite_differences"), {"order": 2},
             "double backward treating the batch mean as a constant"),
    LayerBug("double_backward_missing_term", DoubleBackwardMissingTerm,
             ("double_backward_reference", "double_backward_finite_differences"), {"order": 2},
             "double backward missing a term"),
    LayerBug("eval_double_backward_swapped", EvalDoubleBackwardSwapped,
             ("eval_double_backward_reference", "eval_double_backward_finite_differences"),
             {"mode": "eval", "order": 2}, "double backward with an argument in the wrong place"),
)

CORRECT = {"torch_convention": Layer, "cumulative": CumulativeLayer, "flax": FlaxLayer, "chainer": ChainerLayer,
           "haiku": HaikuLayer}
