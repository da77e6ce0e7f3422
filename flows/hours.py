"""Which hour a ``score-fleet`` run scores, and the run name that says so in the Prefect UI."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect.runtime import flow_run

from scoring import layout


def target_hour(hour: str | None) -> datetime:
    """The hour to score: ``hour`` if given, else the last full hour before the run's scheduled start.

    Measuring from the scheduled start, not the clock, keeps a late run (a busy
    runner, a restart) on the hour its slot was for instead of skipping one.
    Outside a flow run, and for ad-hoc runs, the scheduled start is now.
    """
    if hour:
        return layout.parse_hour(hour)
    scheduled = flow_run.scheduled_start_time
    return layout.last_full_hour(datetime.fromtimestamp(scheduled.timestamp(), timezone.utc))


def score_run_name() -> str:
    """``score-2026-11-27T10``: run history reads as a list of hours, whoever started the run."""
    return f"score-{layout.hour_label(target_hour(flow_run.parameters.get('hour')))}"
