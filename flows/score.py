"""The ``score-fleet`` flow: score every device of one hour and commit the hour's predictions."""

from __future__ import annotations

import contextvars
import gc
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import pandas as pd
from distributed import Client
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from cluster.clusters import open_cluster, size_for_hour
from cluster.config import setting
from cluster.hooks import delete_run_cluster
from flows import report, rules
from flows.dispatch import run_batches
from flows.hours import score_run_name, target_hour
from flows.limits import one_run_per_hour
from flows.progress import BatchProgress
from flows.retries import STORAGE_TASK
from flows.trust import model_policy, require_signature, signing_key
from scoring import layout, models, predictions, telemetry
from scoring.batch import BatchResult, batch_jobs, plan, score_batch
from scoring.records import Failure
from scoring.store import Store

T = TypeVar("T")


@task(**STORAGE_TASK)
def read_manifest(store: Store, model_version: str | None) -> models.Manifest:
    """The model manifest, checked against its signature before any model is read (retried: storage hiccups)."""
    return models.read_manifest(store, model_version, signing_key(), require_signature())


@task(**STORAGE_TASK)
def read_inputs(store: Store, hour: datetime) -> telemetry.HourScan:
    """The hour's files, checked from their footers (retried: storage hiccups, never bad files).

    Submitted, not called: it runs in Prefect's task thread while the cluster starts.
    """
    return telemetry.scan_hour(store, hour)


@task(**STORAGE_TASK)
def commit_hour(store: Store, hour: datetime, model_version: str, results: list[BatchResult], failures: list[Failure],
                scan: telemetry.HourScan, device_hours: pd.DataFrame) -> dict[str, Any]:
    """Replace the hour in every table (predictions, device hours, errors, quarantine), recording this run.

    The batches wrote the predictions and quarantine files; the commit takes them as they are.
    """
    stats = {
        "flow_run_id": flow_run.id,
        "model_version": model_version,
        "models_scored": sum(r.scored for r in results),
        "rows": sum(r.rows for r in results),
        "anomalies": sum(r.anomalies for r in results),
        "failed": len(failures),
    }
    parts = [r.part for r in results if r.part]
    quarantined = [r.quarantine for r in results if r.quarantine]
    return predictions.commit(store, hour, parts, failures, stats, quarantined,
                              device_hours, scan.files, setting("tables.commit-attempts"))


def adapt_bounds(minimum: int | None, maximum: int | None) -> dict[str, int] | None:
    """Adaptive bounds from flow parameters over ``fleetscore.cluster.adapt``; ``None`` keeps the setting."""
    if minimum is None and maximum is None:
        return None
    given = {k: v for k, v in (("minimum", minimum), ("maximum", maximum)) if v is not None}
    return (setting("cluster.adapt") or {}) | given


def check_granularity(manifest: models.Manifest, granularity: str | None) -> None:
    """Refuse to score when the deployment expects other models than those published.

    Granularity is fixed when models are trained; a deployment that names one
    catches a retrain at the other granularity before it silently changes what is scored.
    """
    if granularity and manifest["granularity"] != granularity:
        raise ValueError(
            f"the published models are per {manifest['granularity']}, the run expects per {granularity}: "
            f"retrain with `fleetscore train --granularity {granularity}` or change the parameter"
        )


class ClusterClosedBehind:
    """``open_cluster`` whose teardown can be handed to another thread once the batches are done.

    The commit and the report need no cluster, so they run while it closes (workers
    stopped, or VMs deleted: a fixed cost of every run). A cluster not handed over, after
    an error say, closes on leaving the block as before. It is opened and closed in a
    context of its own: Dask's client marks itself current in a context variable that
    only the context that set it may reset, and the closing thread cannot enter the flow's.
    """

    def __init__(self, kind: str | None, address: str | None, bounds: dict[str, int] | None) -> None:
        self._kind, self._address, self._bounds = kind, address, bounds
        self._own = contextvars.copy_context()
        self._opened = ExitStack()
        self._closing: Future[None] | None = None

    def __enter__(self) -> ClusterClosedBehind:
        opening = open_cluster(self._kind, address=self._address, adapt=self._bounds)
        self.client: Client = self._own.run(self._opened.enter_context, opening)
        return self

    def close_behind(self, pool: ThreadPoolExecutor) -> Future[None]:
        """Close the cluster in ``pool``'s thread; wait on the future before the run ends."""
        self._closing = pool.submit(self._own.run, self._opened.pop_all().close)
        return self._closing

    def __exit__(self, *exc_info: Any) -> None:
        if self._closing is None:
            self._own.run(self._opened.__exit__, *exc_info)


@contextmanager
def spared_from_collector(read: Callable[[], T]) -> Iterator[T]:
    """``read()`` with the cycle collector paused, then all that exists kept from its collections in the block.

    Once the manifest is read, the flow process holds about two million objects at 100,000
    devices, none in a cycle, and each full collection walked them all: the first one, set off
    by planning the batches, made ``plan`` take 0.8 s instead of 0.17 s. The collector stays
    paused until they are frozen: Prefect's code that ends the reading task (its result record)
    set off that first collection otherwise, 0.09 s of Prefect's time. Frozen objects are still
    freed by reference counting; unfreezing at the end hands them back to the collector, so that
    a process running many flows (tests, a backfill's hours) keeps nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        value = read()
        gc.freeze()
    finally:
        if enabled:
            gc.enable()
    try:
        yield value
    finally:
        gc.unfreeze()


def _lost_batch(manifest: models.Manifest, names: list[str], exc: BaseException) -> BatchResult:
    """A batch that failed as a whole: every model in it is a failure with the reason."""
    entries = [manifest["models"][n] for n in names]
    reason = f"batch failed: {type(exc).__name__}: {exc}"
    return BatchResult(names, failures=[Failure(e["device"], reason, e["file"], e["tag"]) for e in entries])


@flow(name="score-fleet", flow_run_name=score_run_name, log_prints=True,
      on_cancellation=[delete_run_cluster], on_crashed=[delete_run_cluster])
def score_fleet(
    store: str | None = None,
    hour: str | None = None,
    cluster: str | None = None,
    max_failed_share: float | None = None,
    address: str | None = None,
    adapt_minimum: int | None = None,
    adapt_maximum: int | None = None,
    granularity: str | None = None,
    model_version: str | None = None,
    step: str | None = None,
    max_fill: int | None = None,
    min_coverage: float | None = None,
) -> dict[str, Any]:
    """Score one hour (default: the last full hour) with each device's own model.

    Args:
        store: store URL; default ``fleetscore.store``.
        hour: ``YYYY-MM-DDTHH`` in UTC; default the last full hour before the run's
            scheduled start, so a late scheduled run still scores its own hour.
        cluster: cluster kind (``local``, ``address``); default ``fleetscore.cluster.kind``.
        max_failed_share: the run fails above this share of failed devices.
        address: scheduler address for ``cluster="address"``; default ``fleetscore.cluster.address``.
        adapt_minimum: fewest workers of the adaptive cluster; default ``fleetscore.cluster.adapt``.
        adapt_maximum: most workers of the adaptive cluster; default ``fleetscore.cluster.adapt``, or if
            that is null sized for the hour's batches (``fleetscore.cluster.sizing``).
        granularity: ``device`` or ``sensor`` to check the published models against; default: any.
        model_version: the model version to score with, e.g. an older one; default the live one.
        step: the devices' time grid, e.g. ``5s``; default ``fleetscore.telemetry.step``.
        max_fill: steps a missing tag may be filled from its previous reading; default ``fleetscore.telemetry.max-fill``.
        min_coverage: a device with a lower share of complete steps fails; default ``fleetscore.telemetry.min-coverage``.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    target = Store(setting("store", store))
    when = target_hour(hour)
    with ThreadPoolExecutor(1, thread_name_prefix="cluster-teardown") as teardown, ExitStack() as held:
        with one_run_per_hour(when):  # runs of one hour queue: hourly, backfill, manual rerun (flows/limits.py)
            grid = rules.grid([when], step, max_fill, min_coverage)
            manifest = held.enter_context(spared_from_collector(partial(read_manifest, target, model_version)))
            check_granularity(manifest, granularity)
            scanning = read_inputs.submit(target, when)  # the hour's footers are read while the cluster starts
            batches = plan(manifest, setting("scoring.packs-per-batch"))
            bounds, sized = size_for_hour(cluster, len(batches), adapt_bounds(adapt_minimum, adapt_maximum))
            logger.info("cluster size: %s", sized)
            with ClusterClosedBehind(cluster, address, bounds) as opened:
                client = opened.client
                scan = scanning.result()
                failures = list(scan.unreadable)
                for failure in scan.unreadable:
                    logger.warning("unreadable telemetry file, the rest of the hour is scored: %s", failure)
                logger.info("scoring %s: %d models in %d batches, %d files", layout.hour_label(when),
                            len(manifest["models"]), len(batches), len(scan.files))
                logger.info("Dask dashboard: %s", client.dashboard_link)
                policy, rule = model_policy(), rules.alert_rule()
                jobs = [(f"{layout.hour_label(when)}-{i:05d}", (job,))
                        for i, job in enumerate(batch_jobs(target, grid, manifest, batches, scan, rule, policy))]
                with BatchProgress(client, len(jobs), layout.hour_label(when)) as progress:
                    results = run_batches(client, score_batch, jobs,
                                          lambda i, exc: _lost_batch(manifest, batches[i], exc), logger,
                                          retries=setting("scoring.batch-retries"), on_done=progress.update)
                dashboard = client.dashboard_link
                closed = opened.close_behind(teardown)
            failures += [f for r in results for f in r.failures]
            device_hours = report.device_hours(results)
            marker = commit_hour(target, when, manifest["version"], quote(results), quote(failures), scan,
                                 quote(device_hours))  # quoted: Prefect does not walk them looking for futures
        summary = report.summary(target, when, marker, failures, device_hours, time.perf_counter() - started,
                                 dashboard, progress.peak_workers)
        summary["model_version"] = manifest["version"]
        report.publish(summary, device_hours, failures, report.anomaly_map(when, device_hours))
        report.emit_alerts(summary, device_hours)
        logger.info(report.one_line(summary))
        closed.result()  # a failed teardown fails the run, once the hour is committed and reported
    report.enforce_failure_share(summary, setting("scoring.max-failed-share", max_failed_share))
    return summary
