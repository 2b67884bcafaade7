"""bnsym.torch.SyncBatchNorm over 2 and 3 gloo processes on 127.0.0.1 equals one process with the whole batch:
forward, backward and running statistics to 1e-12 in float64 with uneven batches, a one-sample worker and an empty
one; its collectives are those of the derived communication plan; DistributedDataParallel training equals
one-process training with torch.nn.BatchNorm2d.

One group of workers per size for the whole module (starting one costs seconds); every call is bounded by the
group's timeout, and a worker that fails or hangs fails the test with a message (bnsym.testing.workers).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bnsym.symbolic import sharded  # noqa: E402
from bnsym.symbolic.layers import derivation  # noqa: E402
from bnsym.testing.workers import WorkerGroup  # noqa: E402
from tests.torch import ranks  # noqa: E402

TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def groups():
    made = {}

    def get(size):
        if size not in made:
            made[size] = WorkerGroup(size, timeout=120, collective_timeout=60).start()
        return made[size]

    yield get
    for group in made.values():
        group.close()


def _reference_layer(channels, ndim, momentum=0.1):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[ndim]
    return cls(channels, momentum=momentum, dtype=torch.float64)


def _close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCE, atol=TOLERANCE * scale, err_msg=what)


def _problem(sizes, tail, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.normal(0, 1, (n, *tail)) * rng.uniform(0.5, 3, (1, tail[0]) + (1,) * (len(tail) - 1)) + 5
    channels = tail[0]
    return (x, rng.normal(size=x.shape), rng.normal(1, 0.5, channels), rng.normal(0, 1, channels),
            rng.normal(0, 1, channels), rng.uniform(0.5, 2, channels))


def _split(a, sizes):
    return [np.ascontiguousarray(part) for part in np.split(a, np.cumsum(sizes)[:-1])]


CASES = [  # (workers, batch size of each, (C, *spatial), momentum)
    (3, (5, 1, 0), (3, 4, 2), 0.1),
    (3, (2, 3, 4), (2,), 0.3),
    (2, (1, 6), (3, 5), None),
    (2, (0, 3), (2, 2, 2), 0.1),
]


@pytest.mark.parametrize("workers, sizes, tail, momentum", CASES, ids=lambda c: str(c).replace(" ", ""))
def test_one_step_equals_one_process(groups, workers, sizes, tail, momentum):
    x, dy, gamma, beta, running_mean, running_var = _problem(sizes, tail)
    batches_before = 2
    tasks = [({"x": xs, "dy": dys, "gamma": gamma, "beta": beta, "eps": 1e-5,
               "running": (running_mean, running_var, momentum, batches_before)},)
             for xs, dys in zip(_split(x, sizes), _split(dy, sizes))]
    results = groups(workers).run(ranks.layer_step, tasks)

    layer = _reference_layer(tail[0], x.ndim, momentum)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(gamma))
        layer.bias.copy_(torch.from_numpy(beta))
        layer.running_mean.copy_(torch.from_numpy(running_mean))
        layer.running_var.copy_(torch.from_numpy(running_var))
        layer.num_batches_tracked.fill_(batches_before)
    xt = torch.from_numpy(x).requires_grad_()
    y = layer(xt)
    y.backward(torch.from_numpy(dy))

    _close(np.concatenate([r["y"] for r in results]), y.detach().numpy(), "y")
    _close(np.concatenate([r["dx"] for r in results]), xt.grad.numpy(), "dx")
    # Each worker returns its own dgamma and dbeta; the data-parallel wrapper sums them.
    _close(sum(r["dgamma"] for r in results), layer.weight.grad.numpy(), "dgamma summed over workers")
    _close(sum(r["dbeta"] for r in results), layer.bias.grad.numpy(), "dbeta summed over workers")
    for k, r in enumerate(results):
        _close(r["running_mean"], layer.running_mean.numpy(), f"running_mean of worker {k}")
        _close(r["running_var"], layer.running_var.numpy(), f"running_var of worker {k}")
        assert r["y"].shape == (sizes[k], *tail)


def test_collectives_are_the_derived_plan(groups):
    """Forward: one all-reduce of C + 1 numbers, then one of C; backward: one of 2C, as the sharded derivation
    says (communication_plan); no backward collective when no dx is wanted, as in PyTorch."""
    sizes, channels = (2, 1, 0), 3
    x, dy, *_ = _problem(sizes, (channels, 2))
    tasks = [({"x": a, "dy": b},) for a, b in zip(_split(x, sizes), _split(dy, sizes))]
    forward_plan = sharded.communication_plan(sharded.sharded_forward(derivation("batch_norm")))
    backward_plan = sharded.communication_plan((), sharded.sharded_backward(derivation("batch_norm")).values(),
                                               known=(sharded.TOTAL_COUNT,))
    expected_forward = [r.per_channel * channels + r.per_worker for r in forward_plan]
    expected_backward = [r.per_channel * channels + r.per_worker for r in backward_plan]
    assert expected_forward == [channels + 1, channels] and expected_backward == [2 * channels]
    for result in groups(3).run(ranks.step_with_collectives, tasks):
        assert result["forward"] == expected_forward
        assert result["backward"] == expected_backward
    no_dx = groups(3).run(ranks.step_with_collectives, [(task, False) for (task,) in tasks])
    assert all(r["backward"] == [] for r in no_dx)
    xt = torch.from_numpy(x)
    layer = _reference_layer(channels, x.ndim)
    layer(xt).backward(torch.from_numpy(dy))
    _close(sum(r["dgamma"] for r in no_dx), layer.weight.grad.numpy(), "dgamma without dx")


def test_eval_mode_communicates_nothing(groups):
    sizes = (3, 1)
    x, dy, _, _, running_mean, running_var = _problem(sizes, (2, 3))
    tasks = [({"x": a, "dy": b, "running_mean": running_mean, "running_var": running_var},)
             for a, b in zip(_split(x, sizes), _split(dy, sizes))]
    results = groups(2).run(ranks.eval_step, tasks)
    layer = _reference_layer(2, x.ndim).eval()
    with torch.no_grad():
        layer.running_mean.copy_(torch.from_numpy(running_mean))
        layer.running_var.copy_(torch.from_numpy(running_var))
    xt = torch.from_numpy(x).requires_grad_()
    y = layer(xt)
    y.backward(torch.from_numpy(dy))
    assert all(r["collectives"] == [] for r in results)
    _close(np.concatenate([r["y"] for r in results]), y.detach().numpy(), "eval y")
    _close(np.concatenate([r["dx"] for r in results]), xt.grad.numpy(), "eval dx")
    _close(sum(r["dgamma"] for r in results), layer.weight.grad.numpy(), "eval dgamma")


def test_process_group_scopes_the_statistics(groups):
    """Ranks 0 and 1 synchronise with each other; rank 2, alone in its group, normalises its own batch."""
    sizes = (2, 3, 4)
    x, *_ = _problem(sizes, (2,))
    parts = _split(x, sizes)
    results = groups(3).run(ranks.subgroup_step, [({"x": p}, [[0, 1], [2]]) for p in parts])
    for members, got in (([0, 1], np.concatenate([results[0]["y"], results[1]["y"]])), ([2], results[2]["y"])):
        layer = _reference_layer(2, 2)
        expected = layer(torch.from_numpy(np.concatenate([parts[k] for k in members]))).detach().numpy()
        _close(got, expected, f"y of group {members}")


@pytest.mark.parametrize("workers, steps", [
    (2, [(3, 5), (1, 4), (6, 2)]),
    (3, [(2, 1, 3), (3, 0, 2), (1, 4, 1)]),
], ids=["2 workers", "3 workers, one with one sample, one empty"])
def test_data_parallel_training_equals_one_process(groups, workers, steps):
    rng = np.random.default_rng(1)
    lr = 0.1
    batches = [(rng.normal(2, 3, (sum(sizes), 2, 4, 3)), rng.normal(size=(sum(sizes), 2))) for sizes in steps]
    totals = [sum(sizes) for sizes in steps]
    tasks = []
    for k in range(workers):
        shards = [(_split(x, sizes)[k], _split(t, sizes)[k]) for (x, t), sizes in zip(batches, steps)]
        tasks.append((shards, totals, lr))
    results = groups(workers).run(ranks.ddp_training, tasks)

    net = ranks.model()
    optimiser = torch.optim.SGD(net.parameters(), lr=lr)
    for (x, target), total in zip(batches, totals):
        optimiser.zero_grad()
        ranks.training_loss(net, torch.from_numpy(x), torch.from_numpy(target), total).backward()
        optimiser.step()
    expected = {name: value.detach().numpy() for name, value in net.state_dict().items()}
    for k, state in enumerate(results):
        assert set(state) == set(expected)
        for name, value in expected.items():
            _close(state[name], value, f"{name} of worker {k} after {len(steps)} steps")


@pytest.mark.slow
def test_the_readme_torchrun_example_runs():
    """examples/ddp_sync_batch_norm.py under torchrun, two processes: trains, and exits cleanly (PyTorch's gloo
    worker threads, freeing a collective made during backward after the interpreter began to shut down, aborted
    the processes at exit in about one run in seven on a busy machine; docs/data-parallel.md)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(root / "examples" / "ddp_sync_batch_norm.py")], cwd=root, env=environment,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 2: running mean" in result.stdout
