"""A flow that opens a LocalCluster and holds it until it is cancelled; run by test_cancellation's runner.

It carries the same hooks as score-fleet and train-fleet. Not a test module: its
runner loads it from this file in a fresh process, as a deployment would.
"""

import json
import os
import time
from pathlib import Path

from prefect import flow

from cluster.clusters import open_cluster
from cluster.hooks import delete_run_cluster


@flow(name="hold-cluster", on_cancellation=[delete_run_cluster], on_crashed=[delete_run_cluster])
def hold_cluster(marker: str) -> None:
    """Open a two-worker LocalCluster, write its worker pids to ``marker``, then wait to be cancelled."""
    with open_cluster("local", adapt={"minimum": 2, "maximum": 2}, dashboard_address=None) as client:
        client.wait_for_workers(2, timeout=60)
        Path(marker).write_text(json.dumps(list(client.run(os.getpid).values())))
        time.sleep(600)
