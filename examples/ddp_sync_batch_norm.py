"""Data-parallel training on CPU with bnsym's SyncBatchNorm: two processes on one machine, gloo over loopback.

    torchrun --standalone --nproc_per_node=2 examples/ddp_sync_batch_norm.py

Each process trains on its own part of every batch (the parts need not be the same size); the batch norms use the
statistics of the whole batch, and DistributedDataParallel averages the gradients.
"""

import time

import torch
import torch.distributed as dist

import bnsym.torch

dist.init_process_group("gloo")  # torchrun provides the rank, the world size and the rendezvous address
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)  # the same initial model in every process
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
model = bnsym.torch.SyncBatchNorm.convert_sync_batchnorm(model)  # every BatchNorm*d becomes bnsym's
model = torch.nn.parallel.DistributedDataParallel(model)
optimiser = torch.optim.SGD(model.parameters(), lr=0.1)

for step in range(3):
    torch.manual_seed(100 + step)
    x, target = torch.randn(12, 3, 8, 8), torch.randn(12, 2)     # the whole batch of this step
    mine = slice(0, 5) if rank == 0 else slice(5, 12)            # uneven parts: 5 and 7 samples
    loss = torch.nn.functional.mse_loss(model(x[mine]), target[mine], reduction="sum") * world / len(x)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    if rank == 0:
        print(f"step {step}: running mean of the batch norm {model.module[1].running_mean[:3].tolist()}")
dist.destroy_process_group()
# PyTorch's gloo backend frees each finished collective on a thread of its own, and a collective started during a
# backward pass holds a Python object, so that thread needs the GIL to free it. A thread that asks for the GIL once
# the interpreter has begun to shut down aborts the whole process ("terminate called without an active
# exception"). Give it the GIL for a moment before the script ends.
time.sleep(0.2)
