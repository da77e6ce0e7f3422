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

from cluster.config import setting


def delete_run_cluster(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation`` / ``on_crashed`` hook: delete what the run created on Azure, whatever its age."""
    logger = flow_run_logger(flow_run, flow)
    kind = (flow_run.parameters or {}).get("cluster") or setting("cluster.kind")
    if kind != "azure":
        logger.info("run %s (%s): a %s cluster does not outlive the flow process", flow_run.id, state.name, kind)
        return
    from cluster.azure import FLOW_RUN_TAG  # imported here: the azure extra is optional
    from cluster.sweep import report, sweep_configured

    found, failed = sweep_configured({FLOW_RUN_TAG: str(flow_run.id)}, older_than="0", dry_run=False)
    for line in report(found, failed, dry_run=False):
        logger.info(line)
    if failed:
        raise RuntimeError(f"{len(failed)} resources of run {flow_run.id} are left: run `fleetscore sweep`")
