"""Deployments of fleetscore's flows: ``score-fleet`` every hour, ``backfill-fleet`` on demand,
``maintain-tables`` every night.

``fleetscore serve`` serves them from one process (no work pool needed);
``prefect.yaml`` declares the same three for a Docker work pool.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from flows.backfill import backfill_fleet
from flows.maintenance import maintain_tables
from flows.score import score_fleet

HOURLY = "hourly"
BACKFILL = "on-demand"
NIGHTLY = "nightly"
DEFAULT_CRON = "5 * * * *"
"""Five minutes past each hour, in UTC: late telemetry of the hour that just ended has landed."""
MAINTENANCE_CRON = "35 2 * * *"
"""02:35 UTC: away from the hourly runs' commits, after the day before has been scored."""
TAGS = ["fleetscore"]


def _given(parameters: dict[str, Any]) -> dict[str, Any]:
    """Deployment defaults only for what was given: the rest falls back to ``fleetscore.*`` settings."""
    return {k: v for k, v in parameters.items() if v is not None}


def hourly(cron: str | None = None, **parameters: Any) -> RunnerDeployment:
    """``score-fleet`` on an hourly cron in UTC; each run scores the full hour before its slot.

    Args:
        cron: when runs start, in UTC; default :data:`DEFAULT_CRON`.
        parameters: defaults for the runs: ``store``, ``cluster``, ``adapt_minimum``,
            ``adapt_maximum``, ``granularity``... (``None`` values are left out).
    """
    return score_fleet.to_deployment(
        HOURLY, schedules=[Cron(cron or DEFAULT_CRON, timezone="UTC")], parameters=_given(parameters), tags=TAGS,
        description="Scores the last full hour of the fleet; runs are named after the hour they score.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def on_demand(**parameters: Any) -> RunnerDeployment:
    """``backfill-fleet`` without a schedule: started from the UI or ``prefect deployment run``."""
    return backfill_fleet.to_deployment(
        BACKFILL, parameters=_given(parameters), tags=TAGS,
        description="Scores a range of hours on one cluster, skipping committed hours unless forced.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def nightly(store: str | None = None) -> RunnerDeployment:
    """``maintain-tables`` once a day: compact the days before, vacuum (``fleetscore.tables``)."""
    return maintain_tables.to_deployment(
        NIGHTLY, schedules=[Cron(MAINTENANCE_CRON, timezone="UTC")], parameters=_given({"store": store}), tags=TAGS,
        description="Compacts the tables' small files of the days before and vacuums files no version needs.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_fleet(cron: str | None = None, **parameters: Any) -> None:
    """Register the three deployments and run their flow runs from this process until interrupted."""
    serve(hourly(cron, **parameters), on_demand(**parameters), nightly(parameters.get("store")))
