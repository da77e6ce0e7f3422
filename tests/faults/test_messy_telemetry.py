"""Telemetry as real fleets deliver it, case by case: nothing lost, and every other device unchanged.

Each case edits the scored hour of a copy of one clean, scored fleet (the kinds of
mess of README "Telemetry as it arrives"), scores it again, and checks that no
device is lost, that the affected device is scored with the expected coverage or
its rows are quarantined with the reason, and that every other device's
predictions equal the clean run's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.score import score_fleet
from flows.train import train_fleet
from scoring import layout, predictions, telemetry
from scoring.generate import device_ids
from scoring.realistic import realistic_hour
from scoring.store import Store, parquet_bytes

from .test_faults import DEVICES, accounting, fleet, score  # noqa: F401 - fleet is a fixture

pytestmark = pytest.mark.usefixtures("prefect_backend")
STEPS = 720


@dataclass
class Expected:
    """What a case should end with: rows scored per affected device, quarantine reasons, file errors."""

    injected: str
    rows: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)


def jitter(store: Store, hour, rows: pd.DataFrame) -> Expected:
    offsets = np.random.default_rng(1).uniform(-0.4, 0.4, len(rows))
    telemetry.write_hour(store, hour, rows.assign(ts=rows["ts"] + pd.to_timedelta(offsets, unit="s")))
    return Expected("every tag of every reading stamped up to 400 ms off the grid, on its own")


def lost_reading(store: Store, hour, rows: pd.DataFrame) -> Expected:
    lost = rows.index[(rows["device"] == "dev-00002") & (rows["tag"] == "sensor3")][100]
    telemetry.write_hour(store, hour, rows.drop(lost))
    return Expected("one reading of one tag lost in transit", rows={"dev-00002": STEPS - 1})


def delivered_twice(store: Store, hour, rows: pd.DataFrame) -> Expected:
    twice = rows[rows["device"] == "dev-00003"].sample(5, random_state=1)
    telemetry.write_hour(store, hour, pd.concat([rows, twice]))
    return Expected("5 rows delivered twice, identical", duplicates={"dev-00003": 5})


def previous_hour(store: Store, hour, rows: pd.DataFrame) -> Expected:
    early = rows[rows["device"] == "dev-00004"].tail(20).assign(ts=lambda f: f["ts"] - pd.Timedelta(hours=1))
    telemetry.write_hour(store, hour, pd.concat([rows, early]))
    return Expected("20 rows of the previous hour in this hour's folder",
                    quarantined={"dev-00004": f"ts outside {layout.hour_label(hour)}"})


def empty_file(store: Store, hour, rows: pd.DataFrame) -> Expected:
    store.write(f"{layout.telemetry_dir(hour)}/part-00001.parquet", b"")
    return Expected("a 0-byte file beside the hour's good file",
                    unreadable={"part-00001.parquet": "file is empty (0 bytes)"})


def not_telemetry(store: Store, hour, rows: pd.DataFrame) -> Expected:
    store.write(f"{layout.telemetry_dir(hour)}/export.csv", b"<html>gateway timeout</html>\n")
    store.write(f"{layout.telemetry_dir(hour)}/other.parquet", telemetry_like_but(rows.head(10)))
    return Expected("an HTML error page saved as .csv, a Parquet file without a tag column",
                    unreadable={"export.csv": "lacks column(s)", "other.parquet": "lacks column(s) ['tag']"})


def telemetry_like_but(rows: pd.DataFrame) -> bytes:
    return parquet_bytes(rows.drop(columns="tag"))


def conflicting(store: Store, hour, rows: pd.DataFrame) -> Expected:
    one = rows[(rows["device"] == "dev-00005") & (rows["tag"] == "sensor2")].iloc[[50]]
    telemetry.write_hour(store, hour, pd.concat([rows, one.assign(value=one["value"] + 1.0)]))
    return Expected("two different values for one device, tag and ts", rows={"dev-00005": STEPS - 1},
                    quarantined={"dev-00005": "conflicting values for the same device, tag and ts"})


CASES: dict[str, Callable[[Store, object, pd.DataFrame], Expected]] = {
    "jitter": jitter, "lost reading": lost_reading, "delivered twice": delivered_twice,
    "previous hour's rows": previous_hour, "empty file": empty_file, "not telemetry": not_telemetry,
    "conflicting values": conflicting,
}


@pytest.fixture(scope="module")
def clean(fleet, tmp_path_factory, scored_hour):
    """One fleet scored on its tidy hour: the reference every case is compared with."""
    store = fleet(Store(tmp_path_factory.mktemp("clean")))
    score(store, scored_hour)
    return store


def copy_of(clean: Store, tmp_path) -> Store:
    """The clean store's telemetry and models, without its predictions: a case must commit its own."""
    shutil.copytree(clean.url, tmp_path / "store", ignore=shutil.ignore_patterns("predictions", "tables"))
    return Store(tmp_path / "store")


def read_inputs_runs(flow_run_id) -> int:
    """How often the flow run's ``read_inputs`` task ran: 1 unless it was retried."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sum(r.run_count for r in runs if r.task_key.startswith("read_inputs") or r.name.startswith("read_inputs"))


@pytest.mark.parametrize("case", CASES)
def test_messy_delivery_loses_nothing_and_leaves_other_devices_unchanged(case, clean, scored_hour, tmp_path,
                                                                          fault_table):
    store = copy_of(clean, tmp_path)
    expected = CASES[case](store, scored_hour, telemetry.read_hour(store, scored_hour))
    state = score_fleet(store=store.url, hour=layout.hour_label(scored_hour), return_state=True)
    assert state.is_completed(), state

    reference = predictions.read_predictions(clean, scored_hour)
    got = predictions.read_predictions(store, scored_hour)
    hours = predictions.read_device_hours(store, scored_hour).set_index("device")
    assert (hours["status"] == "scored").all()
    for device in device_ids(DEVICES):
        mine, theirs = got[got["device"] == device], reference[reference["device"] == device]
        rows = expected.rows.get(device, STEPS)
        assert hours.loc[device, "rows"] == len(mine) == rows, device
        assert hours.loc[device, "duplicates"] == expected.duplicates.get(device, 0), device
        pd.testing.assert_frame_equal(mine.reset_index(drop=True),
                                      theirs[theirs["ts"].isin(mine["ts"])].reset_index(drop=True))
    quarantined = predictions.read_quarantine(store, scored_hour)
    said = {d: set(g["reason"]) for d, g in quarantined.groupby("device")}
    assert set(said) == set(expected.quarantined)
    for device, reason in expected.quarantined.items():
        assert all(r.startswith(reason) for r in said[device]), said[device]
    errors = predictions.read_errors(store, scored_hour)
    named = {f.rsplit("/", 1)[-1]: r for f, r in zip(errors["file"], errors["reason"])}
    assert errors["device"].isna().all() and set(named) == set(expected.unreadable)
    for name, reason in expected.unreadable.items():
        assert reason in named[name], named[name]
    summary = state.result()
    assert (summary["devices_failed"], summary["files_unreadable"]) == (0, len(expected.unreadable))
    assert read_inputs_runs(state.state_details.flow_run_id) == 1  # a bad file is not retried
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0)
    outcome = (", ".join(f"{d} scored on {n} of {STEPS} steps" for d, n in expected.rows.items())
               or f"all {DEVICES} devices scored on {STEPS} steps")
    if expected.quarantined:
        outcome += "; rows quarantined: " + "; ".join(expected.quarantined.values())
    if expected.unreadable:
        outcome += "; named in errors, hour committed: " + "; ".join(expected.unreadable.values())
    fault_table.append(("messy delivery", expected.injected, outcome + "; other devices unchanged", lost, dupes))


def test_a_whole_fleet_delivered_as_real_fleets_do_trains_and_scores_every_device(tmp_path, train_hours,
                                                                                  scored_hour, fault_table):
    store = Store(tmp_path)
    ids = device_ids(DEVICES)
    for hour in [*train_hours, scored_hour]:
        frame, _ = realistic_hour(ids, hour, seed=2, anomaly_rate=0.0, loss=0.005, duplicates=0.002)
        telemetry.write_hour(store, hour, frame)
    trained = train_fleet(start=layout.hour_label(train_hours[0]), end=layout.hour_label(train_hours[-1]),
                          store=store.url)
    assert trained["models"] == DEVICES and trained["failed"] == 0
    summary = score_fleet(store=store.url, hour=layout.hour_label(scored_hour))
    hours = predictions.read_device_hours(store, scored_hour)
    assert summary["devices_scored"] == DEVICES and summary["devices_failed"] == summary["devices_silent"] == 0
    assert (hours["status"] == "scored").all() and hours["coverage"].between(0.95, 1.0).all()
    assert hours["duplicates"].sum() > 0 and summary["quarantined_rows"] > 0  # late rows of the hour before
    lost, dupes = accounting(store, scored_hour, set(ids))
    assert (lost, dupes) == (0, 0)
    fault_table.append(("messy fleet", "every device jittered, 0.5 % lost, 0.2 % duplicated, late rows, "
                        "in training and scoring", f"{trained['models']} of {DEVICES} trained, all scored, "
                        f"coverage {hours['coverage'].min():.3f} to {hours['coverage'].max():.3f}", lost, dupes))
