"""Delta Lake tables on a local folder and on Azurite, read back by deltalake, polars and DuckDB."""

from __future__ import annotations

import threading
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
from deltalake import DeltaTable

from scoring import layout, tables
from scoring.predict import PREDICTIONS, predictions_table
from scoring.records import Features
from scoring.store import Store

HOUR = layout.parse_hour("2026-11-27T10")
NEXT = HOUR + timedelta(hours=1)
RUN = {"flow_run_id": "run-1", "model_version": "v1", "inputs": ["telemetry/date=2026-11-27/hour=10/a.parquet"]}


def predictions(devices: list[str], score: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({
        "ts": pd.to_datetime(["2026-11-27T10:00:00", "2026-11-27T10:00:05"] * len(devices), utc=True),
        "device": pd.array([d for d in devices for _ in range(2)], dtype="string"),
        "tag": pd.array([None] * 2 * len(devices), dtype="string"),
        "score": [score, -score] * len(devices),
        "anomaly": pd.array([0, 1] * len(devices), dtype="int8"),
    })


def side_tables(devices: list[str]) -> dict[str, pd.DataFrame]:
    """One small frame for each table besides predictions."""
    return {
        "device_hours": pd.DataFrame({"device": pd.array(devices, dtype="string"), "rows": [2] * len(devices)}),
        "errors": pd.DataFrame({"device": pd.array([f"{devices[0]}-broken"], dtype="string"),
                                "reason": pd.array(["no rows"], dtype="string")}),
        "quarantine": pd.DataFrame({"device": pd.array([], dtype="string"), "value": pd.array([], dtype="string")}),
    }


def write_hour(store: Store, hour, batches: list[list[str]], score: float = 0.5) -> dict[str, list]:
    """What a run writes: one predictions file per batch (the workers), one file per other table (the flow)."""
    files = {"predictions": [tables.write_file(store, "predictions", hour, predictions(b, score)) for b in batches]}
    devices = [d for b in batches for d in b]
    return files | {n: [tables.write_file(store, n, hour, f)] for n, f in side_tables(devices).items()}


def expected(batches: list[list[str]], score: float = 0.5) -> pd.DataFrame:
    return pd.concat([predictions(b, score) for b in batches], ignore_index=True)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a fixed order and plain dtypes, so readers that type strings differently compare equal."""
    frame = frame.sort_values(["device", "ts"], ignore_index=True)
    text = [c for c in frame.columns if c not in ("ts", "score", "anomaly")]
    frame[text] = frame[text].astype("object").where(frame[text].notna(), None)
    return frame


def delta(store: Store, name: str) -> DeltaTable:
    where = tables.location(store, name)
    return DeltaTable(where.uri, storage_options=where.options)


def by_polars(store: Store, name: str, hour) -> pd.DataFrame:
    where = tables.location(store, name)
    part = layout.partition_values(hour)
    frame = pl.read_delta(where.uri, storage_options=where.options or None)
    return frame.filter(pl.col("date") == part["date"], pl.col("hour") == part["hour"]).drop("date", "hour").to_pandas()


def by_duckdb(store: Store, name: str, hour) -> pd.DataFrame:
    """DuckDB over the committed files only (its delta extension cannot be downloaded here); blobs through fsspec."""
    uris = delta(store, name).file_uris(
        file_pruning_predicate=[(c, "=", v) for c, v in layout.partition_values(hour).items()])
    con = duckdb.connect()
    if not store.is_local:
        con.register_filesystem(store.fs)
        uris = [u.replace("az://", "abfs://") for u in uris]
    return con.execute("select * from read_parquet(?, hive_partitioning = false)", [uris]).df()


def test_azure_options_follow_the_variables_adlfs_reads():
    azurite = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
               "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
    assert tables.azure_options({"AZURE_STORAGE_CONNECTION_STRING": azurite}) == {
        "account_name": "devstoreaccount1", "account_key": "a2V5",
        "azure_storage_endpoint": "http://127.0.0.1:10000/devstoreaccount1", "allow_http": "true"}
    account = {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}
    assert tables.azure_options(account | {"AZURE_STORAGE_ACCOUNT_KEY": "k"}) == {"account_name": "acct",
                                                                               "account_key": "k"}
    assert tables.azure_options(account | {"AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=s"})["sas_token"] == "sv=1&sig=s"
    principal = {"AZURE_STORAGE_CLIENT_ID": "c", "AZURE_STORAGE_CLIENT_SECRET": "s", "AZURE_STORAGE_TENANT_ID": "t"}
    assert tables.azure_options(account | principal) == {"account_name": "acct", "client_id": "c",
                                                         "client_secret": "s", "tenant_id": "t"}
    assert tables.azure_options(account) == {"account_name": "acct", "use_managed_identity": "true"}
    assert tables.azure_options(account | {"AZURE_CLIENT_ID": "uami"}) == {
        "account_name": "acct", "use_managed_identity": "true", "client_id": "uami"}
    with pytest.raises(ValueError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        tables.azure_options({})


@pytest.mark.parametrize("scheme", ["az", "abfs", "abfss"])
def test_every_azure_store_url_gives_one_table_uri_and_hides_its_key(scheme, azurite):
    where = tables.location(Store(f"{scheme}://fleet/prod"), "predictions")
    assert where.uri == "az://fleet/prod/tables/predictions"
    assert where.options["account_name"] == "devstoreaccount1" and "account_key" in where.options
    assert where.options["account_key"] not in repr(where)


def test_an_hour_is_invisible_until_committed_then_every_reader_gets_its_rows(any_store):
    files = write_hour(any_store, HOUR, [["d1", "d2"], ["d3"]])
    with pytest.raises(FileNotFoundError, match="no commit of 2026-11-27T10"):
        tables.read_table(any_store, "predictions", HOUR)
    assert tables.committed(any_store, HOUR) is None
    assert tables.commit_hour(any_store, HOUR, files, RUN) == 1
    assert tables.committed(any_store, HOUR) == 1
    rows = tables.read_table(any_store, "predictions", HOUR).sort_values(["device", "ts"], ignore_index=True)
    pd.testing.assert_frame_equal(rows, expected([["d1", "d2"], ["d3"]]))  # the frames as written, dtypes too
    want = ordered(expected([["d1", "d2"], ["d3"]]))
    for read in (tables.read_table, by_polars, by_duckdb):
        pd.testing.assert_frame_equal(ordered(read(any_store, "predictions", HOUR)), want, check_dtype=False)
    assert tables.read_table(any_store, "errors", HOUR)["device"].tolist() == ["d1-broken"]
    assert len(tables.read_table(any_store, "quarantine", HOUR)) == 0
    assert delta(any_store, "predictions").metadata().partition_columns == ["date", "hour"]


def test_rescoring_replaces_only_that_hour_and_history_names_each_run(any_store):
    tables.commit_hour(any_store, HOUR, write_hour(any_store, HOUR, [["d1"], ["d2"]]), RUN)
    tables.commit_hour(any_store, NEXT, write_hour(any_store, NEXT, [["d9"]]), RUN)
    tables.write_file(any_store, "predictions", HOUR, predictions(["crashed-run"]))  # written, never committed
    again = write_hour(any_store, HOUR, [["d1"]], score=2.0)
    assert tables.commit_hour(any_store, HOUR, again, RUN | {"flow_run_id": "run-2", "model_version": "v2"}) == 2
    want = ordered(expected([["d1"]], score=2.0))
    for read in (tables.read_table, by_polars, by_duckdb):
        pd.testing.assert_frame_equal(ordered(read(any_store, "predictions", HOUR)), want, check_dtype=False)
    assert tables.read_table(any_store, "predictions", NEXT)["device"].unique().tolist() == ["d9"]
    runs = [(h["flow_run_id"], h["model_version"], h["claim"], h["table_rows"])
            for h in tables.history(any_store, HOUR)]
    assert runs == [("run-2", "v2", 2, 2), ("run-1", "v1", 1, 4)]
    assert tables.history(any_store, HOUR)[0]["inputs"] == RUN["inputs"]
    assert tables.commit_record(any_store, HOUR, 1) == RUN | {"hour": "2026-11-27T10", "claim": 1}


def test_a_batch_written_twice_is_one_file(any_store):
    first = tables.write_file(any_store, "predictions", HOUR, predictions(["d1"]))
    assert tables.write_file(any_store, "predictions", HOUR, predictions(["d1"])) == first
    assert first.rel.startswith("tables/predictions/date=2026-11-27/hour=10/part-") and first.rows == 2


def test_only_fleetscore_tables_and_content_digests_become_paths():
    assert layout.table_dir("errors") == "tables/errors"
    with pytest.raises(ValueError, match="unknown table 'scores'"):
        layout.table_dir("scores")
    with pytest.raises(ValueError, match="hex digest"):
        layout.table_file("predictions", HOUR, "../../x")


def test_a_commit_refuses_a_file_missing_from_storage(any_store):
    files = write_hour(any_store, HOUR, [["d1"]])
    any_store.remove([files["predictions"][0].rel])  # acknowledged, then lost (seen with Azurite killed mid-run)
    with pytest.raises(RuntimeError, match="refusing to commit 2026-11-27T10: 1 written file"):
        tables.commit_hour(any_store, HOUR, files, RUN)
    assert tables.committed(any_store, HOUR) is None


def test_a_commit_refuses_a_table_without_a_file_and_a_changed_schema(any_store):
    files = write_hour(any_store, HOUR, [["d1"]])
    with pytest.raises(ValueError, match=r"no file for table\(s\) \['errors'\]"):
        tables.commit_hour(any_store, HOUR, files | {"errors": []}, RUN)
    tables.commit_hour(any_store, HOUR, files, RUN)
    renamed = predictions(["d1"]).rename(columns={"score": "points"})
    changed = files | {"predictions": [tables.write_file(any_store, "predictions", HOUR, renamed)]}
    with pytest.raises(ValueError, match="needs a migration"):
        tables.commit_hour(any_store, HOUR, changed, RUN)
    assert tables.committed(any_store, HOUR) == 1


def test_a_refused_schema_of_a_later_table_commits_no_table(any_store):
    """The predictions table comes first: a refused device-hours file must not leave it committed alone."""
    tables.commit_hour(any_store, HOUR, write_hour(any_store, HOUR, [["d1"]]), RUN)
    files = write_hour(any_store, HOUR, [["d2"]])
    retyped = side_tables(["d2"])["device_hours"].assign(rows=["two"])
    with pytest.raises(ValueError, match=r"retype \['rows'\] and lack \[\]"):
        tables.commit_hour(any_store, HOUR, files | {"device_hours": [
            tables.write_file(any_store, "device_hours", HOUR, retyped)]}, RUN)
    assert tables.committed(any_store, HOUR) == 1
    assert set(tables.read_table(any_store, "predictions", HOUR)["device"]) == {"d1"}


def test_a_column_new_to_a_table_is_added_and_reads_as_null_in_older_hours(any_store):
    """A table made by an older fleetscore takes files with a new column (device-hours' ``minutes``)."""
    tables.commit_hour(any_store, HOUR, write_hour(any_store, HOUR, [["d1"]]), RUN)
    files = write_hour(any_store, NEXT, [["d2"]])
    wider = side_tables(["d2"])["device_hours"].assign(minutes=pd.array([b"\x01\x02"], dtype=object))
    files["device_hours"] = [tables.write_file(any_store, "device_hours", NEXT, wider)]
    assert tables.commit_hour(any_store, NEXT, files, RUN) == 1
    assert tables.read_table(any_store, "device_hours", NEXT)["minutes"].tolist() == [b"\x01\x02"]
    assert tables.read_table(any_store, "device_hours", HOUR)["minutes"].isna().all()
    assert by_polars(any_store, "device_hours", NEXT)["minutes"].tolist() == [b"\x01\x02"]  # a second reader
    assert by_polars(any_store, "device_hours", HOUR)["minutes"].isna().all()
    assert tables.commit_hour(any_store, NEXT, files, RUN) == 2  # the widened table takes the hour again


def test_two_runs_committing_one_hour_at_once_leave_one_complete_set(any_store):
    """Real concurrent commits (threads released together) on a new table, then on a committed hour."""
    runs = {"a": [["a1", "a2"], ["a3"]], "b": [["b1"], ["b2", "b3"], ["b4"]]}
    outcomes: list[str] = []
    for _ in range(3):
        written = {run: write_hour(any_store, HOUR, batches) for run, batches in runs.items()}
        start, results = threading.Barrier(2), {}

        def commit(run: str) -> None:
            start.wait()
            try:
                results[run] = tables.commit_hour(any_store, HOUR, written[run], RUN | {"flow_run_id": run})
            except tables.HourConflict as exc:
                results[run] = exc

        threads = [threading.Thread(target=commit, args=(run,)) for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        won = [run for run, result in results.items() if isinstance(result, int)]
        assert len(results) == 2 and won, results
        winner = tables.history(any_store, HOUR)[0]["flow_run_id"]
        assert winner in won and tables.committed(any_store, HOUR) == results[winner]
        devices = sorted(d for b in runs[winner] for d in b)
        assert sorted(tables.read_table(any_store, "predictions", HOUR)["device"].unique()) == devices
        assert sorted(by_polars(any_store, "predictions", HOUR)["device"].unique()) == devices
        assert sorted(tables.read_table(any_store, "device_hours", HOUR)["device"]) == devices
        assert tables.read_table(any_store, "errors", HOUR)["device"].tolist() == [f"{devices[0]}-broken"]
        outcomes.append("conflict" if len(won) == 1 else "sequential")
    print("two runs at once, 3 rounds:", outcomes)


def test_compaction_keeps_rows_and_vacuum_removes_replaced_and_uncommitted_files(any_store):
    tables.commit_hour(any_store, HOUR, write_hour(any_store, HOUR, [["d1"], ["d2"], ["d3"]]), RUN)
    tables.commit_hour(any_store, NEXT, write_hour(any_store, NEXT, [["d4"], ["d5"]]), RUN)
    before = {h: ordered(tables.read_table(any_store, "predictions", h)) for h in (HOUR, NEXT)}
    stray = tables.write_file(any_store, "predictions", HOUR, predictions(["crashed-run"]))
    metrics = tables.compact(any_store, HOUR)
    assert metrics["predictions"]["numFilesRemoved"] == 5 and metrics["predictions"]["numFilesAdded"] == 2
    assert len(delta(any_store, "predictions").file_uris()) == 2
    removed = tables.vacuum(any_store, timedelta(0))
    assert len(removed["predictions"]) == 6 and any(stray.path in r for r in removed["predictions"])
    assert not any_store.exists(stray.rel)
    for hour, rows in before.items():
        pd.testing.assert_frame_equal(ordered(tables.read_table(any_store, "predictions", hour)), rows)
        pd.testing.assert_frame_equal(ordered(by_duckdb(any_store, "predictions", hour)), rows, check_dtype=False)
    assert tables.committed(any_store, HOUR) == 1 and tables.committed(any_store, NEXT) == 1


def test_predictions_a_batch_writes_as_dictionary_codes_read_as_plain_text_by_every_reader(tmp_path):
    """A batch hands the writer codes into its few names (a device's per-tag models, null tags); readers see text."""
    store = Store(tmp_path)
    ts = np.array(["2026-11-27T10:00:00", "2026-11-27T10:00:05"], dtype="datetime64[ns]")
    built = predictions_table([
        (Features(("d1", "a"), ts, np.zeros((2, 1))), np.array([0.5, -1.0]), np.array([0, 1]), "h1"),
        (Features(("d1", "b"), ts, np.zeros((2, 1))), np.array([0.1, 0.2]), np.array([0, 0]), "h1"),
        (Features(("d2", None), ts, np.zeros((2, 1))), np.array([0.3, 0.4]), np.array([0, 0]), "h2"),
    ])
    files = write_hour(store, HOUR, [["d1", "d2"]])
    files["predictions"] = [tables.write_file(store, "predictions", HOUR, built)]  # the batch's file instead
    tables.commit_hour(store, HOUR, files, RUN)
    want = ordered(built.cast(PREDICTIONS).to_pandas()).sort_values(["device", "tag", "ts"], ignore_index=True)
    assert want["device"].tolist() == ["d1"] * 4 + ["d2"] * 2 and want["tag"].tolist()[:4] == ["a", "a", "b", "b"]
    for read in (tables.read_table, by_polars, by_duckdb):
        got = ordered(read(store, "predictions", HOUR)).sort_values(["device", "tag", "ts"], ignore_index=True)
        pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
