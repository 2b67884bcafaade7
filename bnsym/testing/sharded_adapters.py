"""Built-in adapters of the sharded protocol (:mod:`bnsym.testing.sharded`): ``bnsym-torch``, ``torch-sync``, ``jax``.

- ``bnsym-torch``: :class:`bnsym.torch.SyncBatchNorm` in K worker processes joined by gloo on 127.0.0.1
  (:class:`bnsym.testing.workers.WorkerGroup`), shard k in rank k; gradients by autograd.
- ``torch-sync``: ``torch.nn.SyncBatchNorm`` the same way, on the GPU of each rank. PyTorch's layer refuses CPU
  tensors ("SyncBatchNorm expected input tensor to be on GPU ..."): without CUDA the adapter asks the layer once,
  in the workers, and reports its properties as skipped with PyTorch's own message.
- ``jax``: ``flax.linen.BatchNorm(axis_name="batch")`` under ``jax.shard_map`` over K host CPU devices
  (``--xla_force_host_platform_device_count``), gradients by ``jax.vjp`` inside the map, so that each device's
  dgamma and dbeta are its own contribution. Equal shards only: Flax averages the per-device means with
  ``lax.pmean``, an unweighted mean, so shards of different sizes (padded and excluded by Flax's ``mask``) get the
  unweighted mean of means, and NaN where a shard is empty; the checker gives this adapter equal shards and says
  so in the report (``jax_implementation(K, masked=True)`` is the uneven variant, which the check rejects).

The rank-side function (:func:`torch_rank_step`) lives here, importable by the workers. :func:`load` turns a CLI
target into a :class:`~bnsym.testing.sharded.ShardedImplementation`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from bnsym.testing.adapters import resolve
from bnsym.testing.implementation import TargetError
from bnsym.testing.protocols import DEFAULT_LAYER
from bnsym.testing.sharded import ShardedImplementation, not_shardable_reason, shardable

__all__ = ["BNSYM_SYNC_BATCH_NORM", "BUILTIN", "TORCH_SYNC_BATCH_NORM", "TorchLayer", "jax_implementation", "load",
           "torch_implementation", "torch_rank_step"]


# ----- PyTorch, in K gloo processes -----

@dataclass(frozen=True)
class TorchLayer:
    """A PyTorch data-parallel layer class the workers build: ``module.attribute`` (constructed as
    ``torch.nn.SyncBatchNorm`` is), whether it runs on the rank's GPU when there is one (``on_gpu``), and the name
    of the target in reports (``title``, with ``{shards}``)."""

    module: str
    attribute: str
    on_gpu: bool
    title: str

    def build(self, channels: int, eps: float, momentum, dtype, device):
        import importlib

        layer_class = getattr(importlib.import_module(self.module), self.attribute)
        return layer_class(channels, eps=eps, momentum=momentum, dtype=dtype, device=device)


#: bnsym's SyncBatchNorm, on the CPU (its kernels are NumPy).
BNSYM_SYNC_BATCH_NORM = TorchLayer("bnsym.torch", "SyncBatchNorm", False,
                                   "bnsym.torch.SyncBatchNorm over {shards} gloo processes")
#: PyTorch's SyncBatchNorm, on the GPU of each rank (it refuses CPU tensors).
TORCH_SYNC_BATCH_NORM = TorchLayer("torch.nn", "SyncBatchNorm", True,
                                   "torch.nn.SyncBatchNorm over {shards} processes")


def torch_rank_step(layer: TorchLayer, task: dict) -> dict:
    """One training step of ``layer`` on this rank's shard, in a worker.

    ``task`` has ``x``, ``gamma``, ``beta``, ``eps`` and optionally ``dy`` (then the backward runs too) and
    ``running`` = (running_mean, running_var, momentum, num_batches_tracked). Returns ``y`` and, as requested,
    ``dx``, ``dgamma``, ``dbeta`` (this rank's parameter gradients), ``running_mean``, ``running_var``; or
    ``{"unavailable": message}`` when PyTorch's layer refuses the device.
    """
    import torch
    import torch.distributed as dist

    x = np.asarray(task["x"])
    dtype = torch.from_numpy(x[:0]).dtype
    device = torch.device("cpu")
    if layer.on_gpu and torch.cuda.is_available():
        device = torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
    running = task.get("running")
    momentum = running[2] if running is not None else 0.1
    module = layer.build(x.shape[1], task["eps"], momentum, dtype, device)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.asarray(task["gamma"])))
        module.bias.copy_(torch.from_numpy(np.asarray(task["beta"])))
        if running is not None:
            module.running_mean.copy_(torch.from_numpy(np.asarray(running[0])))
            module.running_var.copy_(torch.from_numpy(np.asarray(running[1])))
            module.num_batches_tracked.fill_(int(running[3]))
    xt = torch.from_numpy(x).to(device).requires_grad_(task.get("dy") is not None)
    try:
        y = module(xt)
    except ValueError as error:
        if "expected input tensor to be on GPU" in str(error):
            return {"unavailable": f"PyTorch refuses to run it here: {error}"}
        raise
    out = {"y": y.detach().cpu().numpy()}
    if task.get("dy") is not None:
        y.backward(torch.from_numpy(np.asarray(task["dy"])).to(device))
        out.update(dx=xt.grad.cpu().numpy(), dgamma=module.weight.grad.cpu().numpy(),
                   dbeta=module.bias.grad.cpu().numpy())
    if running is not None:
        out.update(running_mean=module.running_mean.cpu().numpy(), running_var=module.running_var.cpu().numpy())
    return out


class _TorchShards:
    """The sharded protocol on K worker processes, one shard each (module docstring)."""

    def __init__(self, layer: TorchLayer, shards: int, timeout: float = 120.0):
        from bnsym.testing.workers import WorkerGroup

        self.layer = layer
        self.name = layer.title.format(shards=shards)
        self.shards = shards
        self.group = WorkerGroup(shards, timeout=timeout)
        self.equal_shards = False
        self._unavailable: str | None = None
        self._probed = False

    @property
    def unavailable(self) -> str | None:
        """PyTorch's reason when a GPU layer cannot run here (no CUDA), found by asking the layer once.

        Without CUDA, one worker is enough to hear it: the layer checks the device before the size of the group.
        """
        if self.layer.on_gpu and not self._probed:
            import torch

            self._probed = True
            if not torch.cuda.is_available():
                from bnsym.testing.workers import WorkerGroup

                task = {"x": np.arange(4.0).reshape(2, 2), "gamma": np.ones(2), "beta": np.zeros(2), "eps": 1e-5}
                with WorkerGroup(1, timeout=self.group.timeout) as one:
                    (result,) = one.run(torch_rank_step, [(self.layer, task)])
                self._unavailable = result.get("unavailable")
        return self._unavailable

    def _steps(self, xs, gamma, beta, eps, dys=None, running=None) -> list[dict]:
        tasks = []
        for k, x in enumerate(xs):
            task = {"x": np.ascontiguousarray(x), "gamma": np.asarray(gamma), "beta": np.asarray(beta),
                    "eps": float(eps)}
            if dys is not None:
                task["dy"] = np.ascontiguousarray(dys[k])
            if running is not None:
                task["running"] = running
            tasks.append((self.layer, task))
        return self.group.run(torch_rank_step, tasks)

    def sharded_forward(self, xs, gamma, beta, eps):
        return [r["y"] for r in self._steps(xs, gamma, beta, eps)]

    def sharded_backward(self, dys, xs, gamma, beta, eps):
        results = self._steps(xs, gamma, beta, eps, dys=dys)
        return [r["dx"] for r in results], [r["dgamma"] for r in results], [r["dbeta"] for r in results]

    def sharded_train_forward(self, xs, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        running = (np.asarray(running_mean), np.asarray(running_var), momentum, int(num_batches_tracked))
        results = self._steps(xs, gamma, beta, eps, running=running)
        return ([r["y"] for r in results], [r["running_mean"] for r in results],
                [r["running_var"] for r in results])

    def close(self) -> None:
        self.group.close()


def torch_implementation(layer: TorchLayer):
    """A factory for ``layer`` over K processes: ``factory(shards)``."""
    def build(shards: int) -> _TorchShards:
        import torch  # noqa: F401  (the adapter needs PyTorch here too: fail early with a clear TargetError)

        return _TorchShards(layer, shards)
    return build


# ----- JAX, over K host CPU devices -----

def _host_devices(shards: int):
    """K CPU devices for shard_map: XLA_FLAGS asks XLA for them, which works only before JAX starts its backend."""
    flag = f"--xla_force_host_platform_device_count={shards}"
    if "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    import jax

    devices = jax.devices("cpu")
    if len(devices) < shards:
        raise RuntimeError(f"the jax adapter needs {shards} host devices, but JAX has {len(devices)}: start Python "
                           f"with XLA_FLAGS={flag} (JAX fixes its devices when it starts)")
    return devices[:shards]


class _JaxShards:
    """The sharded protocol for flax.linen.BatchNorm(axis_name="batch") under jax.shard_map (module docstring).

    With ``masked=True`` it takes uneven shards the only way Flax can: each padded to the largest, the padding
    excluded by Flax's ``mask``. That is not a built-in target: it shows why the built-in one takes equal shards
    (Flax's pmean of the masked means is the unweighted mean of means, which the check rejects).
    """

    unavailable = None

    def __init__(self, shards: int, masked: bool = False):
        self.equal_shards = not masked
        self.masked = masked
        devices = _host_devices(shards)
        import jax

        jax.config.update("jax_enable_x64", True)
        import flax.linen as nn
        import jax.numpy as jnp
        from jax.sharding import Mesh, PartitionSpec

        self.shards = shards
        self.name = f"flax.linen.BatchNorm(axis_name) under jax.shard_map over {shards} host devices" + (
            ", uneven shards padded and masked" if masked else "")
        self._jnp = jnp
        mesh = Mesh(np.array(devices), ("batch",))
        batch, replicated = PartitionSpec("batch"), PartitionSpec()

        def layer_step(x, gamma, beta, eps, running_mean, running_var, momentum, dy, valid):
            layer = nn.BatchNorm(use_running_average=False, axis=1, epsilon=eps, momentum=momentum,
                                 axis_name="batch", use_fast_variance=False, dtype=x.dtype, param_dtype=x.dtype)
            mask = jnp.broadcast_to(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape) if masked else None

            def apply(x, gamma, beta):
                variables = {"params": {"scale": gamma, "bias": beta},
                             "batch_stats": {"mean": running_mean, "var": running_var}}
                y, updated = layer.apply(variables, x, mask=mask, mutable=["batch_stats"])
                return y, updated["batch_stats"]

            # The VJP inside the map: the gradients of this device's output, with respect to its own copy of
            # gamma and beta, are its contributions (what a data-parallel wrapper would then sum).
            y, vjp, stats = jax.vjp(apply, x, gamma, beta, has_aux=True)
            dx, dgamma, dbeta = vjp(dy)
            return y, dx, dgamma[None], dbeta[None], stats["mean"][None], stats["var"][None]

        mapped = jax.shard_map(layer_step, mesh=mesh,
                               in_specs=(batch, replicated, replicated, replicated, replicated, replicated,
                                         replicated, batch, batch),
                               out_specs=(batch, batch, batch, batch, batch, batch), check_vma=False)
        self._step = jax.jit(mapped)

    def _run(self, xs, gamma, beta, eps, dys=None, running=None, momentum=0.99):
        jnp = self._jnp
        sizes = [len(x) for x in xs]
        if len(xs) != self.shards or (len(set(sizes)) != 1 and not self.masked):
            raise ValueError(f"the jax adapter takes {self.shards} shards of equal size, got sizes {sizes}")
        width = max(max(sizes), 1)
        dys = [np.zeros_like(x) for x in xs] if dys is None else dys
        x, dy = (np.concatenate([np.concatenate([a, np.zeros((width - len(a),) + a.shape[1:], a.dtype)])
                                 for a in arrays]) for arrays in (xs, dys))
        valid = np.concatenate([np.arange(width) < size for size in sizes])
        channels = x.shape[1]
        if running is None:
            running = (np.zeros(channels, x.dtype), np.ones(channels, x.dtype))
        scalar = jnp.promote_types(x.dtype, jnp.float32)  # float16 cannot hold eps = 1e-5; Flax reduces in float32
        out = self._step(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta), jnp.asarray(eps, scalar),
                         jnp.asarray(running[0]), jnp.asarray(running[1]), jnp.asarray(momentum, scalar),
                         jnp.asarray(dy), jnp.asarray(valid))
        y, dx, dgamma, dbeta, means, variances = (np.asarray(a) for a in out)
        unpadded = [slice(k * width, k * width + size) for k, size in enumerate(sizes)]
        return ([y[s] for s in unpadded], [dx[s] for s in unpadded], list(dgamma), list(dbeta), list(means),
                list(variances))

    def sharded_forward(self, xs, gamma, beta, eps):
        return self._run(xs, gamma, beta, eps)[0]

    def sharded_backward(self, dys, xs, gamma, beta, eps):
        _, dx, dgamma, dbeta, _, _ = self._run(xs, gamma, beta, eps, dys=dys)
        return dx, dgamma, dbeta

    def sharded_train_forward(self, xs, gamma, beta, eps, running_mean, running_var, momentum, num_batches_tracked):
        if momentum is None:
            raise NotImplementedError("flax.linen.BatchNorm has no cumulative average (momentum=None)")
        y, _, _, _, means, variances = self._run(xs, gamma, beta, eps, running=(running_mean, running_var),
                                                 momentum=momentum)
        return y, means, variances

    def close(self) -> None:
        pass


def jax_implementation(shards: int, masked: bool = False) -> _JaxShards:
    return _JaxShards(shards, masked)


#: The built-in sharded targets: name -> factory(shards).
BUILTIN = {"bnsym-torch": torch_implementation(BNSYM_SYNC_BATCH_NORM),
           "torch-sync": torch_implementation(TORCH_SYNC_BATCH_NORM), "jax": jax_implementation}
#: Targets of the unsharded check whose data-parallel counterparts are other targets: the hint of a usage error.
_SHARDED_COUNTERPARTS = {"torch": "torch-sync (torch.nn.SyncBatchNorm) and bnsym-torch (bnsym.torch.SyncBatchNorm)"}


def load(target: str, shards: int, layer: str = DEFAULT_LAYER) -> ShardedImplementation:
    """The sharded implementation named by a CLI target: ``bnsym-torch``, ``torch-sync``, ``jax`` (for ``shards``
    workers), or ``path/to/file.py:NAME`` / ``package.module:NAME`` following the sharded protocol
    (:mod:`bnsym.testing.sharded`). Raises :class:`~bnsym.testing.implementation.TargetError` with a message for
    the user otherwise."""
    if not shardable(layer):
        raise TargetError(not_shardable_reason(layer))
    if target in BUILTIN:
        try:
            built = BUILTIN[target](shards)
        except ImportError as error:
            raise TargetError(f"the {target} adapter needs its library installed: {error}") from None
        except RuntimeError as error:
            raise TargetError(f"the {target} adapter cannot run: {error}") from None
        return ShardedImplementation.wrap(built, name=built.name, layer=layer)
    if target in _SHARDED_COUNTERPARTS:
        raise TargetError(f"with --shards, the targets for {target} are {_SHARDED_COUNTERPARTS[target]}")
    return ShardedImplementation.wrap(resolve(target), name=target, layer=layer)
