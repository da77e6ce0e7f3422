"""One run of an hour at a time: a Prefect global concurrency limit per hour.

The hourly ``score-fleet`` run, a ``backfill --force`` (whose hours are
``score-fleet`` subflows) and a manual rerun of the same hour queue on the
limit ``fleetscore-hour-<hour>`` instead of racing. The Delta tables would
refuse the loser's commit anyway (:class:`scoring.tables.HourConflict`); the
limit makes it wait for the winner instead of scoring the hour for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from scoring import layout

PREFIX = "fleetscore-hour-"


def limit_name(hour: datetime) -> str:
    """``fleetscore-hour-2026-11-27T10``: the limit runs of that hour share."""
    return f"{PREFIX}{layout.hour_label(hour)}"


def _ensure_limit(name: str) -> None:
    """Create the hour's limit (one slot) unless it exists: Prefect only acquires slots of existing limits."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run of the hour created it first
                pass


@contextmanager
def one_run_per_hour(hour: datetime) -> Iterator[None]:
    """Hold the hour's only slot while the block runs; another run of the hour waits for it."""
    name = limit_name(hour)
    _ensure_limit(name)
    with concurrency(name, occupy=1, strict=True):
        yield
