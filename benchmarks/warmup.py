"""A Prefect run before the timed ones, in a process of its own, to warm the temporary server.

The test harness's server answers its first request of some kinds slowly (``/admin/version``
0.2 to 0.3 s, reading a flow run 0.3 s; a few ms afterwards): lazy work that the long-running
server of a deployment did once, long before the hour. A small flow making the same kinds of
request (flow run, task run, concurrency slot, artifact, event) takes it off the timed run.
Running it in another process leaves the benchmark's own process as cold as a deployment's
new flow process: its imports, Prefect clients and first requests are still timed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone

import prefect.settings
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from flows.limits import one_run_per_hour

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
    emit_event(event="fleetscore.bench.warm-up", resource={"prefect.resource.id": "fleetscore.bench"})


def warm_server() -> None:
    """Run :func:`warm_up` against the current Prefect API (the harness's) in a new process."""
    env = os.environ | {"PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value())}
    done = subprocess.run([sys.executable, "-m", "benchmarks.warmup"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the Prefect warm-up run failed ({done.returncode}):\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    warm_up()
