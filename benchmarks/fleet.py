"""One generated, trained fleet per size, cached on disk so repeated benchmark runs skip the set-up.

The telemetry follows :mod:`scoring.generate` (its tags, ranges, 5-second grid
and device ids) but is built with NumPy here: ``generate_hour`` builds its
timestamps through Python objects and takes minutes for 10,000 devices.
Models are fitted with :func:`scoring.predict.fit_model` on one training hour
(made in memory from its seed, not written) and published as fleetscore publishes them (files, packs, manifest), so the
flow scores this store as it would any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from joblib.externals.loky import get_reusable_executor

from cluster.config import setting
from scoring import layout, models, telemetry
from scoring.generate import STEP_SECONDS, TAG_RANGES, device_ids
from scoring.predict import fit_model
from scoring.store import Store

SCORED_HOUR = layout.parse_hour("2026-11-27T10")
TRAIN_HOUR = SCORED_HOUR - timedelta(hours=1)
DEVICES_PER_FILE = 10_000
"""Telemetry files per hour hold this many devices, like an ingestion that writes parts."""
ANOMALY_RATE = 0.01
READY = "bench-ready.json"


@dataclass(frozen=True)
class FleetSize:
    """Devices, rows per device in the hour (at most 720) and tags per device (at most 5)."""

    devices: int
    rows: int = 3600 // STEP_SECONDS
    tags: int = len(TAG_RANGES)

    def __post_init__(self) -> None:
        if not (1 <= self.rows <= 3600 // STEP_SECONDS and 1 <= self.tags <= len(TAG_RANGES)
                and self.devices >= 1):
            raise ValueError(f"fleet size {self} is impossible: 1 <= rows <= 720, 1 <= tags <= 5, devices >= 1")

    @property
    def key(self) -> str:
        return f"{self.devices}x{self.rows}x{self.tags}"

    @property
    def tag_names(self) -> list[str]:
        return list(TAG_RANGES)[: self.tags]


def fleet_values(size: FleetSize, first: int, count: int, seed: int, anomaly_rate: float) -> np.ndarray:
    """Readings of devices ``first .. first + count`` as a (device, row, tag) array.

    Seeded by ``seed`` and the chunk's first device, so a size and a seed give one fleet
    (chunks are always :data:`DEVICES_PER_FILE` devices). Anomalous
    devices get one burst of 6 readings at 3 to 6 ranges above the tag's maximum.
    """
    rng = np.random.default_rng([seed, first])
    low, high = (np.array([TAG_RANGES[t][i] for t in size.tag_names]) for i in (0, 1))
    values = rng.uniform(low, high, size=(count, size.rows, size.tags))
    hit = np.flatnonzero(rng.random(count) < anomaly_rate)
    tag = rng.integers(0, size.tags, size=len(hit))
    start = rng.integers(0, max(size.rows - 6, 1), size=len(hit))
    for d, t, s in zip(hit, tag, start):
        values[d, s : s + 6, t] = high[t] + (high[t] - low[t]) * rng.uniform(3, 6)
    return values


def scored_values(size: FleetSize, first: int, count: int) -> np.ndarray:
    """The scored hour's readings of a chunk of devices: what the files hold and the floors score."""
    return fleet_values(size, first, count, seed=2, anomaly_rate=ANOMALY_RATE)


def long_frame(size: FleetSize, hour, first: int, values: np.ndarray) -> pd.DataFrame:
    """The long ``ts, device, tag, value`` frame of a chunk of devices, sorted by device, ts, tag."""
    count = len(values)
    times = pd.date_range(hour, periods=size.rows, freq=f"{STEP_SECONDS}s", tz="UTC")
    per_device = size.rows * size.tags
    return pd.DataFrame({
        "ts": pd.DatetimeIndex(np.tile(np.repeat(times.tz_localize(None).to_numpy(), size.tags), count)).tz_localize("UTC"),
        "device": pd.Categorical.from_codes(np.repeat(np.arange(count), per_device),
                                            device_ids(first + count)[first:]),
        "tag": pd.Categorical.from_codes(np.tile(np.arange(size.tags), size.rows * count), size.tag_names),
        "value": values.ravel(),
    })


def _chunks(size: FleetSize, chunk: int) -> list[tuple[int, int]]:
    return [(first, min(chunk, size.devices - first)) for first in range(0, size.devices, chunk)]


def _write_part(store: Store, size: FleetSize, part: int, first: int, count: int) -> None:
    """One telemetry file of the scored hour: devices ``first .. first + count``."""
    values = scored_values(size, first, count)
    telemetry.write_hour(store, SCORED_HOUR, long_frame(size, SCORED_HOUR, first, values), name=f"part-{part:05d}")


def _train_shard(store: Store, size: FleetSize, shard: int, first: int, count: int,
                 version: str) -> tuple[dict, dict]:
    """Fit and publish one pack of models, as ``train-fleet`` would from the same matrices."""
    values = fleet_values(size, first, count, seed=1, anomaly_rate=0.0)
    ids = device_ids(first + count)[first:]
    fitted = {(d, None): fit_model(X, nu=setting("scoring.nu"), gamma=setting("scoring.gamma"))
              for d, X in zip(ids, values)}
    specs = {k: size.tag_names for k in fitted}
    return models.publish_pack(store, version, shard, fitted, specs, layout.span([TRAIN_HOUR]))


def prepare(root: Path, size: FleetSize, jobs: int) -> Store:
    """The store of a fleet of ``size`` under ``root``: made once, then reused.

    The telemetry files and the model packs are written by the same ``jobs``
    processes, files first, so writing a file overlaps training instead of
    holding a core alone: about 0.4 GB of disk and 30 to 40 s of 2 cores per 10,000 devices.
    """
    store = Store(str(root / f"fleet-{size.key}"))
    if store.exists(READY) and store.exists(layout.MODELS_LIVE):  # fleets made before model versions are remade
        return store
    parts = _chunks(size, DEVICES_PER_FILE)
    shards = _chunks(size, setting("scoring.devices-per-pack"))
    version = models.new_version()
    done = Parallel(n_jobs=jobs)(
        [delayed(_write_part)(store, size, i, first, count) for i, (first, count) in enumerate(parts)]
        + [delayed(_train_shard)(store, size, i, first, count, version) for i, (first, count) in enumerate(shards)]
    )
    published = done[len(parts):]
    get_reusable_executor().shutdown(wait=True)  # else the joblib row would reuse, and not count, these workers
    models.write_manifest(store, version, "device", layout.span([TRAIN_HOUR]),
                          {k: v for entries, _ in published for k, v in entries.items()},
                          {k: v for _, pack in published for k, v in pack.items()})
    models.activate(store, version)
    store.write(READY, json.dumps({"size": size.key}).encode())
    return store


def ready_chunks(size: FleetSize) -> Iterator[tuple[int, np.ndarray]]:
    """The first device of each telemetry file and its devices' scored-hour matrices, rebuilt from the seed.

    The floors' input, with no I/O or reshaping; one file's devices at a time, since
    100,000 devices' matrices and models do not fit in memory together.
    """
    for first, count in _chunks(size, DEVICES_PER_FILE):
        yield first, scored_values(size, first, count)


def ready_matrices(size: FleetSize) -> list[np.ndarray]:
    """Each device's scored-hour matrix, in device order (small fleets: all in memory)."""
    return [m for _, chunk in ready_chunks(size) for m in chunk]
