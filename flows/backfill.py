"""The ``backfill-fleet`` flow: score a range of hours on one cluster, skipping committed hours."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task

from cluster.clusters import CLUSTER_KINDS, open_cluster
from cluster.config import setting
from flows.retries import STORAGE_RETRIES
from flows.score import adapt_bounds, score_fleet
from scoring import layout, predictions, tables, telemetry
from scoring.store import Store


SHAREABLE = tuple(name for name, kind in CLUSTER_KINDS.items() if kind.shared)
"""Cluster kinds whose scheduler a subflow can join by address alone. An ``azure`` cluster's
TLS credentials are made for its one client and cannot travel as a parameter."""


class BackfillFailed(RuntimeError):
    """Some hours of the range did not complete; the others are committed."""


@task(**STORAGE_RETRIES)
def hours_to_score(store: Store, hours: list[datetime], force: bool, changed: bool = False) -> list[datetime]:
    """The hours not committed; with ``changed``, also those whose telemetry files changed since their
    commit (a late file, a re-delivered one); with ``force``, all of them."""
    def due(hour: datetime) -> bool:
        if not changed:  # the tables' transaction ids alone: no need to read the commit's record in the log
            return tables.committed(store, hour) is None
        commit = predictions.committed(store, hour)  # a record past the log's retention has no inputs: rescore
        return commit is None or telemetry.inputs_changed(store, hour, commit.get("inputs", []))
    return list(hours) if force else [h for h in hours if due(h)]


@contextmanager
def _cluster_for_hours(kind: str | None, address: str | None, minimum: int | None,
                       maximum: int | None) -> Iterator[dict[str, Any]]:
    """The cluster parameters of the hours' subflows, on one cluster for the range where possible.

    A ``local`` cluster is opened here and joined by address; an ``address``
    cluster is joined as it is; other kinds open one cluster per hour.
    """
    kind = setting("cluster.kind", kind)
    if kind not in SHAREABLE:
        yield {"cluster": kind, "address": address, "adapt_minimum": minimum, "adapt_maximum": maximum}
        return
    with open_cluster(kind, adapt=adapt_bounds(minimum, maximum)) as client:
        yield {"cluster": "address", "address": client.scheduler.address}


@flow(name="backfill-fleet", flow_run_name="backfill-{start}..{end}", log_prints=True)
def backfill_fleet(
    start: str,
    end: str,
    store: str | None = None,
    force: bool = False,
    changed: bool = False,
    cluster: str | None = None,
    address: str | None = None,
    adapt_minimum: int | None = None,
    adapt_maximum: int | None = None,
    granularity: str | None = None,
) -> dict[str, Any]:
    """Score every hour from ``start`` to ``end`` (inclusive) that is not committed yet.

    Each hour is a ``score-fleet`` subflow run, named after its hour and with
    its own artifacts. With a ``local`` (or ``address``) cluster one cluster
    serves the whole range: the subflows join it by address instead of starting
    their own, so a week of hours does not pay a week of cluster start-ups
    (``azure`` clusters, whose credentials cannot be shared, start one per hour).
    A failed hour does not stop the others; the backfill fails at the end,
    naming the hours to rerun.

    Args:
        start: first hour, ``YYYY-MM-DDTHH`` UTC.
        end: last hour, ``YYYY-MM-DDTHH`` UTC.
        store: store URL; default ``fleetscore.store``.
        force: rescore committed hours too.
        changed: rescore committed hours whose telemetry files changed since they were committed
            (added, removed, rewritten: what the commit recorded against what the folder holds now).
        cluster: cluster kind (``local``, ``azure``, ``address``); default ``fleetscore.cluster.kind``.
        address: scheduler address for ``cluster="address"``.
        adapt_minimum: fewest workers of the adaptive cluster; default ``fleetscore.cluster.adapt``.
        adapt_maximum: most workers of the adaptive cluster; default ``fleetscore.cluster.adapt``.
        granularity: ``device`` or ``sensor`` to check the published models against.
    """
    logger = get_run_logger()
    target = Store(setting("store", store))
    hours = layout.hour_range(layout.parse_hour(start), layout.parse_hour(end))
    todo = hours_to_score(target, hours, force, changed)
    logger.info("backfill %s..%s: %d hours, %d to score, %d skipped as committed and unchanged",
                start, end, len(hours), len(todo), len(hours) - len(todo))
    states = {}
    if todo:
        with _cluster_for_hours(cluster, address, adapt_minimum, adapt_maximum) as on:
            for hour in todo:
                states[layout.hour_label(hour)] = score_fleet(
                    store=target.url, hour=layout.hour_label(hour), granularity=granularity, return_state=True, **on)
    failed = sorted(label for label, state in states.items() if not state.is_completed())
    if failed:
        raise BackfillFailed(f"hours {', '.join(failed)} failed (see their score-fleet runs); "
                             f"the other hours are committed, rerun the range to retry only the failed ones")
    return {"hours": len(hours), "scored": sorted(states), "skipped": len(hours) - len(todo)}
