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


@task(retries=2, retry_delay_seconds=[2, 10])
def window_devices(store: Store, hours: list[datetime]) -> list[str]:
    """Every device that reports in some hour of the window."""
    return sorted({d for h in hours for d in telemetry.scan_hour(store, h).devices})


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


def _previous(store: Store, key: SigningKey | None) -> models.Manifest | None:
    """The live manifest, checked like scoring checks it, or ``None`` for a store without one."""
    try:
        return models.read_manifest(store, key=key, require_signature=require_signature())
    except FileNotFoundError:
        return None


def _kept_names(previous: models.Manifest, failures: list[Failure], granularity: str) -> list[str]:
    """Models of the live version for what this run could not fit (a device's every sensor if the device failed)."""
    if previous["granularity"] != granularity:
        return []
    failed = {(f.device, f.tag) for f in failures}
    return sorted(n for n, e in previous["models"].items()
                  if (e["device"], e["tag"]) in failed or (e["device"], None) in failed)


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
    kept: list[str] = []
    previous = _previous(target, key) if failures and allow_partial else None
    if previous is not None:
        carried, pack, unreadable = models.carry_over(target, previous, _kept_names(previous, failures, granularity),
                                                      version, len(shards))
        entries, packs, kept = entries | carried, packs | pack, sorted(carried)
        failures += unreadable
    if (reasons and not allow_partial) or not entries:
        models.discard(target, version)
        raise TrainingRefused(
            f"published nothing, the live models stay: {'; '.join(reasons) or 'no model could be fitted'}. "
            "The devices are listed above; fix their telemetry and rerun, or pass --allow-partial to keep "
            "their previous models"
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
        "kept_previous": kept,
        "pruned_versions": pruned,
        "manifest": target.url_of(layout.manifest_file(version)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if reasons:
        logger.warning("published with --allow-partial although %s", "; ".join(reasons))
    for name in kept:
        logger.warning("kept the previous model of %s (from version %s)", name, previous["version"])
    logger.info("trained %(models)d models in %(packs)d packs, %(failed)d failed, %(seconds).1fs; "
                "version %(version)s is live (%(manifest)s)", summary)
    return summary
