from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from scoring import alerts, layout
from scoring.alerts import AlertRule, longest_run
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


def test_longest_run_counts_consecutive_steps_only():
    assert longest_run(np.array([])) == 0
    assert longest_run(np.array([3, 4, 5, 9, 10])) == 3
    assert longest_run(np.array([7])) == 1


def test_a_rule_must_be_possible():
    with pytest.raises(ValueError, match="anomalous-steps <= within-steps"):
        AlertRule(anomalous_steps=5, within_steps=3)


def test_a_device_hour_says_what_was_scored_and_whether_it_alerts():
    steps = np.array([0, 1, 2, 3, 5, 100, 101, 102])
    features = Features(("d1", None), GRID.times(steps), np.zeros((8, 2)), expected=720, filled=2, duplicates=1)
    anomaly = np.array([0, 1, 1, 1, 0, 1, 0, 0], dtype="int8")
    row = alerts.device_hour(features, np.linspace(-1, 1, 8), anomaly, GRID, RULE)
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
        alerts.minute_record(np.arange(70_000), np.arange(0), grid)


def test_the_table_is_typed_and_sorted_and_holds_unscored_models():
    silent = alerts.unscored(Failure("d0", "no telemetry rows", status="silent"), GRID)
    frame = alerts.device_hours([silent, alerts.unscored(Failure("a", "bad"), GRID)])
    assert frame["device"].tolist() == ["a", "d0"] and frame["status"].tolist() == ["failed", "silent"]
    assert frame.dtypes.astype(str).to_dict() == {k: ("string" if v == "string" else v)
                                                  for k, v in alerts.DEVICE_HOUR_COLUMNS.items()}
    assert not frame["alert"].any() and pd.isna(frame["min_score"]).all() and frame["minutes"].isna().all()
