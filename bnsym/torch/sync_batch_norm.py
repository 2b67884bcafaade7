"""``bnsym.torch.SyncBatchNorm``: batch norm with statistics over every worker of a process group, on any device.

A drop-in for ``torch.nn.SyncBatchNorm`` (same constructor, parameters, buffers, state_dict keys,
``convert_sync_batchnorm``, eval mode, ``process_group``), whose arithmetic is bnsym's generated kernels and whose
communication is ``torch.distributed`` collectives, so it runs with the gloo backend on CPU (where PyTorch's own
refuses: "SyncBatchNorm expected input tensor to be on GPU") and with NCCL on GPU (there the kernels run on the
host: the input is copied to the CPU and back, and only the collectives' small tensors stay on the device).

What crosses the network, per call, follows the sharded derivation (``derivations/batch_norm.md``, section
"Sharded training"), for C channels:

* training forward: one all-reduce of C + 1 numbers (sum(x) per channel and the worker's count), then one of C
  (the centred sum of squares about the global mean);
* backward: one all-reduce of 2C numbers (sum(dy) and sum(dy (x - mean)) per channel). dgamma and dbeta are the
  worker's own contributions, as PyTorch's SyncBatchNorm returns them: the data-parallel wrapper
  (``DistributedDataParallel``) sums them with the other parameter gradients;
* eval mode (running statistics) and a process group of one: nothing (local batch norm, as PyTorch does).

Workers may hold different numbers of samples, one sample, or none (an empty batch joins every collective and
contributes nothing). Running statistics use the global mean, the global biased variance and the global count
(Bessel's correction M / (M - 1) with M over every worker), with PyTorch's momentum convention (``momentum=None``:
the cumulative average). The variance for the running statistics is 1/invstd^2 - eps, evaluated in float64, as
PyTorch's SyncBatchNorm does. The backward cannot itself be differentiated (no double backward).
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from bnsym.batch_norm import update_running_stats
from bnsym.runtime.reduce import Reducer
from bnsym.torch.distributed_reducer import DistributedReducer, LocalTotals

__all__ = ["SyncBatchNorm"]


def _kernels():
    # The generated module, imported on first use (as bnsym's public functions do).
    return importlib.import_module("bnsym._generated.batch_norm")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels run in: float64 and float32 as given, anything narrower (float16, bfloat16) in
    float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _to_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=dtype).contiguous().numpy()


def _channel(values, channels: int, ndim: int, dtype: torch.dtype, default: float) -> np.ndarray:
    """A per-channel tensor (or None: the default value) as a NumPy array shaped (1, C, 1, ...) for broadcasting."""
    shape = (1, channels) + (1,) * (ndim - 2)
    if values is None:
        return np.full(shape, default, dtype=torch.empty((), dtype=dtype).numpy().dtype)
    return _to_numpy(values, dtype).reshape(shape)


def _axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _require_batch(count: int, shape, distributed: bool) -> None:
    # Every rank knows the global count, so every rank raises together: no peer is left waiting. An empty batch
    # (M = 0 everywhere) is allowed, as PyTorch allows it: empty output, no update of the running statistics.
    if count == 1:
        where = "over all workers" if distributed else "in the batch"
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {tuple(shape)} "
                         f"and 1 value per channel {where}")


class _BatchStatistics(torch.autograd.Function):
    """Training-mode batch norm (batch statistics), over the ranks of ``group`` when ``group`` is not None."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group, running):
        dtype = _compute_dtype(x.dtype)
        channels, ndim = x.shape[1], x.dim()
        axes = _axes(ndim)
        xs = _to_numpy(x, dtype)
        gamma = _channel(weight, channels, ndim, dtype, 1.0)
        beta = _channel(bias, channels, ndim, dtype, 0.0)
        if group is not None:
            reducer = DistributedReducer.for_forward(xs, axes, group, x.device)
        else:
            reducer = Reducer(axes, xs.size // channels)
        _require_batch(reducer.count, x.shape, group is not None)
        if reducer.count == 0:
            mean = invstd = np.zeros(gamma.shape, xs.dtype)
            y = np.empty_like(xs)
        else:
            y, mean, invstd = _kernels().batch_norm_forward(xs, gamma, beta, xs.dtype.type(eps), reducer)
            if running is not None:
                running.update(mean, invstd, eps, reducer.count)
        ctx.save_for_backward(x, weight)
        # The graph outlives the backward while its output is referenced: it must not hold the default process
        # group, whose destructor would otherwise run at exit after destroy_process_group and abort the process.
        ctx.group = None if group is None else ("world" if group is dist.group.WORLD else group)
        ctx.statistics = (mean, invstd, reducer.count, axes, dtype)
        return torch.from_numpy(y).to(device=x.device, dtype=x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        mean, invstd, count, axes, dtype = ctx.statistics
        group = dist.group.WORLD if ctx.group == "world" else ctx.group
        ctx.statistics = ctx.group = None
        channels, ndim = x.shape[1], x.dim()
        gamma = _channel(weight, channels, ndim, dtype, 1.0)
        dys, xs = _to_numpy(dy, dtype), _to_numpy(x, dtype)
        kernels = _kernels()
        local_count = xs.size // channels
        if count == 0:  # nothing anywhere: empty dx, zero parameter gradients, and nothing to all-reduce
            dx, dgamma, dbeta = np.empty_like(xs), np.zeros_like(mean), np.zeros_like(mean)
        elif group is None or not ctx.needs_input_grad[0]:
            # No dx wanted (or one worker): the local sums are all there is to compute, and no peer waits for them
            # (PyTorch's SyncBatchNorm skips the collective in the same case).
            dx, dgamma, dbeta = kernels.batch_norm_backward(dys, xs, gamma, mean, invstd, Reducer(axes, count))
        else:
            reducer = DistributedReducer(axes, local_count, count, group, x.device)
            dx, _, _ = kernels.batch_norm_backward(dys, xs, gamma, mean, invstd, reducer)
            # This worker's own dgamma and dbeta: the same kernel on its local totals (per-channel arrays only).
            replay = LocalTotals(count, reducer.local_totals, axes)
            blank = np.zeros_like(mean)
            _, dgamma, dbeta = kernels.batch_norm_backward(blank, blank, gamma, mean, invstd, replay)
            if not replay.exhausted:
                raise RuntimeError("the backward kernel's sums did not match the recorded ones")
        dx_tensor = torch.from_numpy(dx).to(device=x.device, dtype=x.dtype) if ctx.needs_input_grad[0] else None
        return (dx_tensor, _parameter_gradient(dgamma, weight, ctx.needs_input_grad[1]),
                _parameter_gradient(dbeta, weight, ctx.needs_input_grad[2]), None, None, None)


def _parameter_gradient(values: np.ndarray, like, wanted: bool):
    if like is None or not wanted:
        return None
    return torch.from_numpy(np.ascontiguousarray(values.reshape(-1))).to(device=like.device, dtype=like.dtype)


class _RunningStatistics(torch.autograd.Function):
    """Eval-mode batch norm: normalise with the running statistics (no reduction, no communication)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps):
        dtype = _compute_dtype(x.dtype)
        channels, ndim = x.shape[1], x.dim()
        xs = _to_numpy(x, dtype)
        gamma = _channel(weight, channels, ndim, dtype, 1.0)
        beta = _channel(bias, channels, ndim, dtype, 0.0)
        rm = _channel(running_mean, channels, ndim, dtype, 0.0)
        rv = _channel(running_var, channels, ndim, dtype, 1.0)
        y = _kernels().batch_norm_inference(xs, gamma, beta, rm, rv, xs.dtype.type(eps))
        ctx.save_for_backward(x, weight)
        ctx.statistics = (rm, rv, eps, dtype)
        return torch.from_numpy(np.ascontiguousarray(y)).to(device=x.device, dtype=x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        rm, rv, eps, dtype = ctx.statistics
        channels, ndim = x.shape[1], x.dim()
        xs, dys = _to_numpy(x, dtype), _to_numpy(dy, dtype)
        gamma = _channel(weight, channels, ndim, dtype, 1.0)
        reducer = Reducer(_axes(ndim), xs.size // channels if channels else 0)
        dx, dgamma, dbeta = _kernels().batch_norm_inference_backward(dys, xs, gamma, rm, rv, xs.dtype.type(eps),
                                                                     reducer)
        dx_tensor = torch.from_numpy(np.ascontiguousarray(dx)).to(device=x.device, dtype=x.dtype)
        return (dx_tensor if ctx.needs_input_grad[0] else None,
                _parameter_gradient(dgamma, weight, ctx.needs_input_grad[1]),
                _parameter_gradient(dbeta, weight, ctx.needs_input_grad[2]), None, None, None)


class _RunningUpdate:
    """Folds a training step's global statistics into the module's running buffers (PyTorch's convention)."""

    def __init__(self, module: SyncBatchNorm):
        self.module = module

    def update(self, mean: np.ndarray, invstd: np.ndarray, eps: float, count: int) -> None:
        m = self.module
        # The biased variance from invstd, in float64 (PyTorch's SyncBatchNorm does the same).
        var = np.maximum(1.0 / np.square(invstd.astype(np.float64)) - eps, 0.0).reshape(-1)
        buffers = (m.running_mean.detach().cpu().numpy(), m.running_var.detach().cpu().numpy())
        if m.momentum is None:
            new_mean, new_var = update_running_stats(*buffers, mean.reshape(-1), var, count, momentum=None,
                                                     convention="cumulative",
                                                     num_batches_tracked=int(m.num_batches_tracked))
        else:
            new_mean, new_var = update_running_stats(*buffers, mean.reshape(-1), var, count,
                                                     momentum=float(m.momentum), convention="torch")
        with torch.no_grad():
            m.running_mean.copy_(torch.from_numpy(np.asarray(new_mean)))
            m.running_var.copy_(torch.from_numpy(np.asarray(new_var)))


class SyncBatchNorm(_BatchNorm):
    r"""Batch norm over the whole data-parallel batch: statistics from every rank of ``process_group``.

    The arguments, parameters (``weight``, ``bias``) and buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) are those of ``torch.nn.SyncBatchNorm``; input of shape (N, C, ...). In training mode
    (and in eval mode without running statistics) the statistics are synchronised when ``torch.distributed`` is
    initialised and the group has more than one rank, exactly when PyTorch's layer synchronises; otherwise this is
    a local batch norm. Module docstring: what crosses the network, uneven and empty batches, devices.

    >>> import torch, bnsym.torch
    >>> layer = bnsym.torch.SyncBatchNorm(3)
    >>> layer(torch.randn(4, 3, 2, 2, dtype=torch.float64)).shape     # no process group: local batch norm
    torch.Size([4, 3, 2, 2])
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, *,
                 bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype,
                         bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        if input.size(1) != self.num_features:
            raise ValueError(f"expected input with {self.num_features} channels (dimension 1), got input of shape "
                             f"{tuple(input.shape)}")
        if not input.is_floating_point():
            raise TypeError(f"expected a floating-point input, got dtype {input.dtype}")

    def _group(self):
        """The process group to synchronise over, or None when there is nothing to synchronise with."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        batch_statistics = self.training or (self.running_mean is None and self.running_var is None)
        if not batch_statistics:
            return _RunningStatistics.apply(input, self.weight, self.bias, self.running_mean, self.running_var,
                                            self.eps)
        group = self._group() if self.training else None  # eval without running statistics stays local
        running = _RunningUpdate(self) if self.training and self.track_running_stats else None
        return _BatchStatistics.apply(input, self.weight, self.bias, self.eps, group, running)

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None) -> torch.nn.Module:
        """Every ``BatchNorm*d`` (and ``torch.nn.SyncBatchNorm``) in ``module`` replaced by this class, sharing its
        parameters and buffers; returns the converted module (a new one when ``module`` itself is a batch norm).

        Unlike ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which always builds ``torch.nn.SyncBatchNorm``,
        the replacement is ``cls``.
        """
        converted = module
        if isinstance(module, _BatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group, bias=module.bias is not None)
            if module.affine:
                with torch.no_grad():
                    converted.weight = module.weight
                    converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted
