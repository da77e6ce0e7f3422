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
from datetime import datetime

import pandas as pd

from scoring import layout
from scoring import models as model_io
from scoring import predictions, telemetry
from scoring.features import to_features
from scoring.models import Manifest
from scoring.predict import predict, predictions_frame
from scoring.layout import check_id
from scoring.records import Failure, key_name, parse_key
from scoring.store import Store

STAT_COLUMNS = ("device", "tag", "rows", "anomalies", "min_score")


@dataclass
class BatchResult:
    """What a scoring batch reports back to the flow: small, whatever the batch size."""

    names: list[str]
    part: str | None = None
    rows: int = 0
    failures: list[Failure] = field(default_factory=list)
    stats: pd.DataFrame | None = None
    quarantined: pd.DataFrame | None = None
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return 0 if self.stats is None else len(self.stats)

    @property
    def anomalies(self) -> int:
        return 0 if self.stats is None else int(self.stats["anomalies"].sum())


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
        Failure(d, "no model in the manifest", layout.MANIFEST) for d in valid if d not in known
    ]


def _read_devices(store: Store, hour: datetime, devices: list[str], names: Sequence[str],
                  manifest: Manifest) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[Failure]]:
    """The batch's valid rows of the hour and its quarantined rows; an unreadable file fails every model."""
    try:
        return *telemetry.read_rows(store, hour, devices), []
    except (ValueError, FileNotFoundError) as exc:
        entries = [manifest["models"][n] for n in names]
        return None, None, [Failure(e["device"], str(exc), tag=e["tag"]) for e in entries]


def score_batch(store: Store, hour: datetime, manifest: Manifest) -> BatchResult:
    """Score every model of ``manifest`` (a :func:`~scoring.models.manifest_slice`) on one hour."""
    started = time.perf_counter()
    names = sorted(manifest["models"])
    loaded, failures = model_io.load_models(store, manifest, names)
    devices = sorted({manifest["models"][n]["device"] for n in loaded})
    rows, quarantined, read_failures = _read_devices(store, hour, devices, list(loaded), manifest)
    failures += read_failures
    scored = []
    if rows is not None:
        specs = {parse_key(n): manifest["models"][n]["features"] for n in loaded}
        features, feature_failures = to_features(rows, specs)
        failures += feature_failures
        for f in features:
            entry = manifest["models"][key_name(f.key)]
            try:
                score, anomaly = predict(loaded[key_name(f.key)], f.X)
            except ValueError as exc:
                failures.append(Failure(f.key[0], str(exc), entry["file"], f.key[1]))
                continue
            scored.append((f, score, anomaly, entry["sha256"]))
    frame = predictions_frame(scored)
    result = BatchResult(names, rows=len(frame), failures=failures, stats=_stats(frame), quarantined=quarantined)
    if len(frame):
        result.part = predictions.write_part(store, hour, frame)
    result.seconds = time.perf_counter() - started
    return result


def _stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model: rows, anomalies and lowest score, for the run summary."""
    grouped = frame.groupby(["device", "tag"], dropna=False, sort=True)
    return grouped.agg(rows=("score", "size"), anomalies=("anomaly", "sum"),
                       min_score=("score", "min")).reset_index()
