"""WorkerGroup: K processes in one gloo group on the loopback interface; a worker that raises, dies or hangs fails the
call with a message naming the rank, within the time limit, and leaves no process behind."""

import time

import pytest

from bnsym.testing.workers import WorkerError, WorkerGroup, loopback_interface
from tests.testing import workers_ranks as ranks

pytest.importorskip("torch.distributed")


# Short limits: every failure below must surface in seconds, not at the default minute. A failure shuts a group
# down and the next call starts it again, so the failures that need no peer run in a group of one (cheaper).

@pytest.fixture(scope="module")
def group():
    with WorkerGroup(2, timeout=20, collective_timeout=3) as workers:
        yield workers


@pytest.fixture(scope="module")
def single():
    with WorkerGroup(1, timeout=20) as workers:
        yield workers


def _processes(group):
    return [w.process for w in group._workers]


def test_ranks_form_one_group(group):
    assert group.run(ranks.rank_and_sum, [(1,), (2,)]) == [(0, 2, 3.0), (1, 2, 3.0)]


def test_an_exception_names_the_rank_and_the_error(single):
    with pytest.raises(WorkerError, match=r"(?s)worker 0 raised .*ValueError: planted failure in rank 0"):
        single.run(ranks.raise_in_rank_0)


def test_a_dying_worker_fails_the_call_with_its_exit_status(single):
    processes = _processes(single.start())
    assert single.run(ranks.rank_and_sum, [(1,)]) == [(0, 1, 1.0)], "the group starts again after a failure"
    with pytest.raises(WorkerError, match="(?s)worker 0 .*exited with status 7"):
        single.run(ranks.exit_now, [(7,)])
    assert all(p.poll() is not None for p in processes), "every worker of the failed group is gone"


def test_a_call_that_never_returns_is_cut_at_the_time_limit(single):
    start = time.monotonic()
    processes = _processes(single.start())
    with pytest.raises(WorkerError, match=r"workers \[0\] did not run .* within 2 s"):
        single.run(ranks.sleep, [(60,)], timeout=2)
    assert time.monotonic() - start < 10
    assert all(p.poll() is not None for p in processes)


def test_a_collective_that_times_out_fails_with_gloo_s_message(group):
    start = time.monotonic()
    with pytest.raises(WorkerError, match="worker 0 raised") as info:
        group.run(ranks.rank_1_skips_the_collective, [(30,), (30,)])
    assert time.monotonic() - start < 15, "the collective timeout (3 s) must end the wait"
    assert "imed out" in str(info.value) or "Timeout" in str(info.value), str(info.value)[:500]


def test_close_leaves_no_process(single):
    processes = _processes(single.start())
    single.close()
    assert all(p.poll() is not None for p in processes)
    assert not single.started


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 0}, "size must be a positive integer"),
    ({"size": 2, "timeout": 0}, "timeout must be a positive number"),
], ids=["size", "timeout"])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorkerGroup(**kwargs)


def test_arguments_for_every_rank(group):
    with pytest.raises(ValueError, match="one per rank"):
        group.run(ranks.rank_and_sum, [(1,)])  # checked before anything is sent: the group stays up


def test_the_loopback_interface_is_found():
    assert loopback_interface().startswith("lo")
