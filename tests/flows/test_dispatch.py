"""Batches mapped over a real cluster: results in order, failures turned into results, bounded progress."""

import logging
import time

import pytest
from distributed import Client, LocalCluster
from prefect import flow

from flows.dispatch import PROGRESS_LINES, run_batches
from flows.progress import BatchProgress


def _square(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x * x


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def test_results_in_batch_order_failures_as_results_and_a_bounded_progress_log(client, caplog):
    logger = logging.getLogger("test-dispatch")
    batches = [(f"b{i:02d}", (i,)) for i in range(45)]
    with caplog.at_level(logging.INFO, logger="test-dispatch"), BatchProgress(client, 45, "h", show_bar=False) as bar:
        results = run_batches(client, _square, batches, lambda i, exc: f"lost {i}: {exc}", logger, retries=0,
                              on_done=bar.update)
    assert results == ["lost 7: seven" if i == 7 else i * i for i in range(45)]
    done = [r.getMessage() for r in caplog.records if " done (" in r.getMessage()]
    assert len(done) == 15 <= PROGRESS_LINES  # every third batch of 45, the last one included
    assert done[-1].startswith("batch 45/45 done") and done[0].startswith("batch 3/45 done")
    assert [r.levelname for r in caplog.records if "b07 failed" in r.getMessage()] == ["WARNING"]
    assert bar.peak_workers == 1


def test_a_few_batches_each_log_a_line(client, caplog):
    with caplog.at_level(logging.INFO, logger="test-dispatch"):
        run_batches(client, _square, [("a", (1,)), ("b", (2,))], str, logging.getLogger("test-dispatch"), retries=0)
    assert sorted(r.getMessage()[:14] for r in caplog.records) == ["batch 1/2 done", "batch 2/2 done"]


def test_the_bar_is_drawn_in_a_run_not_started_from_a_deployment(client, prefect_backend):
    @flow
    def local_run() -> bool:
        with BatchProgress(client, 1, "h") as progress:
            return not progress.bar.disable

    assert local_run()
    with BatchProgress(client, 1, "h") as progress:  # no flow run at all: a plain script
        assert not progress.bar.disable


def _held(dask_scheduler) -> int:
    """Results the cluster keeps in memory."""
    return sum(ts.state == "memory" for ts in dask_scheduler.tasks.values())


def test_a_result_leaves_the_cluster_once_the_flow_has_read_it(client):
    """Workers stay flat in the fleet size: none keeps the results of the batches the flow has read."""
    total, done, held = 30, [], []

    def on_done() -> None:  # called after each result is read; the last time, count what the cluster still keeps
        done.append(1)
        if len(done) == total:
            deadline = time.monotonic() + 10
            while client.run_on_scheduler(_held) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            held.append(client.run_on_scheduler(_held))

    results = run_batches(client, _square, [(f"r{i:02d}", (i + 10,)) for i in range(total)], str,
                          logging.getLogger("test-dispatch"), retries=0, on_done=on_done)
    assert results == [(i + 10) ** 2 for i in range(total)]
    assert len(held) == 1 and held[0] <= 1  # at most the last one read; the 29 before it were released
