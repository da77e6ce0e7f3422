"""The accuracy benchmark counts device-hours as an operator would: tiny frames, every case by hand."""

import math
from datetime import timedelta

import pandas as pd
import pytest

from benchmarks.accuracy import alerting, flagged_steps, hours_of, missed_anomalies, rule_alerts, score_alerts, truth
from scoring.alerts import AlertRule

H0 = pd.Timestamp("2026-11-27T10:00Z")
H1 = H0 + pd.Timedelta(hours=1)
DEVICES = ["a", "b", "c", "d", "e"]


def anomalies(*rows: tuple[str, pd.Timestamp, int]) -> pd.DataFrame:
    """Anomalies of ``minutes`` minutes from ``start``, on sensor1."""
    return pd.DataFrame({
        "device": pd.array([d for d, _, _ in rows], dtype="string"),
        "tag": "sensor1",
        "start": pd.DatetimeIndex([s for _, s, _ in rows]),
        "end": pd.DatetimeIndex([s + pd.Timedelta(minutes=m) for _, s, m in rows]),
    })


INJECTED = anomalies(("a", H0 + pd.Timedelta(minutes=5), 2), ("b", H1 + pd.Timedelta(minutes=59), 1),
                     ("c", H0, 4))


def alerts(*rows: tuple[str, pd.Timestamp]) -> pd.DataFrame:
    return pd.DataFrame({"device": [d for d, _ in rows], "hour": [h for _, h in rows], "alert": True})


def test_truth_marks_the_device_hour_each_anomaly_starts_in():
    table = truth(INJECTED, DEVICES, [H0, H1])
    assert len(table) == 10
    marked = set(table.loc[table["anomalous"], ["device", "hour"]].itertuples(index=False, name=None))
    assert marked == {("a", H0), ("b", H1), ("c", H0)}


def test_precision_recall_and_the_worst_hours_false_alert_share():
    # a@H0 caught, c@H0 missed, b@H1 caught; d@H0 and e@H1 false; rows for other devices say no alert
    said = pd.concat([alerts(("a", H0), ("b", H1), ("d", H0), ("e", H1)),
                      pd.DataFrame({"device": ["c"], "hour": [H0], "alert": [False]})])
    m = score_alerts(truth(INJECTED, DEVICES, [H0, H1]), said)
    assert (m.true_alerts, m.false_alerts, m.missed, m.anomalous, m.normal) == (2, 2, 1, 3, 7)
    assert m.precision == pytest.approx(2 / 4) and m.recall == pytest.approx(2 / 3)
    assert m.false_alert_share == pytest.approx(1 / 3)  # H0: d of b, d, e; H1: e of a, c, d, e is 1/4
    assert m.mean_false_alert_share == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_a_device_hour_without_a_row_did_not_alert_and_no_alert_has_no_precision():
    m = score_alerts(truth(INJECTED, DEVICES, [H0, H1]), alerts()[:0])
    assert (m.true_alerts, m.missed, m.false_alert_share) == (0, 3, 0.0)
    assert math.isnan(m.precision) and m.recall == 0


def test_missed_anomalies_are_listed_with_their_length():
    missed = missed_anomalies(INJECTED, alerts(("a", H0), ("c", H1)))
    assert list(missed["device"]) == ["b", "c"]
    assert list(missed["minutes"]) == [1.0, 4.0]


def test_training_hours_come_right_before_the_scored_ones():
    train, scored = hours_of(3)
    assert train[-1] + timedelta(hours=1) == scored[0] and len(train) == 2
    assert [h - scored[0] for h in scored] == [timedelta(hours=i) for i in range(3)]


def test_the_sweep_decides_alerts_from_the_flagged_steps_of_each_device_hour():
    seconds = [0, 5.2, 9.8, 30, 40]  # jittered stamps: nearest 5 s steps 0, 1, 2, 6, 8
    frame = pd.DataFrame({"ts": [H0 + pd.Timedelta(seconds=s) for s in seconds] * 2,
                          "device": ["a"] * 5 + ["b"] * 5, "anomaly": [1, 1, 1, 0, 1] + [1, 0, 0, 1, 0]})
    steps = flagged_steps(frame, H0.to_pydatetime())
    assert steps["a"].tolist() == [0, 1, 2, 8] and steps["b"].tolist() == [0, 6]
    decided = rule_alerts({H0: steps}, AlertRule(3, 6))
    assert decided.set_index("device")["alert"].to_dict() == {"a": True, "b": False}
    assert alerting(decided) == {("a", H0)}
    assert not rule_alerts({H0: steps}, AlertRule(4, 6))["alert"].any()  # a's fourth step is 8 steps after its first
