"""Hourly in production: ``fleetscore serve`` against a real Prefect server, runs read back via its API.

One module, one trained fleet, one server (``prefect_server``) and one served
process: creating the deployment, triggering and waiting for a run, then a
backfill, as an operator would, and everything checked through the API.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter,
    LogFilterFlowRunId,
)
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.schemas.objects import FlowRun
from prefect.events.worker import EventsWorker
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.exceptions import ObjectNotFound
from prefect.states import Scheduled

from flows import cli, report, rules
from flows.backfill import hours_to_score
from flows.deploy import DEFAULT_CRON, HOURLY
from flows.score import score_fleet
from flows.train import train_fleet
from scoring import alerts, layout, predictions, telemetry
from scoring.records import Failure
from scoring.store import Store

from ..conftest import TIDY_ALERT_RULE
from .conftest import prefect_api, stop_group

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 150
SMALL_CLUSTER_ENV = {  # the served runs' clusters, as tests/conftest.py configures in-process ones
    "DASK_FLEETSCORE__CLUSTER__LOCAL__DASHBOARD_ADDRESS": "None",
    "DASK_FLEETSCORE__CLUSTER__LOCAL__MEMORY_LIMIT": "2GiB",
    "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    "DASK_FLEETSCORE__ALERT__ANOMALOUS_STEPS": str(TIDY_ALERT_RULE["anomalous-steps"]),
    "DASK_FLEETSCORE__ALERT__WITHIN_STEPS": str(TIDY_ALERT_RULE["within-steps"]),
}


@pytest.fixture(scope="module")
def api(prefect_server):
    with prefect_api(prefect_server["PREFECT_API_URL"]):
        yield prefect_server


@pytest.fixture(scope="module")
def fleet(api, tmp_path_factory, write_fleet, train_hours):
    """A trained fleet of 12 devices in 4 packs, so a run has two batches (of two packs) to report."""
    store = Store(tmp_path_factory.mktemp("store"))
    anomalies = write_fleet(store, devices=12)
    train_fleet(start=layout.hour_label(train_hours[0]), end=layout.hour_label(train_hours[-1]),
                store=store.url, devices_per_pack=3)
    return store, anomalies


@pytest.fixture(scope="module")
def client(api) -> SyncPrefectClient:
    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture(scope="module")
def served(api, fleet, client, tmp_path_factory):
    """``fleetscore serve`` in its own process; yields the hourly deployment once it is registered."""
    store, _ = fleet
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("fleetscore")), "serve", "--store", store.url,
             "--adapt-min", "1", "--adapt-max", "1"],
            cwd=ROOT, env=os.environ | api | SMALL_CLUSTER_ENV, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        yield _wait_for_deployment(client, process, log)
    finally:
        stop_group(process, sig=signal.SIGINT)  # as Ctrl-C: the runner pauses its schedule


def _wait_for_deployment(client: SyncPrefectClient, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"fleetscore serve exited:\n{log.read_text()[-3000:]}"
        try:
            deployment = client.read_deployment_by_name(f"score-fleet/{HOURLY}")
        except ObjectNotFound:
            time.sleep(1)
            continue
        if "Your deployments are being served" in log.read_text():
            return deployment
        time.sleep(1)
    raise TimeoutError(f"no served deployment within {RUN_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def _wait_final(client: SyncPrefectClient, run_id: UUID) -> FlowRun:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {run_id} not finished within {RUN_TIMEOUT}s: {run.state}")


@pytest.fixture(scope="module")
def triggered(served, client, scored_hour) -> FlowRun:
    """A run of the served deployment, created through the API in its 11:05 slot, started late, finished.

    It has no ``hour`` parameter, as scheduled runs: it must score the hour before its slot (10:00).
    """
    slot = scored_hour + timedelta(hours=1, minutes=5)
    run = client.create_flow_run_from_deployment(served.id, state=Scheduled(scheduled_time=slot))
    return _wait_final(client, run.id)


def _artifacts(client: SyncPrefectClient, run_id: UUID) -> dict[str, object]:
    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a for a in found}


def test_serve_registers_an_hourly_utc_schedule_with_the_given_parameters(served, fleet):
    store, _ = fleet
    (schedule,) = served.schedules
    assert schedule.active
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (DEFAULT_CRON, "UTC")
    assert served.parameters == {"store": store.url, "adapt_minimum": 1, "adapt_maximum": 1}
    assert served.entrypoint == "flows.score.score_fleet"


def test_a_late_run_scores_the_hour_before_its_slot_and_is_named_after_it(triggered, fleet, scored_hour):
    store, _ = fleet
    assert triggered.state.is_completed(), triggered.state
    assert "hour" not in triggered.parameters
    assert triggered.name == f"score-{layout.hour_label(scored_hour)}"
    marker = predictions.committed(store, scored_hour)
    assert marker is not None and marker["models_scored"] == 12


def test_the_run_shows_summary_table_and_picture(triggered, client, fleet, scored_hour):
    _, anomalies = fleet
    key = f"score-{layout.hour_label(scored_hour).lower()}"
    artifacts = _artifacts(client, triggered.id)
    assert set(artifacts) == {f"{key}-summary", f"{key}-devices-in-alert", f"{key}-anomaly-map"}
    summary = artifacts[f"{key}-summary"].data
    injected = sorted(set(anomalies["device"]))
    assert summary.startswith(f"# Fleet scoring {layout.hour_label(scored_hour)} UTC\n\n"
                              f"**{len(injected)} devices in alert, 0 silent** of 12.")
    assert "| devices scored | 12 |" in summary and "| largest cluster workers | 1 |" in summary
    assert re.search(r"\| dashboard \| \[http[^]]+\]\(http", summary)
    top = json.loads(artifacts[f"{key}-devices-in-alert"].data)
    assert sorted(row["device"] for row in top) == injected and top[0]["anomalies"] >= 3
    picture = artifacts[f"{key}-anomaly-map"].data
    svg = base64.b64decode(re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", picture)[1]).decode()
    assert svg.startswith("<svg") and f">{top[0]['device']}</text>" in svg and "rgba(214,39,40" in svg


def test_every_device_in_alert_emits_an_event_an_automation_can_match(triggered, client, fleet, scored_hour):
    _, anomalies = fleet
    injected = sorted(set(anomalies["device"]))
    names = EventFilter(event=EventNameFilter(name=["fleetscore.device.alert"]),
                        related=EventRelatedFilter(id=[f"prefect.flow-run.{triggered.id}"]))
    deadline = time.monotonic() + 30  # the served process ships its events in the background
    while len(events := client.read_events(filter=names, limit=50).events) < len(injected) \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert sorted(e.resource.id for e in events) == [f"fleetscore.device.{d}" for d in injected]
    assert {e.payload["hour"] for e in events} == {layout.hour_label(scored_hour)}
    assert all(e.payload["models"][0]["longest_run"] >= 3 for e in events)


class _Webhook(BaseHTTPRequestHandler):
    """A notification target on 127.0.0.1: keeps every JSON body it receives."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_readme_automation_notifies_a_team_of_a_device_in_alert(api, client, tmp_path, scored_hour):
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    block = CustomWebhookNotificationBlock(name="team", url=f"http://127.0.0.1:{server.server_port}/hook",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block_id = block.save("fleetscore-test-team", overwrite=True)
    readme = (ROOT / "README.md").read_text()
    automation = re.search(r"# fleetscore-alerts.yaml[^\n]*\n(.*?)```", readme, re.S)[1]
    (tmp_path / "alerts.yaml").write_text(automation.replace("<your notification block's id>", str(block_id)))
    created = subprocess.run([str(Path(sys.executable).with_name("prefect")), "automation", "create",
                              "--from-file", str(tmp_path / "alerts.yaml")],
                             env=os.environ | api, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    device_hours = alerts.device_hours([{**alerts.unscored(Failure("dev-readme", "x"), rules.grid([scored_hour])),
                                         "status": "scored", "rows": 720, "anomalies": 9, "longest_run": 9,
                                         "min_score": -3.0, "alert": True}])
    deadline = time.monotonic() + 90
    while not _Webhook.received and time.monotonic() < deadline:
        # The server's triggers service picks a new automation up within seconds, not at once: an
        # event sent before that is not matched, so the run's event is sent again until one is.
        report.emit_alerts({"hour": layout.hour_label(scored_hour), "predictions": "p"}, device_hours)
        EventsWorker.drain_all()
        time.sleep(5)
    server.shutdown()
    assert {m["subject"] for m in _Webhook.received} == {"fleetscore: dev-readme needs a look"}
    assert _Webhook.received[0]["body"].startswith(f"fleetscore.device.alert in {layout.hour_label(scored_hour)}")


def test_progress_is_logged_per_batch_from_the_flow_process(triggered, client):
    deadline = time.monotonic() + 30  # the served process ships its logs in the background
    while True:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[triggered.id])))
        messages = [entry.message for entry in logs]
        if any(m.startswith("batch 2/2 done") for m in messages) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any(m.startswith("batch 1/2 done") for m in messages), messages
    assert any(m.startswith("batch 2/2 done") for m in messages), messages


def test_backfill_over_3_hours_commits_3_hours_on_one_cluster(triggered, fleet, client, train_hours,
                                                                scored_hour, capsys):
    store, _ = fleet
    hours = [*train_hours, scored_hour]
    before = [h for h in hours if predictions.committed(store, h) is None]
    assert before == train_hours  # the triggered run committed the scored hour already
    args = ["backfill", "--store", store.url, "--from", layout.hour_label(hours[0]),
            "--to", layout.hour_label(hours[-1])]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert all(f"{layout.hour_label(h)}: 100%" in err for h in train_hours)  # local runs: a progress bar
    assert summary == {"hours": 3, "scored": [layout.hour_label(h) for h in train_hours], "skipped": 1}
    assert all(predictions.committed(store, h) for h in hours)
    backfill = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [
        f"backfill-{layout.hour_label(hours[0])}..{layout.hour_label(hours[-1])}"]}))
    (parent,) = backfill
    hourly = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
    assert sorted(r.name for r in hourly) == [f"score-{layout.hour_label(h)}" for h in train_hours]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["scored"] == []
    assert hours_to_score.fn(store, hours, force=True) == hours  # --force rescores committed hours

    late = telemetry.read_hour(store, hours[0]).head(10)  # a file delivered after its hour was committed
    telemetry.write_hour(store, hours[0], late.assign(ts=late["ts"] - timedelta(hours=1)), name="late-00001")
    assert cli.main([*args, "--changed"]) == 0
    assert json.loads(capsys.readouterr().out)["scored"] == [layout.hour_label(hours[0])]
    assert len(predictions.read_quarantine(store, hours[0])) == 10
    assert predictions.committed(store, hours[0])["inputs"][0]["path"].endswith("late-00001.parquet")
    assert cli.main([*args, "--changed"]) == 0
    assert json.loads(capsys.readouterr().out)["scored"] == []


def test_a_run_expecting_other_models_fails_before_scoring(fleet, scored_hour):
    store, _ = fleet
    state = score_fleet(store=store.url, hour=layout.hour_label(scored_hour), granularity="sensor",
                        return_state=True)
    assert state.is_failed()
    assert "models are per device, the run expects per sensor" in state.message


def test_prefect_yaml_deploys_both_flows_to_the_docker_pool(api, client):
    """Last in the module: it redeploys ``score-fleet/hourly`` onto the pool, as an operator would."""
    image, store = "registry.example/fleetscore:0.1.0", "az://fleet/prod"
    env = os.environ | api | {"FLEETSCORE_IMAGE": image, "FLEETSCORE_STORE": store}
    prefect = str(Path(sys.executable).with_name("prefect"))
    for command in (["work-pool", "create", "fleetscore-docker", "--type", "docker"], ["--no-prompt", "deploy", "--all"]):
        done = subprocess.run([prefect, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    workdir = re.search(r"^WORKDIR (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[1]
    hourly, backfill = (client.read_deployment_by_name(n) for n in ("score-fleet/hourly", "backfill-fleet/on-demand"))
    for deployment in (hourly, backfill):
        assert deployment.work_pool_name == "fleetscore-docker"
        assert deployment.job_variables["image"] == image and deployment.parameters["store"] == store
        assert deployment.pull_steps == [  # the flow run starts where the image has the code
            {"prefect.deployments.steps.set_working_directory": {"directory": workdir}}]
    assert [(s.schedule.cron, s.schedule.timezone) for s in hourly.schedules] == [(DEFAULT_CRON, "UTC")]
    assert backfill.schedules == []
