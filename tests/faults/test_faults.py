"""Nothing lost: bad input, dying workers, vanishing storage, crashes and secrets, on real parts.

Each case checks that every device is either scored or named in the hour's errors
(devices lost = 0) and that no (device, tag, ts) row appears twice, then adds its
row to the table printed at the end (`make faults`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import cloudpickle
import dask.config
import numpy as np
import pandas as pd
import polars as pl
import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.events.filters import EventFilter, EventRelatedFilter
from prefect.events.worker import EventsWorker
from prefect.flows import load_flow_from_entrypoint
from prefect.runner import Runner
from prefect.states import Cancelling

import flows.score
from cluster import azure
from cluster.config import setting
from flows import rules
from flows.report import TooManyFailures
from flows.score import score_fleet
from flows.trust import signing_key
from flows.train import train_fleet
from flows.trust import model_policy, signing_key
from scoring import layout, models, predictions, tables, telemetry
from scoring.batch import BatchJob, plan, score_batch
from scoring.training import train_batch
from scoring.generate import device_ids
from scoring.model_format import encode
from scoring.predict import fit_model
from scoring.store import Store, sha256

pytestmark = pytest.mark.usefixtures("prefect_backend")
PRELOAD = str(Path(__file__).with_name("preload_faults.py"))
DEVICES = 12
SIGNING_KEY = "fault-suite-model-signing-key-0123456789"
"""The manifest signing key of the secrets case: set as its variable, it must then appear nowhere."""
OUTAGE_SECONDS = 40
"""Longer than the Azure SDK's first retry backoffs (15 s, then 18 s), shorter than all of them."""


@pytest.fixture(scope="session")
def fleet(write_fleet, train_hours):
    """A store with a scored-hour fleet and its models (trained without a cluster: it is not under test)."""
    def make(store: Store) -> Store:
        write_fleet(store, devices=DEVICES, anomaly_rate=0.2)
        ids = device_ids(DEVICES)
        version = models.new_version()
        shards = [train_batch(store, train_hours, rules.grid(train_hours), ids[i:i + 4], i // 4, "device",
                              setting("scoring.nu"), setting("scoring.gamma"), version) for i in range(0, DEVICES, 4)]
        models.write_manifest(store, version, "device", layout.span(train_hours),
                              {k: v for s in shards for k, v in s.entries.items()},
                              {k: v for s in shards for k, v in s.packs.items()}, signing_key())
        models.activate(store, version)
        return store
    return make


def score(store: Store, hour, **parameters) -> dict:
    return score_fleet(store=store.url, hour=layout.hour_label(hour), **parameters)


def files(store: Store, hour) -> dict[str, bytes]:
    """The hour's committed data files in every table: content-addressed, so equal runs give equal files."""
    return {f: store.read(f) for f in tables.hour_files(store, hour)}


def accounting(store: Store, hour, expected: set[str]) -> tuple[int, int]:
    """(devices neither scored nor named in errors, duplicated prediction rows) of the committed hour.

    Read through deltalake and checked against a second reader, polars over the same Delta log.
    """
    got = predictions.read_predictions(store, hour)
    where, part = tables.location(store, "predictions"), layout.partition_values(hour)
    second = pl.read_delta(where.uri, storage_options=where.options or None).filter(**part)
    assert len(second) == len(got) and set(second["device"]) == set(got["device"])
    errors = predictions.read_errors(store, hour)
    lost = expected - set(got["device"]) - set(errors["device"])
    return len(lost), int(got.duplicated(["device", "tag", "ts"]).sum())


def replace_model(store: Store, device: str, model) -> None:
    """Publish another model for one device, manifest updated, as a retrain of that device would."""
    manifest = models.read_manifest(store)
    data = encode(model)[1]
    entry = manifest["models"][device]
    store.write(entry["file"], data)
    entry["sha256"] = sha256(data)
    entry.pop("pack")
    store.write(layout.manifest_file(manifest["version"]), json.dumps(manifest).encode())


BAD_INPUTS = {
    "dev-00002": ("no rows", "no telemetry rows"),
    "dev-00006": ("model file missing", "model file is missing"),
    "dev-00007": ("model file altered", "sha256 differs"),
    "dev-00008": ("model expects 3 features", "model expects 3 features"),
    "newcomer": ("device without a model", "no model in the manifest"),
    "../x": ("device id ../x", "invalid device id"),
    "": ("empty device id", "invalid device id"),
    "x" * 10_000: ("10,000-character device id", "invalid device id"),
}
"""Devices that cannot be scored: each fails alone, named in the errors with the reason."""

BAD_ROWS = {
    "dev-00001": ("NaN value", 719, "value is missing or NaN"),
    "dev-00003": ("extra tag sensor9", 720, "tag sensor9 is not among the model's features"),
    "dev-00004": ("a row delivered twice", 720, None),
    "dev-00005": ("value 'high' (text)", 719, "value is not a number"),
}
"""Devices with bad rows: the rows go to quarantine (or are dropped, for an exact duplicate), the device is
scored on the rest, with the coverage given."""


def inject_bad_inputs(store: Store, hour) -> None:
    rows = telemetry.read_hour(store, hour)
    first = rows.groupby("device").head(1)
    rows.loc[first.index[first["device"] == "dev-00001"], "value"] = np.nan
    rows = rows[rows["device"] != "dev-00002"]
    extra = rows[(rows["device"] == "dev-00003") & (rows["tag"] == "sensor1")].head(3).assign(tag="sensor9")
    dupe = rows[rows["device"] == "dev-00004"].head(1)
    text = rows[rows["device"] == "dev-00005"].head(1)
    rows = rows.drop(text.index)
    strangers = [rows[rows["device"] == "dev-00000"].assign(device=d) for d in ["newcomer", "../x", "", "x" * 10_000]]
    telemetry.write_hour(store, hour, pd.concat([rows, extra, dupe, *strangers]))
    store.write(f"{layout.telemetry_dir(hour)}/late.csv",
                text.astype({"value": "string"}).assign(value="high").to_csv(index=False).encode())
    manifest = models.read_manifest(store)
    store.remove(sorted(manifest["packs"]) + [manifest["models"]["dev-00006"]["file"]])
    store.write(manifest["models"]["dev-00007"]["file"], b"not the published model")
    replace_model(store, "dev-00008", fit_model(np.random.default_rng(0).normal(size=(50, 3)), nu=0.1, gamma=0.1))


def test_bad_devices_fail_alone_and_the_rest_of_the_hour_is_unchanged(tmp_path, fleet, scored_hour, fault_table):
    store = fleet(Store(tmp_path))
    score(store, scored_hour)
    clean = predictions.read_predictions(store, scored_hour)
    inject_bad_inputs(store, scored_hour)
    with pytest.raises(TooManyFailures, match="8 of 16 devices failed or were silent"):
        score(store, scored_hour, max_failed_share=0.4)  # above the threshold the run fails...
    summary = score(store, scored_hour, max_failed_share=1.0)

    errors = predictions.read_errors(store, scored_hour)
    reasons = dict(zip(errors["device"], errors["reason"]))
    assert set(reasons) == set(BAD_INPUTS)
    got = predictions.read_predictions(store, scored_hour)
    healthy = sorted(set(device_ids(DEVICES)) - set(BAD_INPUTS) - set(BAD_ROWS))
    pd.testing.assert_frame_equal(got[got["device"].isin(healthy)].reset_index(drop=True),
                                  clean[clean["device"].isin(healthy)].reset_index(drop=True))
    quarantined = predictions.read_quarantine(store, scored_hour)
    hours = predictions.read_device_hours(store, scored_hour).set_index("device")
    assert summary["devices_failed"] + summary["devices_silent"] == len(BAD_INPUTS)
    assert hours.loc["dev-00002", "status"] == "silent" and summary["silent"] == "dev-00002"
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)) | set(BAD_INPUTS))
    assert (lost, dupes) == (0, 0)
    for device, (injected, expected) in BAD_INPUTS.items():
        assert expected in reasons[device], (device, reasons[device])
        fault_table.append(("bad input", injected, f"that device failed: {expected}; others unchanged",
                            lost, dupes))
    for device, (injected, rows, reason) in BAD_ROWS.items():
        assert hours.loc[device, "rows"] == rows and hours.loc[device, "status"] == "scored", device
        kept = clean[(clean["device"] == device) & clean["ts"].isin(got.loc[got["device"] == device, "ts"])]
        pd.testing.assert_frame_equal(got[got["device"] == device].reset_index(drop=True), kept.reset_index(drop=True))
        said = quarantined.loc[quarantined["device"] == device, "reason"].drop_duplicates().tolist()
        assert [r[:len(reason)] for r in said] == ([reason] if reason else []), (device, said)
        fault_table.append(("bad row", injected, f"scored on {rows} of 720 steps, "
                            + (f"row quarantined: {reason}" if reason else "duplicate dropped and counted"),
                            lost, dupes))
    assert hours.loc["dev-00004", "duplicates"] == 1
    fault_table.append(("many bad devices", "8 of 16 devices failing or silent", "run Failed above "
                        "max-failed-share, good devices still committed", lost, dupes))


def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(tmp_path, fleet, scored_hour,
                                                                      fault_table, monkeypatch):
    store = fleet(Store(tmp_path / "store"))
    score(store, scored_hour)
    undisturbed = files(store, scored_hour)
    monkeypatch.setenv("FLEETSCORE_FAULT", "kill-worker")
    monkeypatch.setenv("FLEETSCORE_FAULT_MARKER", str(tmp_path / "killed"))
    with dask.config.set({"distributed.worker.preload": [PRELOAD]}):
        summary = score(store, scored_hour)
    assert (tmp_path / "killed").exists(), "the fault was not injected"
    assert summary["devices_scored"] == DEVICES and summary["devices_failed"] == 0
    assert files(store, scored_hour) == undisturbed
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0)
    fault_table.append(("worker killed", "os._exit in a worker running a batch",
                        "batch rescheduled, every device scored once, same files", lost, dupes))


def test_a_crash_before_commit_leaves_nothing_visible_and_a_rerun_replaces_it_exactly(
        tmp_path, fleet, scored_hour, fault_table):
    store = fleet(Store(tmp_path))
    crashed = predictions.write_part(store, scored_hour, pd.DataFrame({  # a batch of a run that died before its commit
        "ts": pd.to_datetime([scored_hour]), "device": pd.array(["crashed-run"], "string"),
        "tag": pd.array([None], "string"), "score": [1.0], "anomaly": pd.array([0], "int8"),
        "model_sha256": pd.array(["x"], "string")}))
    assert predictions.committed(store, scored_hour) is None
    with pytest.raises(FileNotFoundError, match="no commit of"):
        predictions.read_predictions(store, scored_hour)
    score(store, scored_hour)
    undisturbed = files(store, scored_hour)
    assert crashed.rel not in undisturbed
    assert "crashed-run" not in set(predictions.read_predictions(store, scored_hour)["device"])
    score(store, scored_hour)
    assert files(store, scored_hour) == undisturbed
    assert any(crashed.path in f for f in tables.vacuum(store, timedelta(0))["predictions"])
    assert not store.exists(crashed.rel) and files(store, scored_hour) == undisturbed
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0)
    fault_table.append(("crash before commit", "a batch's data file written, never committed", "hour invisible, "
                        "then never read; rerun gives the same files; vacuum removes the file", lost, dupes))


def test_two_runs_of_one_hour_at_once_queue_and_leave_one_complete_hour(tmp_path, fleet, scored_hour, fault_table):
    """Two real score-fleet runs started together: the hour's concurrency limit queues the second."""
    store = fleet(Store(tmp_path))
    start, summaries = threading.Barrier(2), []

    def run() -> None:
        start.wait()
        summaries.append(score(store, scored_hour))

    runs = [threading.Thread(target=run) for _ in range(2)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(600)
    assert len(summaries) == 2 and all(s["devices_scored"] == DEVICES for s in summaries)
    versions = tables.history(store, scored_hour)
    assert [v["claim"] for v in versions] == [2, 1] and len({v["flow_run_id"] for v in versions}) == 2
    assert tables.committed(store, scored_hour) == 2  # every table holds the second run's commit
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0)
    fault_table.append(("two runs of one hour", "two score-fleet runs of the same hour started at once",
                        "both completed (queued on the hour's concurrency limit): claims 1 and 2 by two runs, "
                        "every table at claim 2, one complete set of rows", lost, dupes))


def restart_after_outage(azurite, marker: Path, outage: float) -> threading.Thread:
    """Bring Azurite back (same port, same data) ``outage`` seconds after a worker killed it."""
    def wait_and_restart() -> None:
        while not marker.exists():
            time.sleep(0.1)
        time.sleep(outage)
        azurite.stop()  # reap the killed process
        azurite.start()
    thread = threading.Thread(target=wait_and_restart, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(900)  # the Azure SDK backs off for about a minute per failing call, by design
def test_storage_killed_mid_run_never_shows_half_an_hour_and_a_rerun_matches_an_undisturbed_run(
        azurite, az_store, fleet, scored_hour, fault_table, monkeypatch, tmp_path):
    reference = fleet(Store(f"{az_store.url}-reference"))
    score(reference, scored_hour)
    store = fleet(az_store)
    marker = tmp_path / "killed"
    monkeypatch.setenv("FLEETSCORE_FAULT", "kill-storage")
    monkeypatch.setenv("FLEETSCORE_FAULT_MARKER", str(marker))
    monkeypatch.setenv("FLEETSCORE_FAULT_PID", str(azurite.process.pid))
    restarter = restart_after_outage(azurite, marker, OUTAGE_SECONDS)
    with dask.config.set({"distributed.worker.preload": [PRELOAD], "fleetscore.scoring.batch-retries": 0}):
        state = score_fleet(store=store.url, hour=layout.hour_label(scored_hour), return_state=True)
    restarter.join(120)
    assert marker.exists(), "the fault was not injected"
    marker_after = predictions.committed(store, scored_hour)
    if marker_after is not None:  # committed: then complete, with every device scored or named in errors
        assert accounting(store, scored_hour, set(device_ids(DEVICES))) == (0, 0)
    outcome = f"run {state.type.value.lower()}, hour {'committed whole' if marker_after else 'not committed'}"
    score(store, scored_hour)
    assert files(store, scored_hour) == files(reference, scored_hour)
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0)
    fault_table.append(("storage killed", f"Azurite stopped (SIGTERM) after the first batch, back {OUTAGE_SECONDS}s later",
                        f"{outcome}; rerun = undisturbed files", lost, dupes))


AZURE_EXAMPLE = {"subscription-id": "00000000-0000-0000-0000-000000000000", "location": "westeurope",
                 "resource-group": "fleet-rg", "vnet": "fleet-vnet", "security-group": "fleet-nsg",
                 "identity": "/subscriptions/0/resourceGroups/fleet-rg/providers/"
                             "Microsoft.ManagedIdentity/userAssignedIdentities/fleet-id"}
"""Default Azure settings but the names of what to create once: what a VM would get from this environment."""


def test_no_secret_reaches_logs_artifacts_errors_or_pickled_tasks(azurite, az_store, fleet, scored_hour,
                                                                  fault_table, train_hours, monkeypatch):
    monkeypatch.setenv(setting("models.signing-key-env"), SIGNING_KEY)  # versions signed, and verified by the run
    store = fleet(az_store)
    trained = train_fleet(start=layout.hour_label(train_hours[0]), end=layout.hour_label(train_hours[-1]),
                          store=store.url, return_state=True)
    store.remove([models.read_manifest(store)["models"]["dev-00003"]["file"]])
    store.remove(sorted(models.read_manifest(store)["packs"]))
    state = score_fleet(store=store.url, hour=layout.hour_label(scored_hour), return_state=True)
    run_ids = [state.state_details.flow_run_id, trained.state_details.flow_run_id]
    EventsWorker.drain_all()  # this process's events reach the API in the background
    secret = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))]
        artifacts = [str(a.data) for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))]
        parameters = [str(client.read_flow_run(r).parameters) for r in run_ids]
        events = run_events(client, run_ids, until="fleetscore.device.alert")
    commits = [json.dumps(entry, default=str) for name in layout.TABLE_NAMES
               for entry in tables.history(store, scored_hour, name)]
    errors = predictions.read_errors(store, scored_hour)["reason"].tolist()
    manifest = models.read_manifest(store)
    files = telemetry.scan_hour(store, scored_hour).files
    pickled = [cloudpickle.dumps((score_batch, BatchJob(store, rules.grid([scored_hour]), models.manifest_slice(
                                  manifest, names), files, rules.alert_rule(), model_policy())))
               for names in plan(manifest)]
    assert logs and artifacts and errors == ["model file is missing"]
    assert any('"fleetscore.device.alert"' in e for e in events) and len(commits) == len(layout.TABLE_NAMES)
    vm_init = azure.rendered_cloud_init(azure.azure_settings(AZURE_EXAMPLE))  # this environment holds the key
    texts = [*logs, *artifacts, *errors, *parameters, *events, *commits, str(state.result()), str(trained.result()),
             repr(store), vm_init]
    secrets = (secret, SIGNING_KEY)
    hits = sum(s in t for s in secrets for t in texts) + sum(s.encode() in p for s in secrets for p in pickled)
    assert models.read_manifest(store, key=signing_key(), require_signature=True) == manifest  # signed
    assert hits == 0
    fault_table.append(("secrets", "connection string with AccountKey, model signing key; 2 runs' parameters, "
                        f"{len(logs)} log lines, "
                        f"{len(artifacts)} artifacts, {len(events)} events, {len(commits)} table commits' metadata, "
                        f"errors, {len(pickled)} pickled tasks, an Azure VM's cloud-init",
                        "0 occurrences of the key", 0, 0))


def run_events(client, run_ids: list, until: str, timeout: float = 60) -> list[str]:
    """Every event related to some flow runs, as JSON, once one named ``until`` has been stored.

    The API stores events in the background, newest last: the run's own events arrive a few seconds
    after it ends.
    """
    related = EventFilter(related=EventRelatedFilter(id=[f"prefect.flow-run.{r}" for r in run_ids]))
    deadline = time.monotonic() + timeout
    while True:
        page, events = client.read_events(filter=related, limit=50), []
        while page:
            events += [e.model_dump_json() for e in page.events]
            page = client.read_events_page(page.next_page) if page.next_page else None
        if any(f'"{until}"' in e for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(1)


async def serve_and_cancel(store: Store, hour, marker: Path):
    """Serve score-fleet with a Runner (a fresh flow process, as a deployment), cancel it mid-batch."""
    runner = Runner(name="fault-cancel", query_seconds=1)
    flow = load_flow_from_entrypoint(f"{Path(flows.score.__file__)}:score_fleet")
    deployment_id = await runner.aadd_flow(flow, name="fault-cancel")
    serving = asyncio.create_task(runner.start(webserver=False))
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"store": store.url, "hour": layout.hour_label(hour)})
        await wait_until(lambda: marker.exists() and marker.read_text(), 180, "a batch to start")
        await client.set_flow_run_state(run.id, Cancelling(), force=True)
        state = await wait_until_async(lambda: client.read_flow_run(run.id), 90, "the cancellation")
    await runner.astop()
    await asyncio.wait_for(serving, 30)
    return state


async def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)
    return found


async def wait_until_async(read_run, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (state := (await read_run()).state).is_final():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)
    return state


def test_a_cancelled_run_closes_its_cluster_and_commits_nothing(tmp_path, fleet, scored_hour, fault_table,
                                                                monkeypatch):
    store = fleet(Store(tmp_path / "store"))
    marker = tmp_path / "stalled-workers"
    monkeypatch.setenv("FLEETSCORE_FAULT", "stall")
    monkeypatch.setenv("FLEETSCORE_FAULT_MARKER", str(marker))
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PRELOAD", json.dumps([PRELOAD]))
    sigterm = signal.getsignal(signal.SIGTERM)  # Runner.start installs its own
    try:
        state = asyncio.run(serve_and_cancel(store, scored_hour, marker))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert state.is_cancelled(), state
    workers = [int(p) for p in marker.read_text().split()]
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in workers if psutil.pid_exists(p)], timeout=15)
    assert alive == [], "workers outlived the cancelled run"
    assert predictions.committed(store, scored_hour) is None
    assert store.list(layout.table_partition("predictions", scored_hour)) == []
    fault_table.append(("cancelled run", "Prefect cancellation while batches run",
                        "run Cancelled, worker processes gone, nothing written or committed", "-", "-"))
