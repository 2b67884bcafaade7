"""bnsym on PyTorch: :class:`SyncBatchNorm`, batch norm synchronised over a ``torch.distributed`` process group,
built on bnsym's generated kernels. Needs PyTorch (``pip install -e ".[torch]"``); ``import bnsym`` does not
import this package."""

from bnsym.torch.sync_batch_norm import SyncBatchNorm

__all__ = ["SyncBatchNorm"]
