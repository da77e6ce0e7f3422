"""An hour's results as rows of the Delta Lake tables (``tables/<name>``, see :mod:`scoring.tables`).

Batches write their predictions and quarantined rows as data files into the
tables' partitions of the hour (:func:`write_part`, :func:`write_quarantine`),
invisible to every reader. The flow's :func:`commit` writes the hour's errors
and device-hour rows and replaces the hour in every table, one transaction per table, recording the
run (flow run id, model version, counts, the telemetry files read) in the
commits. Readers see the previous complete hour or the new one, never a mix;
files of a run that crashed before its commit are never read, and vacuum
removes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from scoring import alerts, tables
from scoring.predict import predictions_table
from scoring.records import QUARANTINE_COLUMNS, Failure
from scoring.store import Store
from scoring.tables import DataFile
from scoring.telemetry import InputFile

ERROR_COLUMNS = ("device", "tag", "file", "reason")


def write_part(store: Store, hour: datetime, frame: pa.Table | pd.DataFrame) -> DataFile:
    """Write one batch's predictions into the hour's partition (not yet visible); return the file."""
    return tables.write_file(store, "predictions", hour, frame)


def write_quarantine(store: Store, hour: datetime, frames: Sequence[pd.DataFrame | None]) -> DataFile | None:
    """Write one batch's quarantined rows into the hour's partition (not yet visible); ``None`` without rows.

    Written by the batch, so quarantined rows never travel to the flow: it commits the file.
    """
    if not any(f is not None and len(f) for f in frames):
        return None
    return tables.write_file(store, "quarantine", hour, quarantine_frame(frames))


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


def commit(store: Store, hour: datetime, parts: Sequence[DataFile], failures: Sequence[Failure],
           stats: Mapping[str, Any], quarantined: Sequence[DataFile] = (),
           device_hours: pd.DataFrame | None = None, inputs: Sequence[InputFile] = (),
           attempts: int = 10) -> dict[str, Any]:
    """Replace the hour in every table with the batches' parts and the flow's own rows.

    Args:
        store: the store holding the tables.
        hour: the hour committed.
        parts: the predictions files the batches wrote (:func:`write_part`).
        failures: failed devices, the hour's errors table rows.
        stats: counts, model version and flow run id, recorded in the commits (no secrets).
        quarantined: the quarantine files the batches wrote (:func:`write_quarantine`).
        device_hours: the per-device-hour rows (:mod:`scoring.alerts`).
        inputs: the telemetry files read, recorded so that changed inputs can be found.
        attempts: tries per table when other commits keep winning (``fleetscore.tables.commit-attempts``).

    Returns:
        The commit record, as :func:`committed` returns it later.

    Raises:
        scoring.tables.HourConflict: another run committed the hour meanwhile.
        RuntimeError: a part is not in storage (a table never lists a file readers cannot find).
    """
    frames = {"errors": errors_frame(failures),
              "device_hours": alerts.device_hours([]) if device_hours is None else device_hours}
    files = {"predictions": list(parts) or [write_part(store, hour, predictions_table([]))],  # schema, no rows
             "quarantine": list(quarantined) or [tables.write_file(store, "quarantine", hour, quarantine_frame([]))]}
    files |= {name: [tables.write_file(store, name, hour, frame)] for name, frame in frames.items()}
    record = {**stats, "quarantined_rows": sum(f.rows for f in quarantined), "inputs": [asdict(i) for i in inputs]}
    return tables.recorded(record, hour, tables.commit_hour(store, hour, files, record, attempts))


def committed(store: Store, hour: datetime) -> dict[str, Any] | None:
    """The record of the hour's current commit (stats, model version, run, inputs), ``None`` if never committed."""
    claim = tables.committed(store, hour)
    return None if claim is None else tables.commit_record(store, hour, claim)


def read_predictions(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed predictions of an hour, sorted by device, tag and time."""
    frame = tables.read_table(store, "predictions", hour)
    return frame.sort_values(["device", "tag", "ts"], kind="stable", ignore_index=True)


def read_errors(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed hour's failed devices with file and reason."""
    return tables.read_table(store, "errors", hour).sort_values(list(ERROR_COLUMNS), ignore_index=True)


def read_device_hours(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed hour's row per model: status, coverage, anomalies and alert (:mod:`scoring.alerts`)."""
    return tables.read_table(store, "device_hours", hour).sort_values(["device", "tag"], ignore_index=True)


def read_quarantine(store: Store, hour: datetime) -> pd.DataFrame:
    """The committed hour's telemetry rows that broke the contract, with file and reason."""
    frame = tables.read_table(store, "quarantine", hour)
    return frame.sort_values(list(frame.columns), ignore_index=True)
