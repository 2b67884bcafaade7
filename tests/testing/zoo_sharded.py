"""Data-parallel batch norms for testing the sharded mode of the check: correct ones that must pass, planted SyncBN bugs
that must be caught.

Each implementation follows the sharded protocol (:mod:`bnsym.testing.sharded`) and simulates its K workers in one
process: a worker sees only its shard, and an "all-reduce" is a sum over the workers' values. :class:`TwoRounds` is
the textbook plan (all-reduce the counts and sums, then the centred sums of squares); :class:`ParallelMerge` merges
per-worker (count, mean, M2). Each bug changes one step the way a shipped SyncBatchNorm did (docs/bug-classes.md
and the issue threads named on each class).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def _work(x):
    """float16 is computed in float32, as PyTorch does; other dtypes as given."""
    return np.dtype(np.float32 if x.dtype == np.float16 else x.dtype).type


class TwoRounds:
    """Correct: round 1 all-reduces each worker's count and sum(x), round 2 the centred sums of squares about the
    global mean; the backward all-reduces sum(dy) and sum(dy x_hat); each worker returns its own dgamma, dbeta."""

    # ----- the statistics (what the bugs change) -----

    def count(self, xs):
        return sum(x.size // x.shape[1] for x in xs)

    def statistics(self, xs):
        """Global (mean, biased var), per channel, shape (1, C, 1, ...)."""
        axes, ndim = _axes(xs[0]), xs[0].ndim
        total = sum(x.sum(axis=axes) for x in xs)
        mean = _channel(total / self.count(xs), ndim)
        var = sum(((x - mean) ** 2).sum(axis=axes) for x in xs) / self.count(xs)
        return mean, _channel(var, ndim)

    def unbiased(self, var, xs, k):
        """The variance worker k folds into running_var (torch convention): Bessel's correction, global count."""
        m = self.count(xs)
        return var * m / (m - 1)

    def backward_sums(self, dys, x_hats):
        """The all-reduced sum(dy) and sum(dy x_hat), and the count they are divided by, for worker k."""
        axes = _axes(dys[0])
        sum_dy = sum(dy.sum(axis=axes) for dy in dys)
        sum_dy_xhat = sum((dy * xh).sum(axis=axes) for dy, xh in zip(dys, x_hats))
        return [(sum_dy, sum_dy_xhat, self.count(x_hats))] * len(dys)

    def parameter_gradients(self, dys, x_hats):
        """Each worker's own dgamma, dbeta (the data-parallel wrapper sums them)."""
        axes = _axes(dys[0])
        return [(dy * xh).sum(axis=axes) for dy, xh in zip(dys, x_hats)], [dy.sum(axis=axes) for dy in dys]

    # ----- the protocol -----

    def _normalised(self, xs, eps):
        work = _work(xs[0])
        xs = [x.astype(work) for x in xs]
        mean, var = self.statistics(xs)
        invstd = 1 / np.sqrt(var + work(eps))
        return xs, mean, var, invstd, [(x - mean) * invstd for x in xs]

    def sharded_forward(self, xs, gamma, beta, eps):
        out = xs[0].dtype
        xs, _, _, _, x_hats = self._normalised(xs, eps)
        ndim, work = xs[0].ndim, xs[0].dtype
        return [(_channel(gamma, ndim).astype(work) * xh + _channel(beta, ndim).astype(work)).astype(out)
                for xh in x_hats]

    def sharded_backward(self, dys, xs, gamma, beta, eps):
        out = xs[0].dtype
        xs, _, _, invstd, x_hats = self._normalised(xs, eps)
        ndim, work = xs[0].ndim, xs[0].dtype
        dys = [dy.astype(work) for dy in dys]
        scale = _channel(gamma, ndim).astype(work) * invstd
        dxs = []
        for dy, xh, (sum_dy, sum_dy_xhat, m) in zip(dys, x_hats, self.backward_sums(dys, x_hats)):
            dxs.append((scale * (dy - _channel(sum_dy, ndim) / m - xh * _channel(sum_dy_xhat, ndim) / m)).astype(out))
        dgammas, dbetas = self.parameter_gradients(dys, x_hats)
        return dxs, [g.astype(out) for g in dgammas], [b.astype(out) for b in dbetas]

    def sharded_train_forward(self, xs, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        ys = self.sharded_forward(xs, gamma, beta, eps)
        _, mean, var, _, _ = self._normalised(xs, eps)
        weight = 1 / (num_batches_tracked + 1) if momentum is None else momentum
        means, variances = [], []
        for k in range(len(xs)):
            unbiased = self.unbiased(var.reshape(-1).astype(np.float64), xs, k)
            means.append(((1 - weight) * running_mean + weight * mean.reshape(-1)).astype(running_mean.dtype))
            variances.append(((1 - weight) * running_var + weight * unbiased).astype(running_var.dtype))
        return ys, means, variances


class ParallelMerge(TwoRounds):
    """Correct: one round, each worker's (count, mean, M2) gathered and merged: mean = sum_k n_k mean_k / M,
    M2 = sum_k M2_k + sum_k n_k (mean_k - mean)^2 (empty workers left out)."""

    def statistics(self, xs):
        axes, ndim = _axes(xs[0]), xs[0].ndim
        shards = [(x.size // x.shape[1], x.mean(axis=axes),
                   ((x - x.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)) for x in xs if x.size]
        m = sum(n for n, _, _ in shards)
        mean = sum(n * mu for n, mu, _ in shards) / m
        m2 = sum(m2 for _, _, m2 in shards) + sum(n * (mu - mean) ** 2 for n, mu, _ in shards)
        return _channel(mean, ndim), _channel(m2 / m, ndim)


class EqualShardsOnly(TwoRounds):
    """Correct, and takes shards of equal size only (as the jax adapter): the checker must give it equal ones."""

    equal_shards = True

    def sharded_forward(self, xs, gamma, beta, eps):
        if len({len(x) for x in xs}) != 1:
            raise ValueError(f"shards of different sizes {[len(x) for x in xs]}")
        return super().sharded_forward(xs, gamma, beta, eps)


class AbortsInBackward(TwoRounds):
    """Correct forward, and a backward that aborts the process (a crash in native code): a finding under --isolate."""

    def sharded_backward(self, dys, xs, gamma, beta, eps):
        import os

        os.abort()


class Unavailable(TwoRounds):
    """Cannot run here (as torch-sync without a GPU): every property is skipped with this reason."""

    unavailable = "needs a GPU (this is a test)"


# ----- the planted bugs -----

class UnweightedMeanOfMeans(TwoRounds):
    """The mean of the workers' means, unweighted: right only when every worker has as many samples
    (PaddlePaddle #32464; pytorch #22192 before counts were gathered)."""

    def statistics(self, xs):
        axes, ndim = _axes(xs[0]), xs[0].ndim
        means = [x.mean(axis=axes) for x in xs if x.size]
        mean = _channel(sum(means) / len(means), ndim)
        var = sum(((x - mean) ** 2).sum(axis=axes) for x in xs) / self.count(xs)
        return mean, _channel(var, ndim)


class MeanOfWorkerVariances(TwoRounds):
    """The variance as the count-weighted mean of the workers' own variances: the spread between the workers'
    means is lost."""

    def statistics(self, xs):
        mean, _ = super().statistics(xs)
        axes, ndim = _axes(xs[0]), xs[0].ndim
        m2 = sum(((x - x.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes) for x in xs if x.size)
        return mean, _channel(m2 / self.count(xs), ndim)


class LocalBesselCorrection(TwoRounds):
    """running_var with Bessel's correction from the worker's own count, M_k / (M_k - 1) (pytorch #22192)."""

    def unbiased(self, var, xs, k):
        m = xs[k].size // xs[k].shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return var * m / (m - 1)


class BackwardWithoutAllReduce(TwoRounds):
    """The backward uses the worker's own sum(dy) and sum(dy x_hat) (and its own count): the two all-reduces of
    the backward are missing."""

    def backward_sums(self, dys, x_hats):
        axes = _axes(dys[0])
        return [(dy.sum(axis=axes), (dy * xh).sum(axis=axes), max(dy.size // dy.shape[1], 1))
                for dy, xh in zip(dys, x_hats)]


class ParameterGradientsReducedTwice(TwoRounds):
    """dgamma and dbeta all-reduced by the layer, then summed again by the data-parallel wrapper: every worker
    returns the global gradient."""

    def parameter_gradients(self, dys, x_hats):
        dgammas, dbetas = super().parameter_gradients(dys, x_hats)
        return [sum(dgammas)] * len(dys), [sum(dbetas)] * len(dys)


class BackwardAssumesEqualShards(TwoRounds):
    """The all-reduced backward sums divided by K times the worker's own count, as if every worker had as many
    samples (pytorch #36382, "Fixing SyncBN dgrad")."""

    def backward_sums(self, dys, x_hats):
        sums = super().backward_sums(dys, x_hats)
        return [(s, p, len(dys) * max(dy.size // dy.shape[1], 1)) for (s, p, _), dy in zip(sums, dys)]


class EmptyWorkerPoisonsTheMerge(ParallelMerge):
    """An empty worker's statistics (count 0, mean 0/0) enter the merge (pytorch #36530, fixed by #74944)."""

    def statistics(self, xs):
        axes, ndim = _axes(xs[0]), xs[0].ndim
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": the bug itself
            shards = [(x.size // x.shape[1], x.mean(axis=axes),
                       ((x - x.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)) for x in xs]
            m = sum(n for n, _, _ in shards)
            mean = sum(n * mu for n, mu, _ in shards) / m
            m2 = sum(m2 for _, _, m2 in shards) + sum(n * (mu - mean) ** 2 for n, mu, _ in shards)
        return _channel(mean, ndim), _channel(m2 / m, ndim)


class SingleSampleWorkerRefused(TwoRounds):
    """Refuses a worker holding one value per channel, although the whole batch has more (pytorch #36865)."""

    def sharded_forward(self, xs, gamma, beta, eps):
        for x in xs:
            if x.size // x.shape[1] == 1:
                raise ValueError("Expected more than 1 value per channel when training")
        return super().sharded_forward(xs, gamma, beta, eps)


class TrainStepWithRunningStatistics(TwoRounds):
    """The training step normalises with the running statistics it was given (eval mode's y), while it updates them
    correctly: the outputs of a training step are wrong, its running statistics right."""

    def sharded_train_forward(self, xs, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        _, means, variances = super().sharded_train_forward(xs, gamma, beta, eps, running_mean, running_var, momentum,
                                                            num_batches_tracked)
        ndim, work = xs[0].ndim, _work(xs[0])
        scale = _channel(gamma, ndim).astype(work) / np.sqrt(_channel(running_var, ndim).astype(work) + work(eps))
        ys = [(scale * (x.astype(work) - _channel(running_mean, ndim).astype(work))
               + _channel(beta, ndim).astype(work)).astype(x.dtype) for x in xs]
        return ys, means, variances


class CentresDyInPlace(TwoRounds):
    """Centres the caller's dy shards in place (dy -= the global mean of dy, an optimisation that saves a copy), after
    taking dgamma and dbeta from them: every result is right, and the caller's dy is gone."""

    def sharded_backward(self, dys, xs, gamma, beta, eps):
        _, dgammas, dbetas = super().sharded_backward(dys, xs, gamma, beta, eps)
        axes, ndim = _axes(dys[0]), dys[0].ndim
        mean_dy = _channel(sum(dy.sum(axis=axes) for dy in dys) / self.count(xs), ndim)
        for dy in dys:
            dy -= mean_dy.astype(dy.dtype)  # the caller's array
        # With sum(dy) = 0 the backward's sum(dy) term vanishes, and sum(dy x_hat) is unchanged (sum(x_hat) = 0).
        dxs, _, _ = super().sharded_backward(dys, xs, gamma, beta, eps)
        return dxs, dgammas, dbetas


@dataclass(frozen=True)
class ShardedBug:
    name: str
    impl: type
    caught_by: tuple[str, ...]
    bug_class: str
    convention: str | None = None


BUGS = (
    ShardedBug("unweighted_mean_of_means", UnweightedMeanOfMeans, ("sharded_forward_reference",),
               "unweighted mean of per-worker means"),
    ShardedBug("mean_of_worker_variances", MeanOfWorkerVariances, ("sharded_forward_reference",),
               "mean of per-worker variances"),
    ShardedBug("local_bessel_correction", LocalBesselCorrection, ("sharded_running_statistics",),
               "local count in Bessel's correction", convention="torch"),
    ShardedBug("backward_without_all_reduce", BackwardWithoutAllReduce, ("sharded_backward_reference",),
               "backward without the all-reduce of sum(dy) and sum(dy * xhat)"),
    ShardedBug("parameter_gradients_reduced_twice", ParameterGradientsReducedTwice, ("sharded_parameter_gradients",),
               "gamma/beta gradients reduced twice"),
    ShardedBug("backward_assumes_equal_shards", BackwardAssumesEqualShards, ("sharded_backward_reference",),
               "backward normalised by K times the local count"),
    ShardedBug("empty_worker_poisons_the_merge", EmptyWorkerPoisonsTheMerge, ("sharded_forward_reference",),
               "an empty worker's statistics in the merge"),
    ShardedBug("single_sample_worker_refused", SingleSampleWorkerRefused, ("sharded_forward_reference",),
               "a one-sample worker refused"),
    ShardedBug("train_step_with_running_statistics", TrainStepWithRunningStatistics,
               ("sharded_train_forward_batch_statistics",), "a training step normalised with the running statistics",
               convention="torch"),
    ShardedBug("centres_dy_in_place", CentresDyInPlace, ("sharded_inputs_not_modified",),
               "the caller's dy shards centred in place"),
)

CORRECT = {"two_rounds": TwoRounds, "parallel_merge": ParallelMerge}
