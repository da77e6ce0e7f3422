import pandas as pd
import pytest

from scoring import layout, telemetry
from scoring.generate import device_ids, generate_hour

HOUR = layout.parse_hour("2026-11-27T10")


@pytest.fixture
def hour_frame():
    frame, _ = generate_hour(device_ids(5), HOUR, seed=3)
    return frame


def test_an_hour_round_trips_and_a_batch_reads_only_its_devices(any_store, hour_frame):
    rel = telemetry.write_hour(any_store, HOUR, hour_frame)
    assert rel == "telemetry/date=2026-11-27/hour=10/part-00000.parquet"
    assert telemetry.hour_devices(any_store, HOUR) == device_ids(5)
    some = telemetry.read_hour(any_store, HOUR, ["dev-00001", "dev-00003"])
    assert sorted(some["device"].unique()) == ["dev-00001", "dev-00003"]
    expected = hour_frame[hour_frame["device"].isin(["dev-00001", "dev-00003"])]
    pd.testing.assert_frame_equal(
        some.sort_values(["device", "ts", "tag"], ignore_index=True),
        expected.sort_values(["device", "ts", "tag"], ignore_index=True), check_dtype=False)


def test_the_sample_csv_shape_is_accepted(any_store, hour_frame):
    csv = hour_frame.rename(columns=str.title).rename(columns={"Ts": "TS"})
    any_store.write(f"{layout.telemetry_dir(HOUR)}/sample.csv", csv.to_csv(index=False).encode())
    got = telemetry.read_hour(any_store, HOUR, ["dev-00002"])
    assert len(got) == 720 * 5 and str(got["ts"].dt.tz) == "UTC"
    assert telemetry.hour_devices(any_store, HOUR) == device_ids(5)


def test_a_missing_hour_and_an_unreadable_file_are_named(any_store):
    with pytest.raises(FileNotFoundError, match="no telemetry for 2026-11-27T10"):
        telemetry.read_hour(any_store, HOUR)
    any_store.write(f"{layout.telemetry_dir(HOUR)}/broken.parquet", b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet"):
        telemetry.read_hour(any_store, HOUR)
