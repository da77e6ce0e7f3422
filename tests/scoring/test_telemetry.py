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
    assert telemetry.scan_hour(any_store, HOUR).devices == device_ids(5)
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
    assert telemetry.scan_hour(any_store, HOUR).devices == device_ids(5)


def test_a_missing_hour_is_named(any_store):
    with pytest.raises(FileNotFoundError, match="no telemetry for 2026-11-27T10"):
        telemetry.read_hour(any_store, HOUR)


UNREADABLE = {
    "empty.parquet": (b"", "file is empty (0 bytes)"),
    "broken.parquet": (b"PAR1 not really", "not readable as Parquet or CSV telemetry"),
    "columns.csv": (b"time,device,value\n2026-11-27T10:00:00Z,dev-00000,1\n", "lacks column(s) ['ts', 'tag']"),
    "binary.csv": (bytes(range(256)) * 4, "not readable as Parquet or CSV telemetry"),
}


def test_unreadable_files_are_named_with_their_reason_and_the_rest_of_the_hour_is_read(any_store, hour_frame):
    telemetry.write_hour(any_store, HOUR, hour_frame)
    folder = layout.telemetry_dir(HOUR)
    for name, (data, _) in UNREADABLE.items():
        any_store.write(f"{folder}/{name}", data)
    scan = telemetry.scan_hour(any_store, HOUR)
    assert scan.devices == device_ids(5)
    assert scan.paths == [f"{folder}/part-00000.parquet"]
    reasons = {f.file: f.reason for f in scan.unreadable}
    assert set(reasons) == {f"{folder}/{name}" for name in UNREADABLE}
    for name, (_, reason) in UNREADABLE.items():
        assert reason in reasons[f"{folder}/{name}"], (name, reasons[f"{folder}/{name}"])
    assert all(f.device is None for f in scan.unreadable)
    assert len(telemetry.read_hour(any_store, HOUR)) == len(hour_frame)


def test_inputs_are_listed_with_size_and_version(any_store, hour_frame):
    rel = telemetry.write_hour(any_store, HOUR, hour_frame)
    (entry,) = telemetry.scan_hour(any_store, HOUR).files
    assert entry.path == rel and entry.size == len(any_store.read(rel)) and entry.version
    telemetry.write_hour(any_store, HOUR, hour_frame.head(100))
    (again,) = telemetry.scan_hour(any_store, HOUR).files
    assert again.version != entry.version or again.size != entry.size


def test_an_hour_whose_every_file_is_unreadable_reads_as_no_rows(any_store):
    any_store.write(f"{layout.telemetry_dir(HOUR)}/empty.parquet", b"")
    rows = telemetry.read_hour(any_store, HOUR)
    assert rows.empty and list(rows.columns) == ["ts", "device", "tag", "value"]
    assert str(rows["ts"].dtype) == "datetime64[ns, UTC]"
