import pandas as pd
import pytest

from scoring import layout, predictions, tables
from scoring.records import Failure
from scoring.store import Store
from scoring.telemetry import InputFile

HOUR = layout.parse_hour("2026-11-27T10")
STATS = {"flow_run_id": "run-1", "model_version": "v1", "rows": 2}


def frame(device, score):
    return pd.DataFrame({"ts": pd.to_datetime(["2026-11-27T10:00"], utc=True), "device": pd.array([device], "string"),
                         "tag": pd.array([None], dtype="string"), "score": [float(score)],
                         "anomaly": pd.array([int(score < 0)], "int8"), "model_sha256": pd.array(["x"], "string")})


def test_an_hour_is_invisible_until_committed_then_complete(any_store):
    store = any_store
    parts = [predictions.write_part(store, HOUR, frame(d, s)) for d, s in (("d1", 0.5), ("d2", -1))]
    with pytest.raises(FileNotFoundError, match="no commit of 2026-11-27T10"):
        predictions.read_predictions(store, HOUR)
    inputs = [InputFile("telemetry/date=2026-11-27/hour=10/a.parquet", 10, "etag-1")]
    record = predictions.commit(store, HOUR, parts, [Failure("d3", "no rows", "f")], STATS, inputs=inputs)
    assert record == predictions.committed(store, HOUR)
    assert record["rows"] == 2 and record["hour"] == "2026-11-27T10" and record["claim"] == 1
    assert record["inputs"] == [{"path": inputs[0].path, "size": 10, "version": "etag-1"}]
    pd.testing.assert_frame_equal(predictions.read_predictions(store, HOUR),
                                  pd.concat([frame("d1", 0.5), frame("d2", -1)], ignore_index=True))
    assert predictions.read_errors(store, HOUR).astype(object).where(lambda f: f.notna(), None).to_dict("records") == [
        {"device": "d3", "tag": None, "file": "f", "reason": "no rows"}]
    assert len(predictions.read_quarantine(store, HOUR)) == 0 and len(predictions.read_device_hours(store, HOUR)) == 0


def test_recommitting_replaces_the_hour_and_a_crashed_runs_part_is_never_read(any_store):
    store = any_store
    first = predictions.write_part(store, HOUR, frame("d1", 0.5))
    predictions.commit(store, HOUR, [first], [], STATS)
    predictions.write_part(store, HOUR, frame("crashed-run", 1.0))  # written, never committed
    assert predictions.read_predictions(store, HOUR)["device"].tolist() == ["d1"]
    again = predictions.write_part(store, HOUR, frame("d1", 0.5))
    assert again == first  # the same rows, the same file
    record = predictions.commit(store, HOUR, [again], [Failure("d2", "no rows")], STATS | {"flow_run_id": "run-2"})
    assert record["claim"] == 2 and record["flow_run_id"] == "run-2"
    assert predictions.read_predictions(store, HOUR)["device"].tolist() == ["d1"]
    assert predictions.read_errors(store, HOUR)["device"].tolist() == ["d2"]


def test_an_hour_without_predictions_is_committed_with_its_errors(any_store):
    predictions.commit(any_store, HOUR, [], [Failure("d1", "no rows")], STATS | {"rows": 0})
    assert predictions.committed(any_store, HOUR)["rows"] == 0
    assert predictions.read_predictions(any_store, HOUR).empty
    assert predictions.read_errors(any_store, HOUR)["device"].tolist() == ["d1"]


def test_a_commit_that_would_list_a_missing_part_is_refused(any_store):
    part = predictions.write_part(any_store, HOUR, frame("d1", 0.5))
    any_store.remove([part.rel])  # acknowledged, then lost (seen with Azurite killed mid-run)
    with pytest.raises(RuntimeError, match="refusing to commit 2026-11-27T10: 1 written file"):
        predictions.commit(any_store, HOUR, [part], [], STATS)
    assert predictions.committed(any_store, HOUR) is None
    assert tables.committed(Store(any_store.url), HOUR) is None


def test_the_quarantine_files_batches_write_are_committed_and_counted(any_store):
    rows = pd.DataFrame({"ts": ["2026-11-27 09:59:55+00:00", "soon"], "device": ["d1", "d2"], "tag": ["a", "b"],
                         "value": ["1.0", "2.0"], "reason": ["ts outside 2026-11-27T10", "ts is not a timestamp"],
                         "file": ["f1", "f2"]}).astype("string")
    files = [predictions.write_quarantine(any_store, HOUR, [rows.iloc[[i]]]) for i in range(2)]
    assert predictions.write_quarantine(any_store, HOUR, [rows.iloc[[]], None]) is None  # no rows, no file
    record = predictions.commit(any_store, HOUR, [], [], STATS | {"rows": 0}, files)
    assert record["quarantined_rows"] == 2
    read = predictions.read_quarantine(any_store, HOUR)
    pd.testing.assert_frame_equal(read, rows[list(read.columns)].sort_values(list(read.columns), ignore_index=True))
