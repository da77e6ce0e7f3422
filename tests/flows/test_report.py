"""What a run tells its users through Prefect events: per device up to a bound, and one for the fleet."""

import pytest
from prefect.testing.fixtures import asserting_events_worker  # noqa: F401 - Prefect's own recording events client

from flows import report, rules
from scoring import alerts, layout
from scoring.records import Failure

HOUR = layout.parse_hour("2026-11-27T10")
SUMMARY = {"hour": "2026-11-27T10", "predictions": "data/tables/predictions"}


def _row(device: str, tag: str | None = None, longest_run: int = 0, status: str = "scored") -> dict:
    row = alerts.unscored(Failure(device, "x", tag=tag, status=status), rules.grid([HOUR]))
    if status == "scored":
        row |= {"status": "scored", "rows": 720, "anomalies": longest_run, "longest_run": longest_run,
                "min_score": -1.0, "alert": longest_run >= 10}
    return row


def _sent(worker) -> list:
    """The events sent: once per test, since draining stops the worker."""
    worker.drain()
    return worker._client.events


@pytest.fixture
def device_hours():
    """Four devices in alert (one with two sensors in alert), one quiet, two silent."""
    return alerts.device_hours([_row("a", longest_run=12), _row("b", "t1", 30), _row("b", "t2", 11),
                                _row("c", longest_run=20), _row("d", longest_run=10), _row("quiet"),
                                _row("s2", status="silent"), _row("s1", status="silent")])


pytestmark = pytest.mark.usefixtures("prefect_backend")


def test_the_most_anomalous_devices_get_an_event_each_up_to_the_limit(asserting_events_worker, device_hours):
    report.emit_alerts(SUMMARY, device_hours, limit=2)
    events = _sent(asserting_events_worker)
    by_kind = {kind: [e for e in events if e.event == kind] for kind in
               ("fleetscore.device.alert", "fleetscore.device.silent", "fleetscore.fleet.hour")}
    assert len(events) == 2 + 2 + 1
    assert [e.resource.id for e in by_kind["fleetscore.device.alert"]] == ["fleetscore.device.b", "fleetscore.device.c"]
    models = by_kind["fleetscore.device.alert"][0].payload["models"]
    assert [(m["tag"], m["longest_run"]) for m in models] == [("t1", 30), ("t2", 11)]  # every sensor of the device
    assert [e.resource.name for e in by_kind["fleetscore.device.silent"]] == ["s1", "s2"]
    (fleet,) = by_kind["fleetscore.fleet.hour"]
    assert fleet.payload == {**SUMMARY, "devices_in_alert": 4, "alert_events": 2, "devices_silent": 2,
                             "silent_events": 2}


def test_the_limit_defaults_to_the_setting(asserting_events_worker, device_hours):
    report.emit_alerts(SUMMARY, device_hours)
    assert sum(e.event == "fleetscore.device.alert" for e in _sent(asserting_events_worker)) == 4


def test_a_quiet_hour_sends_the_fleet_event_only(asserting_events_worker, device_hours):
    report.emit_alerts(SUMMARY, device_hours[device_hours["device"] == "quiet"])
    (fleet,) = _sent(asserting_events_worker)
    assert fleet.event == "fleetscore.fleet.hour" and fleet.payload["devices_in_alert"] == 0
