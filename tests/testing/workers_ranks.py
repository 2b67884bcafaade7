"""Functions that tests/testing/test_workers.py runs inside the worker processes (importable by name)."""

import os
import time


def rank_and_sum(value):
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(total)
    return dist.get_rank(), dist.get_world_size(), float(total)


def exit_now(code):
    os._exit(code)


def raise_in_rank_0():
    import torch.distributed as dist

    if dist.get_rank() == 0:
        raise ValueError("planted failure in rank 0")
    return dist.get_rank()


def rank_1_skips_the_collective(seconds):
    """Rank 1 never joins the all-reduce that the others wait in: gloo's timeout must end their wait."""
    import torch
    import torch.distributed as dist

    if dist.get_rank() == 1:
        time.sleep(seconds)
        return "slept"
    dist.all_reduce(torch.ones(1))
    return "reduced"


def sleep(seconds):
    time.sleep(seconds)
    return "slept"
