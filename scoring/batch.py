"""The unit of work sent to a Dask worker: score (or train) one batch of devices.

Plain functions of picklable arguments, no Prefect: the flow maps them over the
cluster. A batch reads only its devices from the hour's files, once, loads its
models in one pack read, scores them and writes one part file. Errors of one
device become :class:`Failure` records; errors of the storage itself (network,
permissions) are raised, so Dask's retries and the flow can handle them.
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
from scoring.model_format import ModelPolicy
from scoring.models import Manifest
from scoring.predict import predict, predictions_frame
from scoring.layout import check_id
from scoring.records import Failure, key_name, parse_key
from scoring.store import Store
from scoring.tables import DataFile


@dataclass
class BatchResult:
    """What a scoring batch reports back to the flow: small, whatever the batch size.

    ``device_hours`` has one row per model of the batch (:mod:`scoring.alerts`),
    scored or not, so the flow can say which devices need a look without
    reading a single prediction back.
    """

    names: list[str]
    part: DataFile | None = None
    rows: int = 0
    failures: list[Failure] = field(default_factory=list)
    device_hours: pd.DataFrame = field(default_factory=lambda: alerts.device_hours([]))
    quarantined: pd.DataFrame | None = None
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return int((self.device_hours["status"] == "scored").sum())

    @property
    def anomalies(self) -> int:
        return int(self.device_hours["anomalies"].sum())


def plan(manifest: Manifest) -> list[list[str]]:
    """Batches of model names, one per pack: deterministic, so reruns write the same files."""
    batches: dict[str, list[str]] = {}
    for name, entry in sorted(manifest["models"].items()):
        batches.setdefault(entry.get("pack", ""), []).append(name)
    return [batches[p] for p in sorted(batches)]


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


def _read_devices(store: Store, devices: list[str], files: Sequence[str],
                  names: Sequence[str], manifest: Manifest) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[Failure]]:
    """The batch's valid rows of the hour and its quarantined rows; a file unreadable now fails every model."""
    try:
        return *telemetry.read_rows(store, files, devices), []
    except telemetry.UnreadableFile as exc:
        entries = [manifest["models"][n] for n in names]
        return None, None, [Failure(e["device"], exc.reason, exc.file, e["tag"]) for e in entries]


def score_batch(store: Store, grid: Grid, manifest: Manifest, files: Sequence[str],
                rule: AlertRule, policy: ModelPolicy = ModelPolicy()) -> BatchResult:
    """Score every model of ``manifest`` (a :func:`~scoring.models.manifest_slice`) on one hour.

    ``files`` are the hour's telemetry files the flow found readable; ``grid``
    and ``rule`` are the hour's alignment and alert rules; ``policy`` says which
    model formats besides plain arrays may be loaded (the flow's settings).
    """
    started = time.perf_counter()
    names = sorted(manifest["models"])
    loaded, failures = model_io.load_models(store, manifest, names, policy)
    devices = sorted({manifest["models"][n]["device"] for n in loaded})
    rows, quarantined, read_failures = _read_devices(store, devices, files, list(loaded), manifest)
    failures += read_failures
    scored, summaries = [], []
    if rows is not None:
        specs = {parse_key(n): manifest["models"][n]["features"] for n in loaded}
        features, feature_failures, misaligned = to_features(rows, specs, grid)
        quarantined = pd.concat([quarantined, misaligned], ignore_index=True)
        failures += feature_failures
        for f in features:
            entry = manifest["models"][key_name(f.key)]
            try:
                score, anomaly = predict(loaded[key_name(f.key)], f.X)
            except ValueError as exc:
                failures.append(Failure(f.key[0], str(exc), entry["file"], f.key[1]))
                continue
            scored.append((f, score, anomaly, entry["sha256"]))
            summaries.append(alerts.device_hour(f, score, anomaly, grid, rule))
    frame = predictions_frame(scored)
    summaries += [alerts.unscored(f, grid) for f in failures]
    result = BatchResult(names, rows=len(frame), failures=failures,
                         device_hours=alerts.device_hours(summaries), quarantined=quarantined)
    if len(frame):
        result.part = predictions.write_part(store, grid.start, frame)
    result.seconds = time.perf_counter() - started
    return result
