"""The unit of work sent to a Dask worker: score (or train) one batch of devices.

Plain functions of picklable arguments, no Prefect: the flow maps them over the
cluster. A batch reads the rows of its own range of device ids from the hour's
files, once, loads its models in one pack read, scores them and writes one
predictions file and one quarantine file. Errors of one device become
:class:`Failure` records; errors of the storage itself (network, permissions)
are raised, so Dask's retries and the flow can handle them. What returns to the
flow is small: counts, failures, the batch's device-hour rows and the files written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from scoring import alerts, layout
from scoring import models as model_io
from scoring import predictions, telemetry
from scoring.alerts import AlertRule
from scoring.align import Grid
from scoring.features import to_features
from scoring.layout import check_id
from scoring.model_format import ModelPolicy
from scoring.models import Manifest
from scoring.predict import predict, predictions_table
from scoring.records import Failure, key_name, parse_key
from scoring.store import Store
from scoring.tables import DataFile
from scoring.telemetry import DeviceRange, HourScan, InputFile


@dataclass
class BatchResult:
    """What a scoring batch reports back to the flow: small, whatever the batch size.

    ``device_hours`` has one row per model of the batch (:mod:`scoring.alerts`),
    scored or not, so the flow can say which devices need a look without
    reading a single prediction back. ``part`` and ``quarantine`` are the files the
    batch wrote into the predictions and quarantine tables, for the flow's commit.
    """

    names: list[str]
    part: DataFile | None = None
    quarantine: DataFile | None = None
    rows: int = 0
    failures: list[Failure] = field(default_factory=list)
    device_hours: pd.DataFrame = field(default_factory=lambda: alerts.device_hours([]))
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return int((self.device_hours["status"] == "scored").sum())

    @property
    def anomalies(self) -> int:
        return int(self.device_hours["anomalies"].sum())


def plan(manifest: Manifest, packs_per_batch: int = 1) -> list[list[str]]:
    """Batches of model names over consecutive devices: deterministic, so reruns write the same files.

    Devices are taken in order, every model of a device in the same batch. A batch
    closes once it holds as many models as ``packs_per_batch`` of the largest pack, and
    a new one opens at the first device of every ``packs_per_batch``-th pack holding more
    than half the largest: a trained version gives one batch per ``packs_per_batch`` packs,
    even where a pack lost devices that could not be fitted (a batch reads every pack it
    touches). Consecutive devices let each batch own a range of device ids
    (:func:`device_ranges`). A manifest without models still gets one (empty) batch, which
    names every device as unmodelled.
    """
    if packs_per_batch < 1:
        raise ValueError(f"packs per batch must be at least 1, not {packs_per_batch}: "
                         "set fleetscore.scoring.packs-per-batch")
    entries = manifest["models"]
    packs = manifest.get("packs", {}).values()
    largest = max((len(p["models"]) for p in packs), default=len(entries))
    size = packs_per_batch * largest

    def order(name: str) -> tuple[str, str]:
        return entries[name]["device"], entries[name]["tag"] or ""

    full = sorted(entries[min(p["models"], key=order)]["device"] for p in packs if 2 * len(p["models"]) > largest)
    opens = set(full[::packs_per_batch])
    batches: list[list[str]] = []
    previous = None
    for name in sorted(entries, key=order):
        device = entries[name]["device"]
        if not batches or (device != previous and (len(batches[-1]) >= size or device in opens)):
            batches.append([])
        batches[-1].append(name)
        previous = device
    return batches or [[]]


def device_ranges(manifest: Manifest, batches: Sequence[Sequence[str]]) -> list[DeviceRange]:
    """Each batch's device ids: from its first device up to the next batch's first (the first range
    open below, the last open above).

    Together the ranges hold every possible id exactly once, so each device in the
    hour's files is read by one batch, and one without a model is named by the batch
    whose range holds it: the flow never reads a telemetry row.
    """
    firsts = [manifest["models"][names[0]]["device"] if names else None for names in batches]
    bounds = [None, *firsts[1:], None]
    return [DeviceRange(bounds[i], bounds[i + 1]) for i in range(len(batches))]


def valid_devices(devices: Sequence[str]) -> tuple[list[str], list[Failure]]:
    """Split device ids into those that may become paths and failures for the others."""
    valid, failures = [], []
    for device in devices:
        try:
            valid.append(check_id(device))
        except ValueError as exc:
            failures.append(Failure(device, str(exc)))
    return valid, failures


def unmodelled(devices: Sequence[str], manifest: Manifest) -> list[Failure]:
    """Devices that report in the hour but have no model (or an id that cannot be one)."""
    known = {e["device"] for e in manifest["models"].values()}
    valid, failures = valid_devices(devices)
    return failures + [
        Failure(d, "no model in the manifest", layout.manifest_file(manifest["version"]))
        for d in valid if d not in known
    ]


def _read(store: Store, files: Sequence[InputFile], span: DeviceRange, names: Sequence[str],
          manifest: Manifest) -> tuple[telemetry.Rows | None, list[Failure]]:
    """The batch's rows of the hour (its loaded models' devices); a file unreadable now fails every model."""
    try:
        return telemetry.read_rows(store, files, span, {manifest["models"][n]["device"] for n in names}), []
    except telemetry.UnreadableFile as exc:
        entries = [manifest["models"][n] for n in names]
        return None, [Failure(e["device"], exc.reason, exc.file, e["tag"]) for e in entries]


@dataclass(frozen=True)
class BatchJob:
    """What one scoring batch needs, as one object.

    ``manifest`` is the batch's :func:`~scoring.models.manifest_slice`; ``files`` are
    the hour's telemetry files the flow found readable (those that may hold ``span``,
    :meth:`~scoring.telemetry.HourScan.files_for`); ``grid`` and ``rule`` are the
    hour's alignment and alert rules; ``policy`` says which model formats besides plain
    arrays may be loaded (the flow's settings); ``span`` is the batch's range of device
    ids (:func:`device_ranges`), by default the range of its models' devices.

    One object because Dask walks every list and dict of a task's arguments looking
    for futures, and a manifest slice holds a thousand of them: 2 ms of the flow
    process's time per batch, 500 batches at 100,000 devices.
    """

    store: Store
    grid: Grid
    manifest: Manifest
    files: Sequence[InputFile]
    rule: AlertRule
    policy: ModelPolicy = ModelPolicy()
    span: DeviceRange | None = None


def batch_jobs(store: Store, grid: Grid, manifest: Manifest, batches: Sequence[Sequence[str]], scan: HourScan,
               rule: AlertRule, policy: ModelPolicy = ModelPolicy()) -> list[BatchJob]:
    """One job per batch of :func:`plan`: its models, its range of device ids and the files that may hold it."""
    return [BatchJob(store, grid, model_io.manifest_slice(manifest, names), scan.files_for(span), rule, policy, span)
            for names, span in zip(batches, device_ranges(manifest, batches))]


def score_batch(job: BatchJob) -> BatchResult:
    """Score every model of the job's manifest on one hour.

    Devices in the job's range without a model are named in the failures (they have
    no device-hour row).
    """
    started = time.perf_counter()
    store, grid, manifest, rule = job.store, job.grid, job.manifest, job.rule
    names = sorted(manifest["models"])
    span = job.span or DeviceRange.around([e["device"] for e in manifest["models"].values()])
    loaded, failures = model_io.load_models(store, manifest, names, job.policy)
    read, read_failures = _read(store, job.files, span, list(loaded), manifest)
    failures += read_failures
    scored, quarantined = [], []
    if read is not None:
        quarantined.append(read.quarantined)
        specs = {parse_key(n): manifest["models"][n]["features"] for n in loaded}
        features, feature_failures, misaligned = to_features(read.table, specs, grid)
        quarantined.append(misaligned)
        failures += feature_failures
        for f in features:
            entry = manifest["models"][key_name(f.key)]
            try:
                score, anomaly = predict(loaded[key_name(f.key)], f.X)
            except ValueError as exc:
                failures.append(Failure(f.key[0], str(exc), entry["file"], f.key[1]))
                continue
            scored.append((f, score, anomaly, entry["sha256"]))
    table = predictions_table(scored)
    hours = alerts.device_hours([alerts.unscored(f, grid) for f in failures],
                                alerts.scored_hours([s[:3] for s in scored], grid, rule))
    result = BatchResult(names, rows=table.num_rows, device_hours=hours,
                         failures=failures + (unmodelled(read.devices, manifest) if read else []))
    if table.num_rows:
        result.part = predictions.write_part(store, grid.start, table)
    result.quarantine = predictions.write_quarantine(store, grid.start, quarantined)
    result.seconds = time.perf_counter() - started
    return result
