"""The original sample's own telemetry, its CSV as it is, trained per sensor and scored hour by hour.

Its simulator put readings on a 5 s grid but skipped about 60 % of each sensor's
steps at random, so a sensor covers about 40 % of the hour: these runs set
``fleetscore.telemetry.min-coverage`` to 0.25, as a user of that data would.
"""

from pathlib import Path

import dask.config
import pandas as pd
import pytest

from flows.score import score_fleet
from flows.train import train_fleet
from scoring import layout, predictions
from scoring.store import Store

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed"
FIRST = layout.parse_hour("2018-08-28T23")
SCORED = layout.hour_range("2018-08-29T00", "2018-08-29T02")
LAST = layout.parse_hour("2018-08-29T03")  # 12 minutes of readings: a partial hour
pytestmark = [pytest.mark.usefixtures("prefect_backend"),
              pytest.mark.skipif(not (SEED / "sensor_data.csv").is_file(),
                                 reason=f"the original sample's files are not at {SEED}")]


@pytest.fixture(scope="module", autouse=True)
def sparse_sensors():
    with dask.config.set({"fleetscore.telemetry.min-coverage": 0.25}):
        yield


@pytest.fixture(scope="module")
def sample(tmp_path_factory, sparse_sensors) -> Store:
    """A store whose every hour folder holds the sample's whole CSV, byte for byte, as a careless export would."""
    store = Store(tmp_path_factory.mktemp("sample"))
    data = (SEED / "sensor_data.csv").read_bytes()
    for hour in [FIRST, *SCORED, LAST]:
        store.write(f"{layout.telemetry_dir(hour)}/sensor_data.csv", data)
    trained = train_fleet(start=layout.hour_label(FIRST), end=layout.hour_label(FIRST), store=store.url,
                          granularity="sensor")
    assert trained["models"] == 15 and trained["failed"] == 0
    return store


def test_each_hour_scores_every_sensor_on_its_own_readings_and_quarantines_the_others(sample):
    csv = pd.read_csv(SEED / "sensor_data.csv")
    stamps = pd.to_datetime(csv["TS"], utc=True)
    for hour in SCORED:
        summary = score_fleet(store=sample.url, hour=layout.hour_label(hour), granularity="sensor")
        got = predictions.read_predictions(sample, hour)
        in_hour = csv[stamps.dt.floor("h") == hour]
        assert summary["devices_scored"] == 3 and summary["devices_failed"] == 0
        assert len(got) == len(in_hour) and got.groupby(["device", "tag"]).size().min() > 0.3 * 720
        assert set(zip(got["device"], got["tag"])) == {(str(d), str(t)) for d in (1, 2, 3) for t in range(1, 6)}
        assert got["ts"].between(hour, hour + pd.Timedelta(minutes=59, seconds=55)).all()
        quarantined = predictions.read_quarantine(sample, hour)
        assert len(quarantined) == len(csv) - len(in_hour)
        assert quarantined["reason"].str.startswith(f"ts outside {layout.hour_label(hour)}").all()


def test_a_partial_hour_fails_on_coverage_and_scores_with_a_lower_min_coverage(sample):
    state = score_fleet(store=sample.url, hour=layout.hour_label(LAST), granularity="sensor",
                        max_failed_share=1.0, return_state=True)
    assert state.is_completed()
    errors = predictions.read_errors(sample, LAST)
    assert len(errors) == 15 and errors["reason"].str.contains("below min-coverage 25%").all()
    summary = score_fleet(store=sample.url, hour=layout.hour_label(LAST), granularity="sensor", min_coverage=0.05)
    hours = predictions.read_device_hours(sample, LAST)
    assert summary["devices_scored"] == 3 and len(hours) == 15 and (hours["status"] == "scored").all()
    assert hours["coverage"].between(0.05, 0.2).all()  # 12 minutes of the hour, 40 % of steps
