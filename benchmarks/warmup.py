"""A Prefect run before the timed ones, in a process of its own, to warm the temporary server.

The test harness's server answers its first request of some kinds slowly (``/admin/version``
0.2 to 0.3 s, reading a flow run 0.3 s; a few ms afterwards): lazy work that the long-running
server of a deployment did once, long before the hour. A small flow making the same kinds of
request (flow run, task run, concurrency slot, artifact, event) takes it off the timed run.
Running it in another process leaves the benchmark's own process as cold as a deployment's
new flow process: its imports, Prefect clients and first requests are still timed.

The server then stores that run's events and logs in the background, in batches, on the
cores the timed run needs: a flow started at once took 5.2 s at 10,000 devices, one started
8 s later 4.2 s. So the warm-up waits until the server has stored the run's last event,
as a long-running server has long since done.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import prefect.settings
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventNameFilter

from flows.limits import one_run_per_hour

EVENT = "fleetscore.bench.warm-up"
HOUR = datetime(2000, 1, 1, tzinfo=timezone.utc)
"""An hour no benchmark scores: the timed run still creates its own hour's limit, as an hourly run does."""


@task
def _step() -> None:
    """A task run."""


@flow(name="fleetscore-bench-warm-up")
def warm_up() -> None:
    with one_run_per_hour(HOUR):
        _step()
    create_markdown_artifact("warm-up", key="fleetscore-bench-warm-up")
    emit_event(event=EVENT, resource={"prefect.resource.id": "fleetscore.bench"})


def warm_server() -> None:
    """Run :func:`warm_up` against the current Prefect API (the harness's) in a new process."""
    env = os.environ | {"PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value())}
    done = subprocess.run([sys.executable, "-m", "benchmarks.warmup"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the Prefect warm-up run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    _wait_for_event(timeout=60)


def _wait_for_event(timeout: float) -> None:
    """Return once the server has stored the warm-up's event, its last step."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not client.read_events(filter=EventFilter(event=EventNameFilter(name=[EVENT])), limit=1).events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Prefect server did not store the warm-up's event within {timeout:.0f}s")
            time.sleep(0.2)


if __name__ == "__main__":
    warm_up()
