import pandas as pd
import pytest

from scoring import layout, predictions
from scoring.records import Failure
from scoring.store import Store

HOUR = layout.parse_hour("2026-11-27T10")


def frame(device, score):
    return pd.DataFrame({"ts": pd.to_datetime(["2026-11-27T10:00"], utc=True), "device": [device],
                         "tag": pd.array([None], dtype="string"), "score": [score], "anomaly": [int(score < 0)],
                         "model_sha256": ["x"]})


def test_an_hour_is_invisible_until_committed_then_complete(any_store):
    store = any_store
    parts = [predictions.write_part(store, HOUR, frame("d1", 0.5)), predictions.write_part(store, HOUR, frame("d2", -1))]
    with pytest.raises(FileNotFoundError, match="not committed"):
        predictions.read_predictions(store, HOUR)
    marker = predictions.commit(store, HOUR, parts, [Failure("d3", "no rows", "f")], {"rows": 2})
    assert marker["rows"] == 2 and marker["hour"] == "2026-11-27T10"
    assert predictions.read_predictions(store, HOUR)["device"].tolist() == ["d1", "d2"]
    assert predictions.read_errors(store, HOUR).to_dict("records") == [
        {"device": "d3", "tag": None, "file": "f", "reason": "no rows"}]


def test_recommitting_replaces_the_hour_and_removes_leftovers(any_store):
    store = any_store
    first = predictions.write_part(store, HOUR, frame("d1", 0.5))
    predictions.commit(store, HOUR, [first], [], {})
    before = sorted(store.list(layout.predictions_dir(HOUR)))
    predictions.write_part(store, HOUR, frame("crashed-run", 1.0))  # written, never committed
    assert predictions.read_predictions(store, HOUR)["device"].tolist() == ["d1"]
    again = predictions.write_part(store, HOUR, frame("d1", 0.5))
    predictions.commit(store, HOUR, [again], [], {})
    assert again == first
    assert sorted(store.list(layout.predictions_dir(HOUR))) == before


def test_a_commit_that_would_list_a_missing_part_is_refused(any_store):
    part = predictions.write_part(any_store, HOUR, frame("d1", 0.5))
    any_store.remove([part])  # acknowledged, then lost (seen with Azurite killed mid-run)
    with pytest.raises(RuntimeError, match="refusing to commit 2026-11-27T10: 1 written part"):
        predictions.commit(any_store, HOUR, [part], [], {})
    assert predictions.committed(any_store, HOUR) is None
