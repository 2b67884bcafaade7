"""What tests/torch/test_sync_batch_norm.py runs inside each worker process (importable by name), and the small
convolutional model that the data-parallel test trains in the workers and in the test process alike."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from bnsym.testing.sharded_adapters import BNSYM_SYNC_BATCH_NORM, torch_rank_step
from bnsym.torch import SyncBatchNorm

__all__ = ["ddp_training", "eval_step", "layer_step", "model", "step_with_collectives", "subgroup_step",
           "training_loss"]


def layer_step(task: dict) -> dict:
    return torch_rank_step(BNSYM_SYNC_BATCH_NORM, task)


class _Collectives:
    """Counts torch.distributed.all_reduce calls and their sizes while active."""

    def __init__(self):
        self.sizes: list[int] = []
        self._original = None

    def __enter__(self):
        self._original = dist.all_reduce

        def counted(tensor, *args, **kwargs):
            self.sizes.append(tensor.numel())
            return self._original(tensor, *args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._original


def step_with_collectives(task: dict, input_grad: bool = True) -> dict:
    """A forward and a backward of bnsym's SyncBatchNorm, with the sizes of the all-reduces of each."""
    x = torch.from_numpy(task["x"])
    layer = SyncBatchNorm(x.shape[1], dtype=x.dtype)
    x.requires_grad_(input_grad)
    with _Collectives() as forward:
        y = layer(x)
    with _Collectives() as backward:
        y.backward(torch.from_numpy(task["dy"]))
    return {"forward": forward.sizes, "backward": backward.sizes, "dgamma": layer.weight.grad.numpy()}


def eval_step(task: dict) -> dict:
    """Eval mode with running statistics: no collective at all."""
    x = torch.from_numpy(task["x"]).requires_grad_()
    layer = SyncBatchNorm(x.shape[1], dtype=x.dtype).eval()
    with torch.no_grad():
        layer.running_mean.copy_(torch.from_numpy(task["running_mean"]))
        layer.running_var.copy_(torch.from_numpy(task["running_var"]))
    with _Collectives() as calls:
        y = layer(x)
        y.backward(torch.from_numpy(task["dy"]))
    return {"y": y.detach().numpy(), "dx": x.grad.numpy(), "dgamma": layer.weight.grad.numpy(),
            "collectives": calls.sizes}


def subgroup_step(task: dict, members: list[list[int]]) -> dict:
    """The layer with ``process_group`` = this rank's group among ``members`` (every rank creates every group)."""
    groups = [dist.new_group(ranks) for ranks in members]
    mine = next(g for g, ranks in zip(groups, members) if dist.get_rank() in ranks)
    x = torch.from_numpy(task["x"])
    layer = SyncBatchNorm(x.shape[1], dtype=x.dtype, process_group=mine)
    return {"y": layer(x).detach().numpy(), "running_var": layer.running_var.numpy()}


# ----- data-parallel training -----

def model(seed: int = 0) -> torch.nn.Module:
    """A small float64 convolutional network with two batch norms."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2),
    ).double()


def training_loss(net, x, target, total: int, weight: float = 1.0):
    """The squared error summed over the samples given, times ``weight / total``: with total = the whole batch's
    size and weight = the number of workers, DistributedDataParallel's average of the workers' gradients is the
    gradient of the whole batch's mean loss."""
    return ((net(x) - target) ** 2).sum() * (weight / total)


def ddp_training(batches: list[tuple[np.ndarray, np.ndarray]], total_sizes: list[int], lr: float) -> dict:
    """A few SGD steps of :func:`model` with bnsym's SyncBatchNorm under DistributedDataParallel; this rank's shard
    of each step is ``batches[step]``. Returns the parameters and buffers afterwards."""
    net = SyncBatchNorm.convert_sync_batchnorm(model())
    assert sum(isinstance(m, SyncBatchNorm) for m in net.modules()) == 2
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    optimiser = torch.optim.SGD(ddp.parameters(), lr=lr)
    for (x, target), total in zip(batches, total_sizes):
        optimiser.zero_grad()
        loss = training_loss(ddp, torch.from_numpy(x), torch.from_numpy(target), total, dist.get_world_size())
        loss.backward()
        optimiser.step()
    return {name: value.detach().numpy().copy() for name, value in net.state_dict().items()}
