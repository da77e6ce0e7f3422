"""The realistic generator sends what real fleets send, in the shares asked for, reproducibly."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from scoring import layout, telemetry
from scoring.generate import STEP_SECONDS, TAG_RANGES, device_ids
from scoring.realistic import LATE_STEPS, realistic_hour
from scoring.store import Store

HOUR = layout.parse_hour("2026-11-27T10")
DEVICES = device_ids(100)
READINGS = len(DEVICES) * 3600 // STEP_SECONDS * len(TAG_RANGES)
TIDY = {"jitter": 0.0, "loss": 0.0, "duplicates": 0.0, "late": 0.0}
"""Delivery without mess: one row per reading, on the grid."""


def in_hour(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["ts"] >= pd.Timestamp(HOUR)]


def grid_step(frame: pd.DataFrame) -> pd.Series:
    """Nearest 5-second step of each row since the hour's start."""
    return ((frame["ts"] - pd.Timestamp(HOUR)) / pd.Timedelta(seconds=STEP_SECONDS)).round().astype(int)


def wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Tidy-delivered telemetry as one column per tag, indexed by device and ts."""
    return frame.pivot(index=["device", "ts"], columns="tag", values="value")


@pytest.fixture(scope="module")
def hour():
    return realistic_hour(DEVICES, HOUR, seed=5, anomaly_rate=0.2)


def test_each_tag_is_stamped_on_its_own_within_the_jitter_of_its_grid_time(hour):
    frame = in_hour(hour[0])
    offset = frame["ts"] - pd.Timestamp(HOUR) - grid_step(frame) * pd.Timedelta(seconds=STEP_SECONDS)
    assert offset.abs().max() <= pd.Timedelta(milliseconds=300)
    assert offset.abs().mean() > pd.Timedelta(milliseconds=100)  # spread over the bound, not stuck on the grid
    stamps = frame.assign(step=grid_step(frame)).groupby(["device", "step"], observed=True)["ts"].nunique()
    assert (stamps > 1).mean() > 0.99  # the tags of one reading arrive at different times


def test_lost_and_duplicated_readings_come_in_the_shares_asked_for():
    frame, _ = realistic_hour(DEVICES, HOUR, seed=5, jitter=0.3, loss=0.01, duplicates=0.004, late=0.0)
    duplicated = frame.duplicated(keep="first")
    readings = frame[~duplicated]
    assert readings.assign(step=grid_step(readings)).duplicated(["device", "tag", "step"]).sum() == 0
    assert 1 - len(readings) / READINGS == pytest.approx(0.01, rel=0.15)
    assert duplicated.sum() / len(readings) == pytest.approx(0.004, rel=0.15)


def test_late_rows_are_the_previous_hours_last_readings_missing_from_its_own_file():
    now, _ = realistic_hour(DEVICES, HOUR, seed=5, late=0.002)
    before, _ = realistic_hour(DEVICES, HOUR - timedelta(hours=1), seed=5, late=0.002)
    late = now[now["ts"] < pd.Timestamp(HOUR)]
    assert len(late) / READINGS == pytest.approx(0.002, rel=0.15)
    assert late["ts"].min() >= pd.Timestamp(HOUR) - pd.Timedelta(seconds=STEP_SECONDS * LATE_STEPS + 1)
    assert not late.merge(before, on=["ts", "device", "tag"]).size  # never in the hour they belong to
    assert (before["ts"] < pd.Timestamp(HOUR)).all()  # and an hour's own late rows are not in its file


def test_anomalies_are_recorded_and_their_readings_leave_the_tags_range(hour):
    frame, anomalies = hour
    assert list(anomalies.columns) == ["device", "tag", "start", "end", "kind"]
    assert 10 <= len(anomalies) <= 30 and set(anomalies["kind"]) == {"spike", "offset", "stuck"}
    minutes = (anomalies["end"] - anomalies["start"]) / pd.Timedelta(minutes=1)
    assert minutes.between(1 - STEP_SECONDS / 60, 5).all()
    low = frame["tag"].map({t: r[0] for t, r in TAG_RANGES.items()}).astype(float)
    high = frame["tag"].map({t: r[1] for t, r in TAG_RANGES.items()}).astype(float)
    out = frame[(frame["value"] < low) | (frame["value"] > high)]
    jitter = pd.Timedelta(milliseconds=300)
    for a in anomalies.itertuples():
        rows = frame[(frame["device"] == a.device) & (frame["tag"] == a.tag)
                     & frame["ts"].between(a.start - jitter, a.end + jitter)]
        assert len(rows) >= 0.9 * ((a.end - a.start) / pd.Timedelta(seconds=STEP_SECONDS) + 1)
        assert rows.index.isin(out.index).all(), a
    normal = ~frame["device"].isin(anomalies["device"])
    assert (normal & frame.index.isin(out.index)).sum() < 0.001 * normal.sum()


def test_signals_are_smooth_tags_correlated_and_devices_have_their_own_baselines():
    values = wide(realistic_hour(device_ids(20), HOUR, seed=1, anomaly_rate=0.0, **TIDY)[0])
    for device, matrix in values.groupby(level="device"):
        x = matrix.to_numpy()
        corr = np.corrcoef(x.T)
        assert corr[np.triu_indices(len(TAG_RANGES), 1)].min() > 0.2, device
        lag1 = [np.corrcoef(x[1:, t], x[:-1, t])[0, 1] for t in range(x.shape[1])]
        assert min(lag1) > 0.4, device  # AR(1): each reading close to the one before, not white noise
    means = values.groupby(level="device").mean()
    spread = values.groupby(level="device").std().mean()
    assert (means.std() > 2 * spread / np.sqrt(len(values) // 20)).all()
    assert (means.std() > 0.5 * spread).all()  # baselines differ by about the noise, not by rounding


def test_the_daily_drift_follows_one_sinusoid_over_the_day():
    days = [HOUR + timedelta(hours=h) for h in range(24)]
    means = np.array([wide(realistic_hour(["dev-00007"], h, anomaly_rate=0.0, **TIDY)[0]).mean() for h in days])
    angle = 2 * np.pi * np.array([h.hour for h in days]) / 24
    basis = np.c_[np.ones(24), np.sin(angle), np.cos(angle)]
    fitted = basis @ np.linalg.lstsq(basis, means, rcond=None)[0]
    explained = 1 - ((means - fitted) ** 2).sum(axis=0) / ((means - means.mean(axis=0)) ** 2).sum(axis=0)
    assert explained.mean() > 0.6
    width = np.array([r[1] - r[0] for r in TAG_RANGES.values()])
    assert (np.abs(np.diff(means, axis=0)) < 0.05 * width).all()  # hour to hour, the drift stays small


def test_the_same_arguments_give_the_same_frames(hour):
    frame, anomalies = realistic_hour(DEVICES, HOUR, seed=5, anomaly_rate=0.2)
    pd.testing.assert_frame_equal(frame, hour[0])
    pd.testing.assert_frame_equal(anomalies, hour[1])
    other, _ = realistic_hour(DEVICES, HOUR, seed=6, anomaly_rate=0.2)
    assert not np.array_equal(other["value"].to_numpy()[:100], frame["value"].to_numpy()[:100])


def test_a_device_is_the_same_in_any_fleet():
    alone = wide(realistic_hour(["dev-00003"], HOUR, seed=2, anomaly_rate=0.0, **TIDY)[0])
    among = wide(realistic_hour(device_ids(10), HOUR, seed=2, anomaly_rate=0.0, **TIDY)[0]).loc[["dev-00003"]]
    means = pd.concat([alone.mean(), among.mean()], axis=1)
    width = np.array([r[1] - r[0] for r in TAG_RANGES.values()])
    assert (means.diff(axis=1).iloc[:, 1].abs() < 0.05 * width).all()


@pytest.mark.parametrize("knob", [{"jitter": 2.5}, {"loss": 1.0}, {"duplicates": -0.1}, {"late": 0.5}])
def test_impossible_delivery_settings_are_refused(knob):
    with pytest.raises(ValueError, match=next(iter(knob))):
        realistic_hour(DEVICES[:1], HOUR, **knob)


def test_the_command_writes_a_realistic_hour_that_the_store_reads_back(tmp_path):
    store = Store(str(tmp_path))
    assert main(["generate", "--store", str(tmp_path), "--devices", "4", "--hours", "1",
                 "--end", layout.hour_label(HOUR), "--realistic", "--duplicates", "0.05"]) == 0
    rows = telemetry.read_hour(store, HOUR)
    assert (rows["ts"] < pd.Timestamp(HOUR)).any() and rows.duplicated().any()
    assert rows["ts"].dt.microsecond.any()  # off the grid
    anomalies = pd.read_parquet(store.path(layout.anomalies_file(HOUR)), filesystem=store.fs)
    assert "kind" in anomalies.columns


def test_delivery_flags_without_realistic_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--loss only apply with --realistic"):
        main(["generate", "--store", str(tmp_path), "--devices", "1", "--hours", "1", "--loss", "0.1"])
