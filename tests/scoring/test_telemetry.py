import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import rules
from scoring import layout, telemetry
from scoring.batch import batch_jobs, device_ranges, plan
from scoring.generate import device_ids, generate_hour
from scoring.store import parquet_bytes

HOUR = layout.parse_hour("2026-11-27T10")


@pytest.fixture
def hour_frame():
    frame, _ = generate_hour(device_ids(5), HOUR, seed=3)
    return frame


def test_an_hour_round_trips_and_a_batch_reads_only_its_devices(any_store, hour_frame):
    rel = telemetry.write_hour(any_store, HOUR, hour_frame)
    assert rel == "telemetry/date=2026-11-27/hour=10/part-00000.parquet"
    assert telemetry.hour_devices(any_store, telemetry.scan_hour(any_store, HOUR)) == device_ids(5)
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
    assert telemetry.hour_devices(any_store, telemetry.scan_hour(any_store, HOUR)) == device_ids(5)


def test_a_missing_hour_is_named(any_store):
    with pytest.raises(FileNotFoundError, match="no telemetry for 2026-11-27T10"):
        telemetry.read_hour(any_store, HOUR)


UNREADABLE = {
    "empty.parquet": (b"", "file is empty (0 bytes)"),
    "broken.parquet": (b"PAR1 not really", "not readable as Parquet or CSV telemetry"),
    "columns.csv": (b"time,device,value\n2026-11-27T10:00:00Z,dev-00000,1\n", "lacks column(s) ['ts', 'tag']"),
    "numbered.parquet": (parquet_bytes(pd.DataFrame({"ts": [pd.Timestamp(HOUR)], "device": [7], "tag": ["a"],
                                                     "value": [1.0]})), "column device holds int64, not text"),
    "binary.csv": (bytes(range(256)) * 4, "not readable as Parquet or CSV telemetry"),
}


def test_unreadable_files_are_named_with_their_reason_and_the_rest_of_the_hour_is_read(any_store, hour_frame):
    telemetry.write_hour(any_store, HOUR, hour_frame)
    folder = layout.telemetry_dir(HOUR)
    for name, (data, _) in UNREADABLE.items():
        any_store.write(f"{folder}/{name}", data)
    scan = telemetry.scan_hour(any_store, HOUR)
    assert telemetry.hour_devices(any_store, scan) == device_ids(5)
    assert [f.path for f in scan.files] == [f"{folder}/part-00000.parquet"]
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


def test_the_scan_reads_footers_only_rows_are_read_by_batches(any_store, hour_frame):
    rel = telemetry.write_hour(any_store, HOUR, hour_frame)
    data = bytearray(any_store.read(rel))
    data[100:4000] = bytes(3900)  # the first row group's pages; the footer at the end is intact
    any_store.write(rel, bytes(data))
    scan = telemetry.scan_hour(any_store, HOUR)
    assert [f.path for f in scan.files] == [rel] and scan.unreadable == []  # no row was read
    with pytest.raises(OSError, match="Corrupt"):
        telemetry.read_rows(any_store, scan.files, telemetry.DeviceRange(stop="dev-00001"))


def test_a_file_replaced_under_the_same_name_is_read_anew_not_from_the_footers_kept(any_store, hour_frame):
    """A worker keeps the footers it parsed, keyed by each file's size and etag or mtime (long-lived clusters)."""
    telemetry.write_hour(any_store, HOUR, hour_frame)
    before = telemetry.read_rows(any_store, telemetry.scan_hour(any_store, HOUR).files)
    telemetry.write_hour(any_store, HOUR, hour_frame[hour_frame["device"] != "dev-00000"])  # a late rewrite
    after = telemetry.read_rows(any_store, telemetry.scan_hour(any_store, HOUR).files)
    assert "dev-00000" in before.devices and after.devices == [d for d in before.devices if d != "dev-00000"]
    assert len(after.rows) == (hour_frame["device"] != "dev-00000").sum()


def test_a_worker_keeps_every_file_s_statistics_but_the_parsed_footers_of_a_few(any_store, hour_frame):
    """Memory flat in the hour's number of files: what every batch needs is small; the rest is re-read if needed."""
    devices = sorted(hour_frame["device"].unique())
    for i, device in enumerate(devices):  # one file per device, more files than footers are kept
        telemetry.write_hour(any_store, HOUR, hour_frame[hour_frame["device"] == device], name=f"part-{i:05d}")
    files = telemetry.scan_hour(any_store, HOUR).files
    assert len(files) > telemetry._metadata.cache_info().maxsize
    for device in devices + devices[::-1]:  # forwards, then back to files whose parsed footers were let go
        rows = telemetry.read_rows(any_store, files, telemetry.DeviceRange(device, device + "\0"))
        assert rows.devices == [device] and len(rows.rows) == (hour_frame["device"] == device).sum()
    assert telemetry._metadata.cache_info().currsize <= telemetry._metadata.cache_info().maxsize


def manifest_of(devices: list[str], per_pack: int) -> dict:
    """The parts of a manifest that batches are planned from."""
    entries = {d: {"device": d, "tag": None, "pack": f"pack-{i // per_pack}"} for i, d in enumerate(devices)}
    packs = {f"pack-{i}": {"models": devices[i * per_pack:(i + 1) * per_pack]}
             for i in range(-(-len(devices) // per_pack))}
    return {"version": "v1", "models": entries, "packs": packs}


def test_batch_ranges_read_every_device_once_modelled_or_not_and_rows_without_an_id_once(any_store, hour_frame):
    strangers = hour_frame[hour_frame["device"] == "dev-00002"].head(4)
    rows = pd.concat([hour_frame, strangers.assign(device="aaa"), strangers.assign(device="dev-00002x"),
                      strangers.assign(device="zzz"), strangers.assign(device=None)])
    telemetry.write_hour(any_store, HOUR, rows)
    manifest = manifest_of(device_ids(5), per_pack=2)
    batches = plan(manifest)
    assert batches == [["dev-00000", "dev-00001"], ["dev-00002", "dev-00003"], ["dev-00004"]]
    files = telemetry.scan_hour(any_store, HOUR).files
    read = [telemetry.read_rows(any_store, files, span) for span in device_ranges(manifest, batches)]
    assert [r.devices for r in read] == [["aaa", "dev-00000", "dev-00001"], ["dev-00002", "dev-00002x", "dev-00003"],
                                         ["dev-00004", "zzz"]]
    assert sum(len(r.rows) for r in read) == len(rows) - 4
    assert [len(r.quarantined) for r in read] == [0, 0, 4]  # no device id: the range open at the top
    assert set(read[2].quarantined["reason"]) == {"device or tag is missing"}
    kept = telemetry.read_rows(any_store, files, device_ranges(manifest, batches)[1], keep={"dev-00003"})
    assert kept.devices == read[1].devices and set(kept.rows["device"]) == {"dev-00003"}


def test_a_pack_short_of_a_device_that_could_not_be_fitted_still_gives_one_batch_per_pack():
    manifest = manifest_of(device_ids(8), per_pack=2)
    del manifest["models"]["dev-00001"]  # not fitted: its pack holds one model
    manifest["packs"]["pack-0"]["models"].remove("dev-00001")
    assert plan(manifest) == [["dev-00000"], ["dev-00002", "dev-00003"], ["dev-00004", "dev-00005"],
                              ["dev-00006", "dev-00007"]]


def test_batches_follow_devices_not_packs_when_a_pack_holds_models_of_every_range():
    manifest = manifest_of(device_ids(6), per_pack=2)
    manifest["models"]["dev-00001"]["pack"] = "carried"  # kept from an older version, packed apart
    manifest["packs"]["carried"] = {"models": ["dev-00001"]}
    assert plan(manifest) == [["dev-00000", "dev-00001"], ["dev-00002", "dev-00003"], ["dev-00004", "dev-00005"]]
    assert plan({"version": "v1", "models": {}, "packs": {}}) == [[]]
    assert device_ranges({"models": {}}, [[]]) == [telemetry.DeviceRange()]


@pytest.mark.parametrize("statistics", [True, False])
def test_a_range_reads_the_row_groups_that_may_hold_its_devices_or_its_rows_without_an_id(tmp_path, statistics):
    ids = [f"d{i}" for i in range(6) for _ in range(10)] + [None] * 10  # written sorted: no id last
    path = tmp_path / "hour.parquet"
    pq.write_table(pa.table({"device": ids}), path, row_group_size=10, write_statistics=statistics)
    stats = telemetry.DeviceStats.of(pq.read_metadata(path), 0)
    every = list(range(7))
    cases = {("d1", "d3"): [1, 2], ("d1", "d1\0"): [1], ("d5", None): [5, 6], (None, "d0"): [], ("d9", None): [6],
             (None, None): every}
    for (start, stop), groups in cases.items():
        assert telemetry.DeviceRange(start, stop).groups(stats) == (groups if statistics else every)
        assert telemetry.DeviceRange(start, stop).reads(stats.whole()) == bool(groups or not statistics)


def test_a_file_is_read_by_a_range_wherever_one_of_its_row_groups_would_be(tmp_path):
    """The file as one group (what the flow keeps) on files whose statistics are partial, absent or of no id."""
    over_limit = "d9" + "x" * 5000  # longer than the writer keeps statistics for: its group says nothing
    tables = {"partial": pa.table({"device": [f"d{i}" for i in range(3) for _ in range(10)] + [over_limit] * 10}),
              "no id": pa.table({"device": pa.array([None] * 20, pa.string())})}
    for name, table in tables.items():
        pq.write_table(table, tmp_path / name, row_group_size=10)
    pq.ParquetWriter(tmp_path / "no group", pa.schema([("device", pa.string())])).close()
    spans = [telemetry.DeviceRange(*bounds) for bounds in
             [(None, "d0"), ("d0", "d1"), ("d1", "d5"), ("d5", None), (None, None), ("e", None)]]
    for name in [*tables, "no group"]:
        stats = telemetry.DeviceStats.of(pq.read_metadata(tmp_path / name), 0)
        assert [span.reads(stats.whole()) for span in spans] == [bool(span.groups(stats)) for span in spans]
    partial = telemetry.DeviceStats.of(pq.read_metadata(tmp_path / "partial"), 0).whole()
    assert all(span.reads(partial) for span in spans)  # a group without statistics is read by every range
    no_id = telemetry.DeviceStats.of(pq.read_metadata(tmp_path / "no id"), 0).whole()
    assert [span.reads(no_id) for span in spans] == [span.anonymous for span in spans]


def test_a_batch_is_sent_only_the_files_that_may_hold_its_range_and_reads_the_same_rows(any_store, hour_frame):
    """Workers open the footers of the files their range needs, not of every file of the hour."""
    manifest = manifest_of(device_ids(5), per_pack=2)
    batches = plan(manifest)  # dev-00000..01, dev-00002..03, dev-00004 and above
    by_device = hour_frame.set_index("device")
    low = telemetry.write_hour(any_store, HOUR, by_device.loc[device_ids(2)].reset_index(), name="low")
    middle = telemetry.write_hour(any_store, HOUR, by_device.loc[device_ids(4)[2:]].reset_index(), name="middle")
    anonymous = telemetry.write_hour(any_store, HOUR, hour_frame.head(3).assign(device=None), name="no-id")
    csv = f"{layout.telemetry_dir(HOUR)}/sample.csv"
    any_store.write(csv, by_device.loc[["dev-00004"]].reset_index().to_csv(index=False).encode())
    scan = telemetry.scan_hour(any_store, HOUR)
    assert sorted(scan.devices) == sorted([low, middle, anonymous])  # CSV files have no footer to go by
    jobs = batch_jobs(any_store, rules.grid([HOUR]), manifest, batches, scan, rules.alert_rule())
    sent = [sorted(f.path for f in job.files) for job in jobs]
    assert sent == [sorted([low, csv]), sorted([middle, csv]), sorted([anonymous, csv])]
    assert [job.span for job in jobs] == device_ranges(manifest, batches)
    for span, files in zip(device_ranges(manifest, batches), sent):
        alone = telemetry.read_rows(any_store, [f for f in scan.files if f.path in files], span)
        every = telemetry.read_rows(any_store, scan.files, span)
        assert alone.devices == every.devices and alone.rows.equals(every.rows)
        assert alone.quarantined.equals(every.quarantined)


def test_batches_of_two_packs_open_at_every_other_full_pack():
    manifest = manifest_of(device_ids(9), per_pack=2)
    assert plan(manifest, packs_per_batch=2) == [device_ids(9)[:4], device_ids(9)[4:8], device_ids(9)[8:]]
    del manifest["models"]["dev-00001"]  # not fitted: its pack holds one model and opens no batch of its own
    manifest["packs"]["pack-0"]["models"].remove("dev-00001")
    assert plan(manifest, packs_per_batch=2) == [["dev-00000"], ["dev-00002", "dev-00003", "dev-00004", "dev-00005"],
                                                 ["dev-00006", "dev-00007", "dev-00008"]]
    with pytest.raises(ValueError, match="packs-per-batch"):
        plan(manifest, packs_per_batch=0)
