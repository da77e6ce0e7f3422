"""Shared fixtures: a Prefect test backend, small Dask clusters and a generated, trained fleet."""

from __future__ import annotations

from datetime import timedelta

import dask.config
import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from scoring import layout, telemetry
from scoring.generate import device_ids, generate_hour
from scoring.store import Store, parquet_bytes

SCORED_HOUR = layout.parse_hour("2026-11-27T10")
TRAIN_HOURS = [SCORED_HOUR - timedelta(hours=2), SCORED_HOUR - timedelta(hours=1)]


@pytest.fixture(scope="session", autouse=True)
def small_clusters():
    """Two single-threaded workers, no dashboard port: what a 2-core CI machine can hold."""
    with dask.config.set({
        "fleetscore.cluster.local.dashboard-address": None,
        "fleetscore.cluster.local.memory-limit": "2GiB",
        "fleetscore.cluster.adapt": {"minimum": 2, "maximum": 2},
    }):
        yield


@pytest.fixture(scope="session")
def prefect_backend():
    """A real (temporary) Prefect API for flow tests, shared by the session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def scored_hour():
    return SCORED_HOUR


@pytest.fixture(scope="session")
def train_hours():
    return TRAIN_HOURS


@pytest.fixture(scope="session")
def write_fleet():
    """A function that generates two training hours and the scored hour into a store."""
    return _write_fleet


def _write_fleet(store: Store, devices: int, seed: int = 0, anomaly_rate: float = 0.3) -> pd.DataFrame:
    """Generate the training hours and the scored hour into ``store``; return the scored hour's anomalies."""
    ids = device_ids(devices)
    for hour in TRAIN_HOURS:
        frame, _ = generate_hour(ids, hour, seed=seed)
        telemetry.write_hour(store, hour, frame)
    frame, anomalies = generate_hour(ids, SCORED_HOUR, seed=seed, anomaly_rate=anomaly_rate)
    telemetry.write_hour(store, SCORED_HOUR, frame)
    store.write(layout.anomalies_file(SCORED_HOUR), parquet_bytes(anomalies))
    return anomalies
