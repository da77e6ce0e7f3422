"""Committing an hour of predictions atomically (``predictions/date=.../hour=.../``).

Batches write content-addressed part files (``part-<sha256[:16]>.parquet``), so
the same input always gives the same names and bytes. The hour becomes visible
only when its commit marker, which lists those files, is written; that write
is atomic. Readers go through the marker, so they see the previous complete
hour or the new one, never a mix, and files a crashed run left behind are
invisible until the next commit removes them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from scoring import alerts, layout
from scoring.records import QUARANTINE_COLUMNS, Failure
from scoring.store import Store, parquet_bytes, sha256
from scoring.telemetry import InputFile

ERROR_COLUMNS = ("device", "tag", "file", "reason")


def _write_addressed(store: Store, hour: datetime, prefix: str, frame: pd.DataFrame) -> str:
    data = parquet_bytes(frame)
    rel = f"{layout.predictions_dir(hour)}/{prefix}-{sha256(data)[:16]}.parquet"
    if not store.exists(rel):
        store.write(rel, data)
    return rel


def write_part(store: Store, hour: datetime, frame: pd.DataFrame) -> str:
    """Write one batch's predictions (not yet visible); return its layout path."""
    return _write_addressed(store, hour, "part", frame)


def errors_frame(failures: Sequence[Failure]) -> pd.DataFrame:
    """One row per failed device or sensor, sorted so that reruns write the same bytes."""
    rows = sorted(((f.device, f.tag, f.file, f.reason) for f in failures),
                  key=lambda row: tuple("" if v is None else v for v in row))
    return pd.DataFrame(rows, columns=list(ERROR_COLUMNS)).astype("string")


def quarantine_frame(frames: Sequence[pd.DataFrame | None]) -> pd.DataFrame:
    """Telemetry rows that broke the contract, as strings with file and reason, in a stable order."""
    columns = [*QUARANTINE_COLUMNS, "file"]
    rows = pd.concat([f for f in frames if f is not None and len(f)] or [pd.DataFrame(columns=columns)])
    return rows[columns].astype("string").sort_values(columns, ignore_index=True)


def commit(store: Store, hour: datetime, parts: Sequence[str], failures: Sequence[Failure],
           stats: dict[str, int], quarantined: Sequence[pd.DataFrame] = (),
           device_hours: pd.DataFrame | None = None, inputs: Sequence[InputFile] = ()) -> dict[str, Any]:
    """Make the hour visible: write its errors and quarantine files, then the marker, then drop leftovers.

    Refuses (``RuntimeError``) when a part a batch reported is not in storage: a
    marker must never list a file readers cannot find.
    """
    folder = layout.predictions_dir(hour)
    missing = sorted(set(parts) - set(store.list(folder)))
    if missing:
        raise RuntimeError(
            f"refusing to commit {layout.hour_label(hour)}: {len(missing)} written part file(s) are not in "
            f"storage, e.g. {store.url_of(missing[0])}; rerun the hour"
        )
    errors = _write_addressed(store, hour, "errors", errors_frame(failures))
    kept = quarantine_frame(quarantined)
    quarantine = _write_addressed(store, hour, "quarantine", kept)
    summaries = _write_addressed(store, hour, "device_hours",
                                 device_hours if device_hours is not None else alerts.device_hours([]))
    marker = {
        "hour": layout.hour_label(hour),
        "parts": sorted(parts),
        "errors": errors,
        "quarantine": quarantine,
        "device_hours": summaries,
        "quarantined_rows": len(kept),
        "inputs": [asdict(i) for i in inputs],
        **stats,
    }
    store.write(f"{folder}/{layout.COMMIT_MARKER}", json.dumps(marker, indent=1, sort_keys=True).encode())
    keep = {*marker["parts"], errors, quarantine, summaries, f"{folder}/{layout.COMMIT_MARKER}"}
    store.remove([f for f in store.list(folder) if f not in keep])
    return marker


def committed(store: Store, hour: datetime) -> dict[str, Any] | None:
    """The hour's commit marker, or ``None`` if the hour is not committed."""
    try:
        return json.loads(store.read(f"{layout.predictions_dir(hour)}/{layout.COMMIT_MARKER}"))
    except FileNotFoundError:
        return None


def _read(store: Store, rels: Sequence[str]) -> pd.DataFrame:
    frames = [pq.read_table(store.path(r), filesystem=store.fs).to_pandas() for r in rels]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _marker(store: Store, hour: datetime) -> dict[str, Any]:
    marker = committed(store, hour)
    if marker is None:
        raise FileNotFoundError(f"{store.url_of(layout.predictions_dir(hour))} is not committed")
    return marker


def read_predictions(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed predictions of an hour, sorted by device, tag and time."""
    frame = _read(store, _marker(store, hour)["parts"])
    if frame.empty:
        return frame
    return frame.sort_values(["device", "tag", "ts"], kind="stable", ignore_index=True)


def read_errors(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed hour's failed devices with file and reason."""
    return _read(store, [_marker(store, hour)["errors"]])


def read_device_hours(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed hour's row per model: status, coverage, anomalies and alert (:mod:`scoring.alerts`)."""
    return _read(store, [_marker(store, hour)["device_hours"]])


def read_quarantine(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed hour's telemetry rows that broke the contract, with file and reason."""
    return _read(store, [_marker(store, hour)["quarantine"]])
