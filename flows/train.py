"""The ``train-fleet`` flow: fit one model per device on a window and publish models and manifest."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task

from cluster.clusters import open_cluster
from cluster.config import setting
from cluster.hooks import delete_run_cluster
from flows.dispatch import run_batches
from scoring import layout, models, telemetry
from scoring.batch import valid_devices
from scoring.training import TrainResult, train_batch
from scoring.features import GRANULARITIES
from scoring.records import Failure
from scoring.store import Store


@task(retries=2, retry_delay_seconds=[2, 10])
def window_devices(store: Store, hours: list[datetime]) -> list[str]:
    """Every device that reports in some hour of the window."""
    return sorted({d for h in hours for d in telemetry.hour_devices(store, h)})


@flow(name="train-fleet", log_prints=True,
      on_cancellation=[delete_run_cluster], on_crashed=[delete_run_cluster])
def train_fleet(
    start: str,
    end: str,
    store: str | None = None,
    granularity: str = "device",
    cluster: str | None = None,
    devices_per_pack: int | None = None,
    nu: float | None = None,
    gamma: float | None = None,
) -> dict[str, Any]:
    """Fit one model per device (or per sensor) on the hours ``start``..``end`` and publish them.

    The manifest is written last, so scoring runs see the old models or the new, never a mix.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    started = time.perf_counter()
    logger = get_run_logger()
    target = Store(setting("store", store))
    hours = layout.hour_range(layout.parse_hour(start), layout.parse_hour(end))
    devices, failures = valid_devices(window_devices(target, hours))
    size = setting("scoring.devices-per-pack", devices_per_pack)
    shards = [devices[i : i + size] for i in range(0, len(devices), size)]
    jobs = [(f"shard-{i:05d}", (target, hours, shard, i, granularity,
                                     setting("scoring.nu", nu), setting("scoring.gamma", gamma)))
            for i, shard in enumerate(shards)]
    logger.info("training %d devices on %d hours in %d shards", len(devices), len(hours), len(shards))

    def lost(i: int, exc: BaseException) -> TrainResult:
        return TrainResult({}, {}, [Failure(d, f"training failed: {exc}") for d in shards[i]])

    with open_cluster(cluster) as client:
        results = run_batches(client, train_batch, jobs, lost, logger,
                              retries=setting("scoring.batch-retries"))
    failures += [f for r in results for f in r.failures]
    manifest = models.write_manifest(
        target, granularity, layout.span(hours),
        {k: v for r in results for k, v in r.entries.items()},
        {k: v for r in results for k, v in r.packs.items()},
    )
    summary = {
        "window": f"{layout.hour_label(hours[0])}..{layout.hour_label(hours[-1])}",
        "models": len(manifest["models"]),
        "packs": len(manifest["packs"]),
        "failed": len(failures),
        "manifest": target.url_of(layout.MANIFEST),
        "seconds": round(time.perf_counter() - started, 2),
    }
    for failure in failures[:20]:
        logger.warning("not trained: %s", failure)
    logger.info("trained %(models)d models in %(packs)d packs, %(failed)d failed, %(seconds).1fs; "
                "manifest %(manifest)s", summary)
    return summary
