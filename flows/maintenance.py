"""The ``maintain-tables`` flow: compact the last days' small files, then vacuum what no version needs.

Every scoring batch adds one small data file per hour, so a day of a large
fleet is thousands of files that every reader opens; compaction rewrites each
past day's files of every table into a few large ones (a new table version,
the same rows). Vacuum then deletes files that no version younger than the
retention needs, and files no run ever committed (a run killed before its commit).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

from dask.utils import parse_timedelta
from prefect import flow, get_run_logger, task

from cluster.config import setting
from flows.retries import STORAGE_RETRIES
from scoring import tables
from scoring.store import Store


@task(**STORAGE_RETRIES)
def compact_day(store: Store, day: date) -> dict[str, dict[str, Any]]:
    """Compact one day of every table (retried on storage hiccups; a commit of that day that wins fails it)."""
    return tables.compact(store, day)


@task(**STORAGE_RETRIES)
def vacuum_tables(store: Store, retention: timedelta) -> dict[str, list[str]]:
    return tables.vacuum(store, retention)


@flow(name="maintain-tables", log_prints=True)
def maintain_tables(store: str | None = None, days: int | None = None, retention: str | None = None,
                    today: str | None = None) -> dict[str, Any]:
    """Compact the ``days`` days before ``today`` in every table, then vacuum.

    Today is left alone: its hours are still being committed, and compacting them
    would only make those commits retry.

    Args:
        store: store URL; default ``fleetscore.store``.
        days: past days to compact; default ``fleetscore.tables.compact-days``.
        retention: age such as ``7d`` below which replaced files are kept (time travel,
            and runs still writing); default ``fleetscore.tables.vacuum-retention``.
        today: ``YYYY-MM-DD`` UTC, the first day not compacted; default the current day.
    """
    logger = get_run_logger()
    target = Store(setting("store", store))
    first = date.fromisoformat(today) if today else datetime.now(timezone.utc).date()
    keep = timedelta(seconds=parse_timedelta(setting("tables.vacuum-retention", retention)))
    compacted = {}
    for day in (first - timedelta(days=n) for n in range(1, setting("tables.compact-days", days) + 1)):
        metrics = compact_day(target, day)
        compacted[f"{day}"] = {name: m["numFilesRemoved"] for name, m in metrics.items()}
        logger.info("%s: %s", day, ", ".join(f"{name} {m['numFilesRemoved']} files into {m['numFilesAdded']}"
                                             for name, m in metrics.items()) or "no tables yet")
    removed = vacuum_tables(target, keep)
    logger.info("vacuum (retention %s): %s", keep,
                ", ".join(f"{name} {len(files)} files deleted" for name, files in removed.items()) or "no tables yet")
    return {"compacted_files": compacted, "vacuumed_files": {name: len(files) for name, files in removed.items()}}
