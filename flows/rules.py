"""The hour's alignment and alert rules, from fleetscore's settings (``telemetry`` and ``alert``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from dask.utils import parse_timedelta

from cluster.config import setting
from scoring.alerts import AlertRule
from scoring.align import Grid


def grid(hours: list[datetime], step: str | None = None, max_fill: int | None = None,
         min_coverage: float | None = None) -> Grid:
    """The grid of some hours; arguments given (flow parameters) win over ``fleetscore.telemetry.*``."""
    return Grid.over(
        hours,
        step=timedelta(seconds=parse_timedelta(setting("telemetry.step", step))),
        max_fill=int(setting("telemetry.max-fill", max_fill)),
        min_coverage=float(setting("telemetry.min-coverage", min_coverage)),
    )


def alert_rule() -> AlertRule:
    """The persistence rule of ``fleetscore.alert``."""
    return AlertRule(setting("alert.anomalous-steps"), setting("alert.within-steps"))
