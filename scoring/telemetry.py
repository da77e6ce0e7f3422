"""Reading and writing an hour of telemetry (``telemetry/date=.../hour=.../*.parquet|*.csv``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring import layout
from scoring.features import normalise, validate
from scoring.store import Store

ROW_GROUP_ROWS = 64_000
"""Rows per Parquet row group: small enough that a batch skips the groups of other devices."""


def hour_files(store: Store, hour: datetime) -> list[str]:
    """The hour's telemetry files, or ``FileNotFoundError`` naming the folder."""
    folder = layout.telemetry_dir(hour)
    files = [f for f in store.list(folder) if f.endswith((".parquet", ".csv"))]
    if not files:
        raise FileNotFoundError(f"no telemetry for {layout.hour_label(hour)}: {store.url_of(folder)} holds no .parquet or .csv")
    return files


def write_hour(store: Store, hour: datetime, frame: pd.DataFrame, name: str = "part-00000") -> str:
    """Write one hour as Parquet sorted by device, so readers can prune row groups."""
    table = pa.Table.from_pandas(
        normalise(frame).sort_values(["device", "ts", "tag"], kind="stable"), preserve_index=False
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS)
    rel = f"{layout.telemetry_dir(hour)}/{name}.parquet"
    store.write(rel, buffer.getvalue())
    return rel


def _device_column(frame: pd.DataFrame) -> str:
    """``device``, or ``Device`` in files shaped like the original sample's CSV."""
    return next((c for c in frame.columns if c.lower() == "device"), "device")


def _device_filter(devices: Sequence[str] | None) -> list[tuple] | None:
    """Row filter for a batch's devices, with their range so that row groups can be skipped.

    Row-group statistics are min/max: an ``in`` test with many ids skips nothing,
    a range does (files are sorted by device). Measured at 10,000 devices: 5.6 s to 0.17 s a batch.
    """
    if devices is None:
        return None
    ids = sorted(devices)
    return [("device", ">=", ids[0]), ("device", "<=", ids[-1]), ("device", "in", ids)] if ids else \
        [("device", "in", [])]


def _read_file(store: Store, rel: str, devices: Sequence[str] | None) -> pd.DataFrame:
    """One file's rows (of ``devices`` only, if given) as they are stored."""
    path = store.path(rel)
    if rel.endswith(".csv"):
        with store.fs.open(path, "rb") as f:
            frame = pd.read_csv(f, dtype=str)
        device = _device_column(frame)
        return frame if devices is None or device not in frame else frame[frame[device].isin(devices)]
    return pq.read_table(path, filesystem=store.fs, filters=_device_filter(devices)).to_pandas()


def read_rows(
    store: Store, hour: datetime, devices: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The hour's telemetry (only ``devices`` if given): valid rows normalised, and the quarantine.

    Quarantined rows carry a ``reason`` and their ``file``. Raises ``ValueError``
    naming the file when a file cannot be read as telemetry at all.
    """
    good, bad = [], []
    for rel in hour_files(store, hour):
        try:
            valid, quarantined = validate(_read_file(store, rel, devices))
        except (ValueError, pa.ArrowException) as exc:
            raise ValueError(f"{store.url_of(rel)}: {exc}") from exc
        good.append(valid)
        bad.append(quarantined.assign(file=rel))
    return pd.concat(good, ignore_index=True), pd.concat(bad, ignore_index=True)


def read_hour(store: Store, hour: datetime, devices: Sequence[str] | None = None) -> pd.DataFrame:
    """The hour's valid telemetry; see :func:`read_rows` for the rows that are not."""
    return read_rows(store, hour, devices)[0]


def anonymous_rows(store: Store, hour: datetime) -> pd.DataFrame:
    """Rows without a device id, quarantined: no batch reads them, so the flow keeps them."""
    frames = []
    for rel in hour_files(store, hour):
        if rel.endswith(".csv"):
            frame = _read_file(store, rel, None)
            frame = frame[frame[_device_column(frame)].isna()]
        else:
            frame = pq.read_table(store.path(rel), filesystem=store.fs,
                                  filters=pc.field("device").is_null()).to_pandas()
        frames.append(validate(frame)[1].assign(file=rel))
    return pd.concat(frames, ignore_index=True)


def hour_devices(store: Store, hour: datetime) -> list[str]:
    """Every device id that reports in the hour (reads only the device column of Parquet files)."""
    ids: set[str] = set()
    for rel in hour_files(store, hour):
        if rel.endswith(".csv"):
            frame = _read_file(store, rel, None)
            ids.update(frame[_device_column(frame)].dropna().unique())
        else:
            column = pq.read_table(store.path(rel), filesystem=store.fs, columns=["device"]).column(0)
            ids.update(column.unique().to_pylist())
    return sorted(str(i) for i in ids if i is not None)
