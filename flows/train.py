"""The ``train-fleet`` flow: fit one model per device on a window and publish them as a new model version."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task

from cluster.clusters import open_cluster
from cluster.config import setting
from cluster.hooks import delete_run_cluster
from flows import rules
from flows.dispatch import run_batches
from flows.retries import STORAGE_RETRIES
from flows.trust import require_signature, signing_key
from scoring import layout, models, telemetry
from scoring.batch import valid_devices
from scoring.features import GRANULARITIES
from scoring.records import Failure
from scoring.signing import SigningKey
from scoring.store import Store
from scoring.training import TrainResult, train_batch


class TrainingRefused(RuntimeError):
    """A training run that published nothing: the previous version stays live. The message says why."""


@task(**STORAGE_RETRIES)
def window_devices(store: Store, hours: list[datetime]) -> list[str]:
    """Every device that reports in some hour of the window; files that cannot be read are logged and left out."""
    scans = [telemetry.scan_hour(store, h) for h in hours]
    for failure in (f for scan in scans for f in scan.unreadable):
        get_run_logger().warning("unreadable telemetry file, left out of training: %s", failure)
    return sorted({d for scan in scans for d in telemetry.hour_devices(store, scan)})


def refusals(results: list[TrainResult], failures: list[Failure], devices: int, max_share: float) -> list[str]:
    """Why this run must not publish: lost shards, or more unfitted devices than ``max_share``."""
    reasons = []
    lost = sum(r.lost for r in results)
    if lost:
        reasons.append(f"{lost} of {len(results)} training shards were lost")
    unfitted = len({f.device for f in failures})
    if devices and unfitted / devices > max_share:
        reasons.append(f"{unfitted} of {devices} devices could not be fitted, more than "
                       f"fleetscore.models.max-unfitted-share ({max_share:.0%})")
    return reasons


def keep_previous(store: Store, key: SigningKey | None, version: str, granularity: str, failures: list[Failure],
                  shard: int) -> tuple[dict, dict, list[Failure], str | None]:
    """``--allow-partial``: copy the live models of what this run could not fit into ``version``.

    Returns the copied entries, their pack, the models that could not be copied,
    and the live version they came from (``None`` when there is none, or it has
    another granularity: then nothing is kept). The live manifest is checked
    like scoring checks it.
    """
    try:
        previous = models.read_manifest(store, key=key, require_signature=require_signature())
    except FileNotFoundError:
        return {}, {}, [], None
    if previous["granularity"] != granularity:
        return {}, {}, [], None
    failed = {(f.device, f.tag) for f in failures}
    names = [n for n, e in previous["models"].items()
             if (e["device"], e["tag"]) in failed or (e["device"], None) in failed]  # a failed device: all its sensors
    return *models.carry_over(store, previous, names, version, shard), previous["version"]


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
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Fit one model per device (or per sensor) on the hours ``start``..``end`` and publish a new version.

    The version is written under its own prefix, signed when a key is
    configured, and made live last. A run that lost a shard or could not fit
    more than ``fleetscore.models.max-unfitted-share`` of its devices publishes
    nothing and raises :class:`TrainingRefused`, unless ``allow_partial``: then
    what it could not fit keeps its live model, copied into the new version.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    started = time.perf_counter()
    logger = get_run_logger()
    target = Store(setting("store", store))
    key = signing_key()  # read first: a misconfigured key fails before any training
    hours = layout.hour_range(layout.parse_hour(start), layout.parse_hour(end))
    devices, failures = valid_devices(window_devices(target, hours))
    invalid = len(failures)
    size = setting("scoring.devices-per-pack", devices_per_pack)
    shards = [devices[i : i + size] for i in range(0, len(devices), size)]
    version = models.new_version()
    jobs = [(f"shard-{i:05d}", (target, hours, rules.grid(hours), shard, i, granularity, setting("scoring.nu", nu),
                                setting("scoring.gamma", gamma), version))
            for i, shard in enumerate(shards)]
    logger.info("training %d devices on %d hours in %d shards into version %s",
                len(devices), len(hours), len(shards), version)

    def lost(i: int, exc: BaseException) -> TrainResult:
        return TrainResult({}, {}, [Failure(d, f"training failed: {exc}") for d in shards[i]], lost=True)

    with open_cluster(cluster) as client:
        results = run_batches(client, train_batch, jobs, lost, logger,
                              retries=setting("scoring.batch-retries"))
    failures += [f for r in results for f in r.failures]
    for failure in failures[:20]:
        logger.warning("not trained: %s", failure)
    entries = {k: v for r in results for k, v in r.entries.items()}
    packs = {k: v for r in results for k, v in r.packs.items()}
    reasons = refusals(results, failures, len(devices) + invalid, setting("models.max-unfitted-share"))
    carried, pack, unreadable, previous = {}, {}, [], None
    if failures and allow_partial:
        carried, pack, unreadable, previous = keep_previous(target, key, version, granularity, failures, len(shards))
    entries, packs, failures = entries | carried, packs | pack, failures + unreadable
    if (reasons and not allow_partial) or not entries:
        models.discard(target, version)
        raise TrainingRefused(
            f"published nothing, the live models stay: {'; '.join(reasons) or 'no model could be fitted'}. "
            "The first of them are listed above; fix their telemetry and rerun, or pass --allow-partial to "
            "keep their previous models"
        )
    manifest = models.write_manifest(target, version, granularity, layout.span(hours), entries, packs, key)
    models.activate(target, version)
    pruned = models.prune(target, setting("models.keep-versions"))
    summary = {
        "window": f"{layout.hour_label(hours[0])}..{layout.hour_label(hours[-1])}",
        "version": version,
        "signed": key is not None,
        "models": len(manifest["models"]),
        "packs": len(manifest["packs"]),
        "failed": len(failures),
        "kept_previous": sorted(carried),
        "pruned_versions": pruned,
        "manifest": target.url_of(layout.manifest_file(version)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if reasons:
        logger.warning("published with --allow-partial although %s", "; ".join(reasons))
    for name in sorted(carried):
        logger.warning("kept the previous model of %s (from version %s)", name, previous)
    logger.info("trained %(models)d models in %(packs)d packs, %(failed)d failed, %(seconds).1fs; "
                "version %(version)s is live (%(manifest)s)", summary)
    return summary
