"""PyTorch on one intra-op thread while an adapter calls it."""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["torch_one_thread"]


@contextmanager
def torch_one_thread():
    """Run torch on one intra-op thread, restoring the caller's setting after. The checker's arrays are small:
    waking intra-op threads costs more than the work, and on a loaded 2-core machine it made each call 100x
    slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
