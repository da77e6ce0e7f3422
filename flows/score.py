"""The ``score-fleet`` flow: score every device of one hour and commit the hour's predictions."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task

from cluster.clusters import open_cluster
from cluster.config import setting
from flows import report
from flows.dispatch import run_batches
from scoring import layout, models, predictions, telemetry
from scoring.batch import BatchResult, plan, score_batch, unmodelled
from scoring.records import Failure
from scoring.store import Store


@task(retries=2, retry_delay_seconds=[2, 10])
def read_inputs(store: Store, hour: datetime) -> tuple[models.Manifest, list[str]]:
    """The model manifest and the devices reporting in the hour (retried: storage hiccups)."""
    return models.read_manifest(store), telemetry.hour_devices(store, hour)


@task(retries=2, retry_delay_seconds=[2, 10])
def commit_hour(store: Store, hour: datetime, results: list[BatchResult],
                failures: list[Failure]) -> dict[str, Any]:
    """Write the errors file and the commit marker: the hour becomes visible at once."""
    stats = {
        "models_scored": sum(r.scored for r in results),
        "rows": sum(r.rows for r in results),
        "anomalies": sum(r.anomalies for r in results),
        "failed": len(failures),
    }
    parts = [r.part for r in results if r.part]
    return predictions.commit(store, hour, parts, failures, stats)


def _lost_batch(manifest: models.Manifest, names: list[str], exc: BaseException) -> BatchResult:
    """A batch that failed as a whole: every model in it is a failure with the reason."""
    entries = [manifest["models"][n] for n in names]
    reason = f"batch failed: {type(exc).__name__}: {exc}"
    return BatchResult(names, failures=[Failure(e["device"], reason, e["file"], e["tag"]) for e in entries])


@flow(name="score-fleet", log_prints=True)
def score_fleet(
    store: str | None = None,
    hour: str | None = None,
    cluster: str | None = None,
    max_failed_share: float | None = None,
) -> dict[str, Any]:
    """Score one hour (default: the last full hour) with each device's own model.

    Args:
        store: store URL; default ``fleetscore.store``.
        hour: ``YYYY-MM-DDTHH`` in UTC; default the last full hour.
        cluster: cluster kind (``local``, ``address``); default ``fleetscore.cluster.kind``.
        max_failed_share: the run fails above this share of failed devices.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    target = Store(setting("store", store))
    when = layout.parse_hour(hour) if hour else layout.last_full_hour()
    manifest, devices = read_inputs(target, when)
    failures = unmodelled(devices, manifest)
    batches = plan(manifest)
    logger.info("scoring %s: %d models in %d batches, %d devices reporting",
                layout.hour_label(when), len(manifest["models"]), len(batches), len(devices))
    with open_cluster(cluster) as client:
        logger.info("Dask dashboard: %s", client.dashboard_link)
        jobs = [(f"{layout.hour_label(when)}-{i:05d}", (target, when, models.manifest_slice(manifest, names)))
                for i, names in enumerate(batches)]
        results = run_batches(client, score_batch, jobs,
                              lambda i, exc: _lost_batch(manifest, batches[i], exc), logger,
                              retries=setting("scoring.batch-retries"))
        dashboard = client.dashboard_link
        workers = len(client.scheduler_info()["workers"])
    failures += [f for r in results for f in r.failures]
    marker = commit_hour(target, when, results, failures)
    stats = report.model_stats(results)
    summary = report.summary(target, when, marker, failures, stats, time.perf_counter() - started,
                             dashboard, workers)
    report.publish(summary, stats, failures)
    logger.info(report.one_line(summary))
    report.enforce_failure_share(summary, setting("scoring.max-failed-share", max_failed_share))
    return summary
