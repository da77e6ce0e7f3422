import numpy as np
import pandas as pd
import pytest

from scoring import tables
from scoring.predict import PREDICTIONS, fit_model, predict, predictions_table
from scoring.records import Features


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    return fit_model(rng.uniform([10, 30], [15, 40], size=(400, 2)), nu=0.01, gamma=0.05)


def test_predict_equals_scikit_learn_and_uses_the_sample_convention(model):
    X = np.array([[12.0, 35.0], [13.0, 33.0], [50.0, 90.0]])
    score, anomaly = predict(model, X)
    np.testing.assert_allclose(score, model.decision_function(X), rtol=0, atol=1e-9)  # fast path
    np.testing.assert_array_equal(anomaly, (model.predict(X) == -1).astype(int))
    assert anomaly.tolist()[-1] == 1 and anomaly.dtype == np.int8


def test_predict_names_a_feature_count_mismatch(model):
    with pytest.raises(ValueError, match="model expects 2 features, telemetry gives 3"):
        predict(model, np.zeros((2, 3)))


def test_fit_model_refuses_non_finite_or_tiny_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_model(np.array([[1.0, np.nan], [2.0, 3.0]]), nu=0.01, gamma=0.1)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_model(np.ones((1, 2)), nu=0.01, gamma=0.1)


def test_predictions_table_lines_up_rows_and_devices():
    ts = np.array(["2026-11-27T10:00", "2026-11-27T10:00:05"], dtype="datetime64[ns]")
    table = predictions_table([
        (Features(("d1", None), ts, np.zeros((2, 1))), np.array([0.5, -1.0]), np.array([0, 1]), "abc"),
        (Features(("d2", "t"), ts[:1], np.zeros((1, 1))), np.array([0.1]), np.array([0]), "def"),
    ])
    assert tables.decoded(table.schema) == PREDICTIONS
    frame = table.to_pandas()
    assert frame["device"].tolist() == ["d1", "d1", "d2"]
    assert frame["tag"].isna().tolist() == [True, True, False]
    assert frame["anomaly"].tolist() == [0, 1, 0]
    assert frame["model_sha256"].tolist() == ["abc", "abc", "def"]
    assert frame["ts"].tolist() == list(pd.to_datetime(ts[[0, 1, 0]], utc=True))
    assert predictions_table([]).num_rows == 0 and tables.decoded(predictions_table([]).schema) == PREDICTIONS


def test_predictions_name_each_device_tag_and_digest_once_in_their_dictionaries():
    """The Parquet writer takes these dictionaries as its pages: a name given twice left bytes of the page unset."""
    ts = np.array(["2026-01-01T00:00:00", "2026-01-01T00:00:05"], dtype="datetime64[ns]")
    table = predictions_table([
        (Features(("d1", "a"), ts, np.zeros((2, 1))), np.array([0.5, -1.0]), np.array([0, 1]), "same"),
        (Features(("d1", "b"), ts, np.zeros((2, 1))), np.array([0.1, 0.2]), np.array([0, 0]), "same"),
        (Features(("d2", None), ts, np.zeros((2, 1))), np.array([0.3, 0.4]), np.array([0, 0]), "other"),
        (Features(("d3", None), ts, np.zeros((2, 1))), np.array([0.3, 0.4]), np.array([0, 0]), "other"),
    ])
    for name, names in [("device", ["d1", "d2", "d3"]), ("tag", ["a", "b"]), ("model_sha256", ["same", "other"])]:
        column = table.column(name).combine_chunks()
        assert sorted(column.dictionary.to_pylist()) == sorted(names), name
    frame = table.to_pandas()
    assert frame["device"].tolist() == ["d1"] * 4 + ["d2"] * 2 + ["d3"] * 2
    assert frame["tag"].tolist()[:4] == ["a", "a", "b", "b"] and frame["tag"].isna().tolist()[4:] == [True] * 4
    assert frame["model_sha256"].tolist() == ["same"] * 4 + ["other"] * 4
