import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from scoring import features, layout, telemetry
from scoring.align import Grid, align
from scoring.features import infer_specs, to_features, validate
from scoring.generate import device_ids
from scoring.realistic import realistic_hour
from scoring.store import Store

HOUR = layout.parse_hour("2026-11-27T10")
TS = pd.date_range(HOUR, periods=3, freq="5s", tz="UTC")


def grid(**rules) -> Grid:
    """The hour's 5 s grid; coverage is not under test unless asked (three readings are 0.4 % of it)."""
    return Grid.over([HOUR], **{"min_coverage": 0.0, **rules})


def long_frame(rows):
    good, bad = validate(pd.DataFrame(rows, columns=["ts", "device", "tag", "value"]))
    assert bad.empty
    return good


def tiny(device="d1", tags=("a", "b")):
    return [(t, device, tag, float(i * 10 + j)) for i, t in enumerate(TS) for j, tag in enumerate(tags)]


def at(seconds: float) -> pd.Timestamp:
    return pd.Timestamp(HOUR) + pd.Timedelta(seconds=seconds)


def test_validate_accepts_the_sample_headers():
    frame = pd.DataFrame({"TS": ["2026-11-27T10:00:00Z"], "Device": ["d1"], "Tag": ["a"], "Value": [1]})
    out, _ = validate(frame)
    assert list(out.columns) == ["ts", "device", "tag", "value"]
    assert str(out["ts"].dt.tz) == "UTC" and out["value"].dtype == "float64"


def test_validate_names_missing_columns_and_bad_types():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['value'\]"):
        validate(pd.DataFrame({"ts": [], "device": [], "tag": []}))
    good, bad = validate(pd.DataFrame({"ts": [TS[0], "soon"], "device": ["d", None], "tag": ["a", "a"],
                                       "value": ["high", "1"]}))
    assert good.empty and bad["reason"].tolist() == ["value is not a number", "device or tag is missing"]


def test_lost_and_infinite_values_are_quarantined_as_lost_readings():
    good, bad = validate(pd.DataFrame({"ts": TS, "device": "d", "tag": "a", "value": [1.0, np.nan, np.inf]}))
    assert good["value"].tolist() == [1.0]
    assert bad["reason"].tolist() == ["value is missing or NaN", "value is not finite"]


def test_to_features_pivots_tags_in_the_model_order():
    rows = long_frame(tiny()[::-1])  # row order must not matter
    features, failures, quarantined = to_features(rows, {("d1", None): ["b", "a"]}, grid())
    assert failures == [] and quarantined.empty
    (f,) = features
    assert f.key == ("d1", None)
    np.testing.assert_array_equal(f.X, [[1, 0], [11, 10], [21, 20]])
    assert list(pd.to_datetime(f.ts, utc=True)) == list(TS)
    assert (f.expected, f.coverage) == (720, 3 / 720)


def test_readings_jittered_around_a_step_make_one_row_at_the_nearest_step():
    rows = [(at(-0.3 + 5 * i), "d1", "a", float(i)) for i in range(3)] + \
           [(at(0.4 + 5 * i), "d1", "b", 10.0 + i) for i in range(3)]
    (f,), failures, quarantined = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid())
    assert failures == [] and quarantined.empty
    assert list(pd.to_datetime(f.ts, utc=True)) == list(TS)
    np.testing.assert_array_equal(f.X, [[0, 10], [1, 11], [2, 12]])


def test_the_reading_nearest_the_step_wins_and_the_others_are_counted():
    rows = tiny() + [(at(1.9), "d1", "a", 99.0), (at(-2.0), "d1", "b", 98.0)]
    (f,), _, _ = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid())
    np.testing.assert_array_equal(f.X[0], [0, 1])
    assert f.superseded == 2


def test_exact_duplicates_are_dropped_and_counted_conflicts_are_quarantined_row_by_row():
    rows = tiny() + [tiny()[0], tiny()[0], (TS[1], "d1", "b", -5.0)]
    (f,), failures, quarantined = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid())
    assert failures == [] and f.duplicates == 2
    assert quarantined["value"].tolist() == ["-5.0", "11.0"]
    assert set(quarantined["reason"]) == {"conflicting values for the same device, tag and ts"}
    assert list(pd.to_datetime(f.ts, utc=True)) == [TS[0], TS[2]]  # TS[1] lacks b: skipped, not guessed


def test_rows_outside_the_hour_are_quarantined_never_scored():
    rows = tiny() + [(at(-5), "d1", "a", 1.0), (at(3599.9), "d1", "b", 2.0)]
    (f,), _, quarantined = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid())
    assert len(f.ts) == 3
    assert pd.to_datetime(quarantined["ts"]).tolist() == [at(-5), at(3599.9)]
    assert quarantined["reason"].str.startswith("ts outside 2026-11-27T10").all()


def test_gaps_are_skipped_or_filled_from_the_previous_reading_within_max_fill():
    rows = [r for r in tiny() if not (r[0] == TS[1] and r[2] == "b")]
    (skipped,), _, _ = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid())
    assert len(skipped.ts) == 2 and skipped.filled == 0
    (filled,), _, _ = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid(max_fill=1))
    np.testing.assert_array_equal(filled.X, [[0, 1], [10, 1], [20, 21]])
    assert filled.filled == 1 and len(filled.ts) == 3


def test_a_timestamp_with_no_reading_at_all_is_never_filled():
    rows = [r for r in tiny() if r[0] != TS[1]]
    (f,), _, _ = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid(max_fill=5))
    assert len(f.ts) == 2 and f.filled == 0


def test_a_device_below_min_coverage_fails_with_a_reason_that_says_so():
    _, (failure,), _ = to_features(long_frame(tiny()), {("d1", None): ["a", "b"]}, grid(min_coverage=0.5))
    assert failure.status == "failed"
    assert "coverage 0.4% is below min-coverage 50%: 3 of 720 timestamps" in failure.reason


def test_tags_the_model_does_not_know_are_quarantined_and_the_device_still_scored():
    rows = tiny(tags=("a", "b", "c"))
    (f,), failures, quarantined = to_features(long_frame(rows), {("d1", None): ["a", "b"]}, grid())
    assert failures == [] and len(f.ts) == 3
    assert quarantined["tag"].tolist() == ["c"] * 3
    assert quarantined["reason"].str.contains("tag c is not among the model's features").all()


def test_a_device_without_readings_is_silent_and_the_others_are_unaffected():
    features, failures, _ = to_features(long_frame(tiny(device="d0")),
                                        {("d0", None): ["a", "b"], ("d1", None): ["a", "b"]}, grid())
    assert [f.key for f in features] == [("d0", None)]
    assert [(f.device, f.status) for f in failures] == [("d1", "silent")]
    assert re.search("no telemetry rows in 2026-11-27T10", failures[0].reason)


def test_per_sensor_models_get_one_column_each():
    specs = infer_specs(long_frame(tiny()), granularity="sensor")
    assert specs == {("d1", "a"): ["value"], ("d1", "b"): ["value"]}
    features, failures, _ = to_features(long_frame(tiny()), specs, grid())
    assert failures == []
    np.testing.assert_array_equal(features[1].X[:, 0], [1, 11, 21])


def test_infer_specs_refuses_unknown_granularity():
    assert infer_specs(long_frame(tiny())) == {("d1", None): ["a", "b"]}
    with pytest.raises(ValueError, match="granularity must be one of"):
        infer_specs(long_frame(tiny()), granularity="fleet")


def test_a_grid_refuses_a_step_that_does_not_divide_the_hour():
    with pytest.raises(ValueError, match="divide the window"):
        Grid.over([HOUR], step=timedelta(seconds=7))
    assert Grid.over([HOUR, HOUR + timedelta(hours=1)], step=timedelta(seconds=10)).size == 720


def test_alignment_counts_per_device():
    aligned = align(long_frame(tiny() + [tiny()[0]] + tiny(device="d2")), grid())
    assert aligned.counts_of("d1") == (1, 0) and aligned.counts_of("d2") == (0, 0)
    assert aligned.counts_of("nobody") == (0, 0)


def test_ids_read_as_categories_align_as_text_does_whatever_the_order_of_categories():
    rows = long_frame(tiny(device="d2") + tiny(device="d1"))
    as_text = to_features(rows, {("d1", None): ["a", "b"], ("d2", None): ["a", "b"]}, grid())
    categories = rows.astype({"device": pd.CategoricalDtype(["d2", "d1"]), "tag": pd.CategoricalDtype(["b", "a"])})
    as_categories = to_features(categories, {("d1", None): ["a", "b"], ("d2", None): ["a", "b"]}, grid())
    assert [f.key for f in as_categories[0]] == [f.key for f in as_text[0]] == [("d1", None), ("d2", None)]
    for mine, theirs in zip(as_categories[0], as_text[0]):
        np.testing.assert_array_equal(mine.X, theirs.X)


def test_rows_in_file_order_align_as_shuffled_rows_do():
    rows = tiny() + tiny(device="d2", tags=("a", "b", "c")) + [tiny()[0], (TS[1], "d1", "a", -5.0)]
    rows += [(pd.Timestamp(TS[2]) + pd.Timedelta(seconds=1), "d2", "b", 7.0)]  # superseded by the reading on time
    frame = long_frame(rows)
    in_order = frame.sort_values(["device", "ts", "tag"], kind="stable", ignore_index=True)
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    a, b = align(in_order, grid()), align(shuffled, grid())
    for name in ("devices", "tags", "device", "tag", "step", "value", "duplicates", "superseded"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.duplicates.sum() == 1 and a.superseded.sum() == 1
    key = ["device", "tag", "ts", "value", "reason"]
    pd.testing.assert_frame_equal(a.quarantined[key].sort_values(key, ignore_index=True),
                                  b.quarantined[key].sort_values(key, ignore_index=True))
    assert len(a.quarantined) == 2


def _hour_table(tmp_path, rows: pd.DataFrame):
    """The rows as a batch reads them back: Arrow from a Parquet file, and the same as a pandas frame."""
    store = Store(str(tmp_path))
    telemetry.write_hour(store, HOUR, rows)
    read = telemetry.read_rows(store, telemetry.scan_hour(store, HOUR).files)
    return read.table, read.rows


def _on_grid_rows() -> pd.DataFrame:
    """Devices that keep time: d1 complete, d2 losing tag c after step 100, d4 per sensor, none for d3."""
    steps = np.arange(GRID_SIZE)
    frames = [pd.DataFrame({"ts": pd.Timestamp(HOUR) + pd.to_timedelta(steps * 5 + 0.4, "s"), "device": device,
                            "tag": tag, "value": np.sin(steps + i)})
              for i, (device, tag) in enumerate([("d1", "a"), ("d1", "b"), ("d1", "c"), ("d2", "a"), ("d2", "b"),
                                                 ("d4", "a"), ("d4", "b")])]
    frames.append(pd.DataFrame({"ts": pd.Timestamp(HOUR) + pd.to_timedelta(steps[:100] * 5, "s"), "device": "d2",
                                "tag": "c", "value": 1.0}))
    return pd.concat(frames, ignore_index=True)


GRID_SIZE = 720
SPECS = {("d1", None): ["c", "a", "b"], ("d2", None): ["a", "b", "c"], ("d3", None): ["a"],
         ("d4", "a"): ["value"], ("d4", "b"): ["value"], ("d4", "z"): ["value"]}


def _assert_same(left, right) -> None:
    """The same models' inputs, failures and quarantined rows, whichever order each way lists them in."""
    (features, failures, quarantined), (expected, expected_failures, expected_quarantined) = left, right
    by_key = lambda f: (f.key[0], f.key[1] or "")  # noqa: E731
    features, expected = sorted(features, key=by_key), sorted(expected, key=by_key)
    assert [f.key for f in features] == [f.key for f in expected]
    assert sorted(failures, key=repr) == sorted(expected_failures, key=repr)
    for f, e in zip(features, expected):
        np.testing.assert_array_equal(f.ts, e.ts)
        np.testing.assert_array_equal(f.X, e.X)
        assert (f.expected, f.filled, f.duplicates, f.superseded) == (e.expected, e.filled, e.duplicates, e.superseded)
    rows = [q.astype(str).sort_values(list(q.columns), ignore_index=True) for q in (quarantined, expected_quarantined)]
    pd.testing.assert_frame_equal(*rows)


@pytest.mark.parametrize("max_fill", [0, 2])
def test_readings_on_the_grid_take_the_shortcut_with_the_rules_result(tmp_path, max_fill):
    table, frame = _hour_table(tmp_path, _on_grid_rows())
    rules = grid(max_fill=max_fill, min_coverage=0.5)
    cube = features._Cube.of(table, rules)
    assert cube.quarantined.empty and all(cube.takes(key, order) for key, order in SPECS.items())
    made = to_features(table, SPECS, rules)
    _assert_same(made, to_features(frame, SPECS, rules))
    assert [(f.device, f.tag) for f in made[1]] == [("d2", None), ("d3", None), ("d4", "z")]  # d2: coverage 100/720
    assert [f.status for f in made[1]] == ["failed", "silent", "silent"] and made[2].empty


@pytest.mark.parametrize("mess", ["duplicate", "conflict", "two in one step", "outside the hour", "unknown tag"])
def test_readings_the_rules_must_judge_are_judged_by_them(tmp_path, mess):
    rows = _on_grid_rows()
    first = rows.iloc[[0]]  # d1's first reading
    extra = {"duplicate": first, "conflict": first.assign(value=9.0),
             "two in one step": first.assign(ts=first["ts"] + pd.Timedelta(seconds=1)),
             "outside the hour": first.assign(ts=first["ts"] - pd.Timedelta(hours=1)),
             "unknown tag": first.assign(tag="q")}[mess]
    table, frame = _hour_table(tmp_path, pd.concat([rows, extra], ignore_index=True))
    cube = features._Cube.of(table, grid())
    # only a tag the model does not know sends the device's rows through the rules; the rest stay in the cube
    assert [key for key, order in SPECS.items() if not cube.takes(key, order)] == ([("d1", None)] if mess == "unknown tag" else [])
    made = to_features(table, SPECS, grid())
    _assert_same(made, to_features(frame, SPECS, grid()))
    d1 = next(f for f in made[0] if f.key == ("d1", None))
    assert (d1.duplicates, d1.superseded) == ((1, 0) if mess == "duplicate" else (0, 1) if mess == "two in one step" else (0, 0))
    assert len(made[2]) == {"duplicate": 0, "conflict": 2, "two in one step": 0, "outside the hour": 1, "unknown tag": 1}[mess]


def test_a_real_fleets_hour_gives_what_the_rules_give(tmp_path):
    """Jitter, lost, duplicated and late readings on every device, and a device without a model."""
    rows, _ = realistic_hour(device_ids(6), HOUR, seed=5, duplicates=0.01, late=0.002)
    rows = rows.astype({"device": str, "tag": str})
    table, frame = _hour_table(tmp_path, rows)
    specs = {(d, None): sorted(rows["tag"].unique()) for d in device_ids(5)} | {(device_ids(6)[5], "sensor3"): ["value"]}
    for rules in (grid(), grid(max_fill=2, min_coverage=0.9)):
        made = to_features(table, specs, rules)
        _assert_same(made, to_features(frame, specs, rules))
        assert len(made[0]) + len(made[1]) == len(specs) and not made[2].empty
        assert all(f.duplicates > 0 for f in made[0] if f.key[1] is None) and any(f.key[1] == "sensor3" for f in made[0])


def test_rows_of_a_device_without_a_model_are_still_quarantined_when_they_must_be(tmp_path):
    rows = _on_grid_rows()
    late = rows[rows["device"] == "d4"].head(3).assign(device="d9", ts=lambda r: r["ts"] - pd.Timedelta(hours=1))
    table, frame = _hour_table(tmp_path, pd.concat([rows, late], ignore_index=True))
    made = to_features(table, SPECS, grid())
    _assert_same(made, to_features(frame, SPECS, grid()))
    assert made[2]["device"].tolist() == ["d9"] * 3
