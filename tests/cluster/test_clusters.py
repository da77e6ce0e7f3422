"""LocalCluster lifecycle: whatever happens inside, no scheduler or worker process is left."""

import socket
import threading
import time

import pytest
from distributed import Client

from cluster.clusters import open_cluster

# A scheduler preload (the text of a module) whose setup never returns: a scheduler that never comes up.
NEVER_STARTS = "import asyncio\nasync def dask_setup(scheduler):\n    await asyncio.sleep(3600)\n"


@pytest.mark.usefixtures("no_leftovers")
def test_success_closes_cluster_and_workers():
    with open_cluster("local") as client:
        assert client.submit(sum, [1, 2]).result() == 3
        client.wait_for_workers(2, timeout=30)
    assert client.status == "closed"


@pytest.mark.usefixtures("no_leftovers")
def test_a_failing_task_still_closes_everything():
    with pytest.raises(ZeroDivisionError):
        with open_cluster("local") as client:
            client.submit(lambda: 1 / 0).result()
    assert client.status == "closed"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "kubernetes"}, "unknown cluster kind 'kubernetes'"),
        ({"kind": "address", "address": None}, "needs a scheduler address"),
        ({"kind": "local", "adapt": {"minimum": 3, "maximum": 1}}, "impossible"),
    ],
)
def test_impossible_settings_are_refused_before_anything_starts(kwargs, message, child_pids):
    before = child_pids()
    with pytest.raises(ValueError, match=message):
        with open_cluster(**kwargs):
            pass
    assert child_pids() == before


def test_a_scheduler_that_never_answers_times_out_with_a_clear_error():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never speaks Dask
    try:
        with pytest.raises(TimeoutError, match="no Dask scheduler answered .* within 2s"):
            with open_cluster("address", address=f"tcp://127.0.0.1:{silent.getsockname()[1]}", start_timeout=2):
                pass
    finally:
        silent.close()


def test_an_existing_scheduler_is_used_and_left_running():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, dashboard_address=None) as existing:
        with open_cluster("address", address=existing.scheduler_address) as client:
            assert client.submit(sum, [2, 2]).result() == 4
        with Client(existing) as again:
            assert len(again.scheduler_info()["workers"]) == 1


@pytest.mark.usefixtures("no_leftovers")
def test_a_scheduler_that_never_starts_is_a_timeout_not_a_hang():
    threads = threading.active_count()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="scheduler did not come up within 2s"):
        with open_cluster("local", start_timeout=2, scheduler_kwargs={"preload": [NEVER_STARTS]}):
            pytest.fail("the cluster cannot have started")
    assert time.monotonic() - started < 15
    time.sleep(0.5)
    assert threading.active_count() <= threads, "the cluster's event-loop thread was left running"


@pytest.mark.usefixtures("no_leftovers")
def test_workers_that_never_join_are_a_timeout_and_the_cluster_is_closed():
    # adapt with minimum 0 and no work never asks for a worker: the first one never joins.
    with pytest.raises(TimeoutError, match="no Dask worker joined the local cluster"):
        with open_cluster("local", adapt={"minimum": 0, "maximum": 1}, n_workers=0, start_timeout=2):
            pytest.fail("no worker can have joined")
