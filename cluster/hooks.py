"""Prefect flow hooks that delete a run's cluster when its flow process is cancelled or crashes.

When Prefect cancels a run, its runner kills the flow process; ``open_cluster``
then closes the cluster as the process unwinds, but a process killed outright
closes nothing. These hooks run afterwards, in the runner's process (or in the
flow's own, when nothing supervises it), so they cannot reach the cluster object:
they find the run's Azure resources by the ``fleetscore-flow-run`` tag instead.
A LocalCluster needs nothing: its worker processes exit with their parent.
"""

from __future__ import annotations

from typing import Any

from prefect.logging.loggers import flow_run_logger

from cluster.clusters import CLUSTER_KINDS
from cluster.config import setting


def delete_run_cluster(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation`` / ``on_crashed`` hook: delete what the run created on its cloud, whatever its age.

    What to delete is the cluster kind's ``cleanup`` (for ``azure``: every resource
    tagged with the flow run id); an unknown kind never started anything.
    """
    logger = flow_run_logger(flow_run, flow)
    kind = (flow_run.parameters or {}).get("cluster") or setting("cluster.kind")
    cleanup = getattr(CLUSTER_KINDS.get(kind), "cleanup", None)
    if cleanup is None:
        logger.info("run %s (%s): a %s cluster does not outlive the flow process", flow_run.id, state.name, kind)
        return
    cleanup(str(flow_run.id), logger.info)
