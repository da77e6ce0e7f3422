"""A real Prefect cancellation of a running flow: the runner kills the flow process, nothing is left."""

import asyncio
import json
import signal
import time
from pathlib import Path

import psutil
import pytest
from prefect import get_client
from prefect.flows import load_flow_from_entrypoint
from prefect.runner import Runner
from prefect.states import Cancelling

from cluster.hooks import delete_run_cluster
from flows.score import score_fleet
from flows.train import train_fleet

pytestmark = pytest.mark.usefixtures("prefect_backend")
ENTRYPOINT = f"{Path(__file__).with_name('cancellable.py')}:hold_cluster"


async def wait_for(check, timeout: float, what: str):
    """Poll ``check`` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)
    return found


async def run_and_cancel(marker: Path):
    """Serve hold-cluster with a Runner, start a run, cancel it once its cluster is up."""
    runner = Runner(name="cancellation-test", query_seconds=1)
    deployment_id = await runner.aadd_flow(load_flow_from_entrypoint(ENTRYPOINT), name="cancellation-test")
    serving = asyncio.create_task(runner.start(webserver=False))
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(deployment_id, parameters={"marker": str(marker)})

        async def cluster_up():
            return marker.exists() and marker.read_text() and json.loads(marker.read_text())

        workers = await wait_for(cluster_up, 90, "the flow's cluster")
        await client.set_flow_run_state(run.id, Cancelling(), force=True)

        async def final_state():
            state = (await client.read_flow_run(run.id)).state
            return state if state.is_final() else None

        state = await wait_for(final_state, 60, "the cancellation")
        logs = await wait_for(lambda: hook_logs(client, run.id), 20, "the hook's log")
    await runner.astop()
    await asyncio.wait_for(serving, 30)
    return workers, state, logs


async def hook_logs(client, flow_run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs if "does not outlive the flow process" in log.message]


@pytest.mark.usefixtures("no_leftovers")
def test_a_cancelled_run_leaves_no_scheduler_or_worker(tmp_path):
    sigterm = signal.getsignal(signal.SIGTERM)  # Runner.start installs its own
    try:
        workers, state, logs = asyncio.run(run_and_cancel(tmp_path / "workers.json"))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert len(workers) == 2
    assert state.is_cancelled(), state
    assert logs, "the on_cancellation hook did not run"
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in workers if psutil.pid_exists(p)], timeout=10)
    assert alive == []


@pytest.mark.parametrize("flow", [score_fleet, train_fleet], ids=lambda f: f.name)
def test_fleet_flows_delete_their_cluster_when_cancelled_or_crashed(flow):
    assert flow.on_cancellation_hooks == [delete_run_cluster]
    assert flow.on_crashed_hooks == [delete_run_cluster]
