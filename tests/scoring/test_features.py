import re

import numpy as np
import pandas as pd
import pytest

from scoring.features import infer_specs, normalise, to_features

TS = pd.date_range("2026-11-27T10:00", periods=3, freq="5s", tz="UTC")


def long_frame(rows):
    return normalise(pd.DataFrame(rows, columns=["ts", "device", "tag", "value"]))


def tiny(device="d1", tags=("a", "b")):
    return [(t, device, tag, float(i * 10 + j)) for i, t in enumerate(TS) for j, tag in enumerate(tags)]


def test_normalise_accepts_the_sample_headers():
    frame = pd.DataFrame({"TS": ["2026-11-27T10:00:00Z"], "Device": ["d1"], "Tag": ["a"], "Value": [1]})
    out = normalise(frame)
    assert list(out.columns) == ["ts", "device", "tag", "value"]
    assert str(out["ts"].dt.tz) == "UTC" and out["value"].dtype == "float64"


def test_normalise_names_missing_columns_and_bad_types():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['value'\]"):
        normalise(pd.DataFrame({"ts": [], "device": [], "tag": []}))
    with pytest.raises(ValueError, match="value is not a number"):
        normalise(pd.DataFrame({"ts": [TS[0]], "device": ["d"], "tag": ["a"], "value": ["high"]}))


def test_to_features_pivots_tags_in_the_model_order():
    rows = long_frame(tiny()[::-1])  # row order must not matter
    features, failures = to_features(rows, {("d1", None): ["b", "a"]})
    assert failures == []
    (f,) = features
    assert f.key == ("d1", None)
    np.testing.assert_array_equal(f.X, [[1, 0], [11, 10], [21, 20]])
    assert list(pd.to_datetime(f.ts, utc=True)) == list(TS)


@pytest.mark.parametrize(
    "rows, reason",
    [
        (tiny() + [(TS[0], "d1", "a", 5.0)], "duplicate rows"),
        (tiny()[:-1], "lack a finite value for \\['b'\\]"),
        ([r if r[2] != "a" or r[0] != TS[1] else (*r[:3], np.inf) for r in tiny()], "finite"),
        (tiny(tags=("a", "b", "c")), "tags \\['c'\\] are not among"),
        (tiny(device="d2"), "no telemetry rows"),
    ],
    ids=["duplicates", "missing-value", "infinite", "extra-tag", "no-rows"],
)
def test_to_features_turns_a_bad_device_into_a_failure_and_keeps_the_others(rows, reason):
    good = tiny(device="d0")
    features, failures = to_features(long_frame(good + rows), {("d0", None): ["a", "b"], ("d1", None): ["a", "b"]})
    assert [f.key for f in features] == [("d0", None)]
    assert [f.device for f in failures] == ["d1"]
    assert pytest.approx(features[0].X[0]) == [0.0, 1.0]
    assert re.search(reason, failures[0].reason)


def test_per_sensor_models_get_one_column_each():
    specs = infer_specs(long_frame(tiny()), granularity="sensor")
    assert specs == {("d1", "a"): ["value"], ("d1", "b"): ["value"]}
    features, failures = to_features(long_frame(tiny()), specs)
    assert failures == []
    np.testing.assert_array_equal(features[1].X[:, 0], [1, 11, 21])


def test_infer_specs_refuses_unknown_granularity():
    assert infer_specs(long_frame(tiny())) == {("d1", None): ["a", "b"]}
    with pytest.raises(ValueError, match="granularity must be one of"):
        infer_specs(long_frame(tiny()), granularity="fleet")
