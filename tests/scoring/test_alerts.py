from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from scoring import alerts, layout
from scoring.alerts import AlertRule
from scoring.align import Grid
from scoring.records import Failure, Features

HOUR = layout.parse_hour("2026-11-27T10")
GRID = Grid.over([HOUR], min_coverage=0.0)
RULE = AlertRule(anomalous_steps=3, within_steps=6)


@pytest.mark.parametrize("steps, expected", [
    ([], False), ([10, 11], False), ([10, 20, 30], False),
    ([10, 12, 15], True),   # 3 within the 6 steps 10..15
    ([10, 12, 16], False),  # 10..16 is 7 steps
    ([1, 40, 41, 42], True),
])
def test_the_persistence_rule(steps, expected):
    assert RULE.holds(np.array(steps)) is expected


def _model(device: str, steps: np.ndarray, anomaly: np.ndarray, score: np.ndarray | None = None,
           grid: Grid = GRID) -> tuple[Features, np.ndarray, np.ndarray]:
    """A scored model as a batch holds it: its features (scored steps), scores and anomaly flags."""
    features = Features((device, None), grid.times(steps), np.zeros((len(steps), 1)), expected=grid.size)
    return features, np.zeros(len(steps)) if score is None else score, anomaly.astype("int8")


def test_the_longest_run_counts_consecutive_steps_only():
    rows = alerts.scored_hours([_model("none", np.arange(5), np.zeros(5)),
                                _model("gap", np.array([3, 4, 5, 6, 9, 10]), np.array([1, 1, 0, 1, 1, 1])),
                                _model("one", np.array([7]), np.array([1]))], GRID, RULE)
    # "gap" flags steps 3, 4, 6, 9, 10: runs of 2, 1 and 2, though 3, 4 and 6 are consecutive rows
    assert rows["device"].tolist() == ["gap", "none", "one"]  # sorted, as the table is
    assert rows["longest_run"].tolist() == [2, 0, 1]


def test_batch_wide_rows_equal_each_model_taken_alone():
    """Runs and alerts never carry over from one model to the next, whatever the models' order."""
    rng = np.random.default_rng(3)
    models = []
    for i in range(60):
        steps = np.sort(rng.choice(GRID.size, rng.integers(1, 40), replace=False))
        models.append(_model(f"d{i:02}", steps, rng.random(len(steps)) < rng.random(), rng.normal(size=len(steps))))
    together = alerts.scored_hours(models, GRID, RULE)
    alone = pd.concat([alerts.scored_hours([m], GRID, RULE) for m in models], ignore_index=True)
    pd.testing.assert_frame_equal(together, alone)
    for (features, score, anomaly), row in zip(models, together.itertuples()):
        flagged = GRID.steps(features.ts)[anomaly.astype(bool)]
        assert row.alert == RULE.holds(flagged) and row.anomalies == len(flagged) and row.min_score == score.min()
        assert row.longest_run == max((len(r) for r in np.split(flagged, np.flatnonzero(np.diff(flagged) != 1) + 1)
                                       if len(r)), default=0)
    assert together["alert"].any() and not together["alert"].all()


def test_a_rule_must_be_possible():
    with pytest.raises(ValueError, match="anomalous-steps <= within-steps"):
        AlertRule(anomalous_steps=5, within_steps=3)


def test_a_device_hour_says_what_was_scored_and_whether_it_alerts():
    steps = np.array([0, 1, 2, 3, 5, 100, 101, 102])
    features = Features(("d1", None), GRID.times(steps), np.zeros((8, 2)), expected=720, filled=2, duplicates=1)
    anomaly = np.array([0, 1, 1, 1, 0, 1, 0, 0], dtype="int8")
    row = alerts.scored_hours([(features, np.linspace(-1, 1, 8), anomaly)], GRID, RULE).iloc[0]
    assert row["rows"] == 8 and row["coverage"] == pytest.approx(8 / 720)
    assert (row["anomalies"], row["longest_run"], row["alert"]) == (4, 3, True)
    assert row["min_score"] == -1 and (row["filled"], row["duplicates"]) == (2, 1)
    scored, flagged = alerts.minute_counts(row["minutes"])
    assert len(scored) == len(flagged) == 60 and len(row["minutes"]) == 240
    assert (scored[[0, 8]].tolist(), flagged[[0, 8]].tolist()) == ([5, 3], [3, 1])  # step 100 is 8:20
    assert scored.sum() == 8 and flagged.sum() == 4


def test_a_minute_of_too_many_steps_is_refused_with_the_setting_to_change():
    grid = Grid.over([HOUR], step=timedelta(microseconds=500), min_coverage=0.0)
    with pytest.raises(ValueError, match="more than 65535 steps of 0:00:00.000500: set fleetscore.telemetry.step"):
        alerts.scored_hours([_model("d", np.arange(70_000), np.zeros(70_000), grid=grid)], grid, RULE)


def test_the_table_is_typed_and_sorted_and_holds_unscored_models():
    silent = alerts.unscored(Failure("d0", "no telemetry rows", status="silent"), GRID)
    unscored = alerts.device_hours([silent, alerts.unscored(Failure("a", "bad"), GRID)])
    assert unscored["device"].tolist() == ["a", "d0"] and unscored["status"].tolist() == ["failed", "silent"]
    assert not unscored["alert"].any() and pd.isna(unscored["min_score"]).all() and unscored["minutes"].isna().all()
    both = alerts.device_hours([silent], alerts.scored_hours([_model("b", np.arange(3), np.zeros(3))], GRID, RULE))
    assert both["device"].tolist() == ["b", "d0"] and both["status"].tolist() == ["scored", "silent"]
    for frame in (unscored, both, alerts.scored_hours([], GRID, RULE)):
        assert frame.dtypes.to_dict() == {k: pd.api.types.pandas_dtype(v) for k, v in alerts.DEVICE_HOUR_COLUMNS.items()}
