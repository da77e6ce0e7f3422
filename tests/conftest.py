"""Shared fixtures: a Prefect test backend, small Dask clusters and a generated, trained fleet."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import dask.config
import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from scoring import layout, telemetry
from scoring.generate import device_ids, generate_hour
from scoring.store import Store, parquet_bytes
from tests.azurite_listing import ListingProxy

SCORED_HOUR = layout.parse_hour("2026-11-27T10")
TRAIN_HOURS = [SCORED_HOUR - timedelta(hours=2), SCORED_HOUR - timedelta(hours=1)]


def pytest_addoption(parser):
    parser.addoption("--create-external-resources", action="store_true", default=False,
                     help="run the tests marked external, which create (and pay for) real Azure resources")


def pytest_collection_modifyitems(config, items):
    """Skip ``external`` tests unless asked: they create real cloud resources, as in dask-cloudprovider."""
    if config.getoption("--create-external-resources"):
        return
    skip = pytest.mark.skip(reason="creates real Azure resources: run with --create-external-resources")
    for item in items:
        if "external" in item.keywords:
            item.add_marker(skip)


TIDY_ALERT_RULE = {"anomalous-steps": 3, "within-steps": 6}
"""The tests' fleets come from the tidy generator, whose anomalies are bursts of 3 to 12 readings on iid
noise: 3 of 6 steps finds every one of them and no healthy device (README "Accuracy"); the default,
10 of 12, is for the smooth signals and minutes-long faults of real fleets."""


@pytest.fixture(scope="session", autouse=True)
def small_clusters():
    """Two single-threaded workers, no dashboard port: what a 2-core CI machine can hold."""
    with dask.config.set({
        "fleetscore.cluster.local.dashboard-address": None,
        "fleetscore.cluster.local.memory-limit": "2GiB",
        "fleetscore.cluster.adapt": {"minimum": 2, "maximum": 2},
        "fleetscore.alert": TIDY_ALERT_RULE,
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


# The Azure Storage emulator's well-known development account: public, documented by Microsoft.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BIN = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "azurite-blob"
CONTAINER = "fleetscore"


class Azurite:
    """Azurite's blob service on 127.0.0.1 on a free port, data in a temporary folder.

    ``stop()`` and ``start()`` let fault tests take the endpoint away mid-run and
    bring it back with its data.
    """

    def __init__(self, location: Path) -> None:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `make test` (it runs `npm ci`)")
        self.location = location
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen | None = None
        self.listing: ListingProxy | None = None

    @property
    def connection_string(self) -> str:
        """Through the listing proxy once it runs (delta-rs needs it: tests/azurite_listing.py)."""
        port = self.listing.port if self.listing else self.port
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
             "--location", str(self.location), "--skipApiVersionCheck", "--loose", "--disableTelemetry",
             "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"azurite-blob exited: {self.process.stderr.read().decode()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"azurite-blob did not listen on 127.0.0.1:{self.port} within 30s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A running Azurite, with AZURE_STORAGE_CONNECTION_STRING pointing at it for the session.

    Set before any Dask cluster starts, so workers inherit it the way Azure VMs get it: as environment.
    """
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    server.listing = ListingProxy(server.port)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
        Store(f"az://{CONTAINER}").create()
        yield server
    server.listing.close()
    server.stop()


@pytest.fixture
def az_store(azurite, request) -> Store:
    """A fresh prefix of the Azurite container, one per test."""
    return Store(f"az://{CONTAINER}/{request.node.name[:40].strip('[]').replace('[', '-')}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["local", "azurite"])
def any_store(request, tmp_path) -> Store:
    """The same test on a local folder and on Azure Blob (Azurite): one code path for both."""
    if request.param == "local":
        return Store(tmp_path)
    return request.getfixturevalue("az_store")
