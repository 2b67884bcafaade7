"""The reducer of a data-parallel run: each worker sums its shard, one all-reduce adds the shards' totals.

The generated kernels take every sum and the group size M from one reducer object
(:class:`bnsym.runtime.reduce.Reducer`).
:class:`DistributedReducer` has the same members for a batch split over the ranks of a ``torch.distributed``
process group, following the sharded derivation (``derivations/batch_norm.md``, section "Sharded training"):

* ``count`` is the global M, the sum of the workers' counts;
* ``sums(*terms)`` computes the worker's own totals with the local reducer (bnsym's accurate blocked sums), then
  all-reduces the totals of every term of the call in ONE collective (their concatenation, in float64: M and the
  sums of a large batch need more digits than float32 carries), and returns the global totals in the dtype of the
  terms;
* ``parameter_sums`` stays local: in data-parallel training the wrapper (``DistributedDataParallel``) sums the
  parameter gradients, as PyTorch's own SyncBatchNorm leaves them.

The forward pass's first round carries M and sum(x) together (:meth:`DistributedReducer.for_forward`): the kernel
reads M before its first sum, so the reducer is built from a round that has already added both, and answers the
kernel's first call, the sum of x, from it. Every call's local totals are kept (``local_totals``), in order, so
that the per-worker parameter gradients can be replayed from them (:class:`LocalTotals`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from bnsym.runtime.reduce import Reducer

__all__ = ["DistributedReducer", "LocalTotals", "all_reduce_arrays"]


def all_reduce_arrays(arrays, group, device) -> list[np.ndarray]:
    """The element-wise sums over the ranks of ``group`` of ``arrays``, in one collective (in float64, on
    ``device``, the device of the layer's input, so that NCCL gets CUDA tensors); each result keeps the shape and
    dtype of its array."""
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    tensor = torch.from_numpy(flat).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    total = tensor.cpu().numpy()
    out, start = [], 0
    for a in arrays:
        a = np.asarray(a)
        out.append(total[start:start + a.size].reshape(a.shape).astype(a.dtype, copy=False))
        start += a.size
    return out


def _local_sums(local: Reducer, terms) -> tuple[np.ndarray, ...]:
    """The worker's own totals; a worker with an empty batch contributes zeros (and still joins the collective)."""
    results = []
    for term in terms:
        shape = np.broadcast_shapes(*(np.shape(op) for op in term))
        if 0 in shape:
            keep = tuple(1 if i in local.axes else n for i, n in enumerate(shape))
            results.append(np.zeros(keep, dtype=np.result_type(*term)))
        else:
            results.extend(local.sums(tuple(term)))
    return tuple(results)


class DistributedReducer:
    """Sums over the shards of ``group`` (module docstring).

    - ``axes``: the reduced axes of the worker's arrays; ``local_count``: the values per channel it holds.
    - ``count``: the global M (all workers' values per channel).
    - ``group``: the process group (None: the default group); ``device``: where the collectives' tensors live.
    """

    def __init__(self, axes: tuple[int, ...], local_count: int, count: int, group, device,
                 answered: tuple | None = None):
        self.axes = tuple(axes)
        self.parameter_axes: tuple[int, ...] = ()
        self.count = count
        self.group, self.device = group, device
        self.local = Reducer(self.axes, local_count)
        self.local_totals: list[tuple[np.ndarray, ...]] = []
        self._answered = answered  # (the array whose sum round 1 carried, its local total, its global total)

    @classmethod
    def for_forward(cls, x: np.ndarray, axes: tuple[int, ...], group, device) -> DistributedReducer:
        """Round 1 of the sharded forward: M and sum(x) over every worker, in one collective."""
        local_count = x.size // x.shape[1] if x.ndim > 1 and x.shape[1] else 0
        local = Reducer(tuple(axes), local_count)
        (local_sum,) = _local_sums(local, ((x,),))
        total, count = all_reduce_arrays([local_sum, np.array([local_count], dtype=np.float64)], group, device)
        reducer = cls(axes, local_count, int(round(float(count[0]))), group, device,
                      answered=(x, local_sum, total))
        return reducer

    def sums(self, *terms) -> tuple[np.ndarray, ...]:
        if self._answered is not None and len(terms) == 1 and len(terms[0]) == 1 and terms[0][0] is self._answered[0]:
            _, local, total = self._answered
            self._answered = None
            self.local_totals.append((local,))
            return (total,)
        local = _local_sums(self.local, terms)
        self.local_totals.append(local)
        return tuple(all_reduce_arrays(local, self.group, self.device))

    def parameter_sums(self, *terms) -> tuple[np.ndarray, ...]:
        return self.local.parameter_sums(*terms)


class LocalTotals:
    """A reducer that answers a kernel's sums with totals recorded earlier, in the same order.

    Running a kernel again with the local totals of a :class:`DistributedReducer` gives, for every output that
    depends on the fields only through the sums (batch norm's dgamma and dbeta, by the sharded derivation's
    ``local_contribution``), the worker's own contribution, without touching the full arrays again.
    """

    def __init__(self, count: int, recorded: list[tuple[np.ndarray, ...]], axes: tuple[int, ...]):
        self.count = count
        self.axes = tuple(axes)
        self.parameter_axes: tuple[int, ...] = ()
        self._recorded = list(recorded)

    def sums(self, *terms) -> tuple[np.ndarray, ...]:
        if not self._recorded:
            raise RuntimeError("the kernel asked for more sums than were recorded")
        totals = self._recorded.pop(0)
        if len(totals) != len(terms):
            raise RuntimeError(f"the kernel asked for {len(terms)} sums where {len(totals)} were recorded")
        return totals

    def parameter_sums(self, *terms):
        raise RuntimeError("batch norm's kernels need no parameter sums")

    @property
    def exhausted(self) -> bool:
        return not self._recorded
