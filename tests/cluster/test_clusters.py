"""LocalCluster lifecycle: whatever happens inside, no scheduler or worker process is left."""

import socket

import psutil
import pytest
from distributed import Client

from cluster.clusters import open_cluster


def children() -> set[int]:
    """Our child processes, less multiprocessing's resource tracker, which lives as long as Python."""
    return {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())}


@pytest.fixture
def no_leftovers():
    before = children()
    yield
    left = [psutil.Process(pid) for pid in children() - before]
    gone, alive = psutil.wait_procs(left, timeout=10)
    assert alive == [], f"processes left behind: {[p.cmdline() for p in alive]}"


@pytest.mark.usefixtures("no_leftovers")
def test_success_closes_cluster_and_workers():
    with open_cluster("local") as client:
        assert client.submit(sum, [1, 2]).result() == 3
        assert len(client.scheduler_info()["workers"]) == 2
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
def test_impossible_settings_are_refused_before_anything_starts(kwargs, message):
    before = children()
    with pytest.raises(ValueError, match=message):
        with open_cluster(**kwargs):
            pass
    assert children() == before


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
