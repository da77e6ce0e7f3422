"""Do the device alerts name the devices with a fault? Precision and recall against injected anomalies.

    python -m benchmarks.accuracy                  # 1,000 devices, clean and realistic telemetry
    python -m benchmarks.accuracy --devices 200    # a quick look

For each kind of telemetry (``clean``: :func:`scoring.generate.generate_hour`;
``realistic``: :func:`scoring.realistic.realistic_hour`) a fleet is generated
with recorded anomalies, trained on two hours and scored on the hours after
them by the real flows, as ``fleetscore train`` and ``fleetscore score`` run
them. A device-hour is *anomalous* when an anomaly was injected into it and
*in alert* when the committed per-device-hour table says so. Reported:
precision and recall of ``alert`` over device-hours, and the share of normal
devices in alert per hour (the operator's noise). A sweep over the persistence
rule (k anomalous steps within m) re-decides the alerts from the committed
predictions, so the defaults can be chosen by measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from scoring import layout, telemetry
from scoring.generate import generate_hour
from scoring.realistic import realistic_hour
from scoring.store import Store, parquet_bytes

GENERATORS: dict[str, Callable[..., tuple[pd.DataFrame, pd.DataFrame]]] = {
    "clean": generate_hour,
    "realistic": realistic_hour,
}
FIRST_SCORED = layout.parse_hour("2026-11-27T10")
TRAIN_HOURS = 2
"""As ``fleetscore train`` by default: the two hours before the first scored hour."""


@dataclass(frozen=True)
class Metrics:
    """Device-hour accuracy of the alerts.

    ``false_alert_share`` is the largest, over the scored hours, share of normal
    devices in alert (the target is about every hour, not their average).
    """

    precision: float
    recall: float
    false_alert_share: float
    mean_false_alert_share: float
    true_alerts: int
    false_alerts: int
    missed: int
    anomalous: int
    normal: int


def truth(anomalies: pd.DataFrame, devices: Sequence[str], hours: Sequence[datetime]) -> pd.DataFrame:
    """Every device-hour of the fleet with ``anomalous``: whether an anomaly was injected into it.

    An anomaly belongs to the hour its ``start`` falls in (the generators keep it inside that hour).
    """
    grid = pd.MultiIndex.from_product([list(devices), pd.DatetimeIndex(hours)], names=["device", "hour"])
    injected = pd.MultiIndex.from_arrays(
        [anomalies["device"].astype(str), anomalies["start"].dt.floor("h")], names=["device", "hour"])
    return pd.DataFrame({"anomalous": grid.isin(injected)}, index=grid).reset_index()


def score_alerts(truth: pd.DataFrame, alerts: pd.DataFrame) -> Metrics:
    """Compare ``alert`` per (device, hour) with the truth; a device-hour with no row did not alert."""
    both = truth.merge(alerts[["device", "hour", "alert"]], on=["device", "hour"], how="left")
    alert = both["alert"].fillna(False).astype(bool)
    anomalous = both["anomalous"]
    true_alerts = int((alert & anomalous).sum())
    false_alerts = int((alert & ~anomalous).sum())
    per_hour = both.assign(false=alert & ~anomalous)[~anomalous].groupby("hour")["false"].mean()
    return Metrics(
        precision=true_alerts / (true_alerts + false_alerts) if true_alerts + false_alerts else float("nan"),
        recall=true_alerts / int(anomalous.sum()) if anomalous.any() else float("nan"),
        false_alert_share=float(per_hour.max()) if len(per_hour) else float("nan"),
        mean_false_alert_share=float(per_hour.mean()) if len(per_hour) else float("nan"),
        true_alerts=true_alerts, false_alerts=false_alerts, missed=int((~alert & anomalous).sum()),
        anomalous=int(anomalous.sum()), normal=int((~anomalous).sum()),
    )


def missed_anomalies(anomalies: pd.DataFrame, alerts: pd.DataFrame) -> pd.DataFrame:
    """The injected anomalies whose device-hour did not alert, with their length in minutes."""
    hours = anomalies.assign(hour=anomalies["start"].dt.floor("h"), device=anomalies["device"].astype(str))
    both = hours.merge(alerts[["device", "hour", "alert"]], on=["device", "hour"], how="left")
    missed = both[~both["alert"].fillna(False).astype(bool)].drop(columns=["alert"])
    return missed.assign(minutes=(missed["end"] - missed["start"]) / pd.Timedelta(minutes=1))


def write_fleet(store: Store, kind: str, devices: Sequence[str], hours: Iterable[datetime], seed: int,
                anomaly_rate: float) -> pd.DataFrame:
    """Write the hours' telemetry and anomaly records, as ``fleetscore generate`` does; all the anomalies."""
    recorded = []
    for hour in hours:
        frame, anomalies = GENERATORS[kind](devices, hour, seed=seed, anomaly_rate=anomaly_rate)
        telemetry.write_hour(store, hour, frame)
        store.write(layout.anomalies_file(hour), parquet_bytes(anomalies))
        recorded.append(anomalies)
    return pd.concat(recorded, ignore_index=True)


def hours_of(scored: int) -> tuple[list[datetime], list[datetime]]:
    """The training hours and the scored hours after them."""
    train = [FIRST_SCORED - timedelta(hours=TRAIN_HOURS - i) for i in range(TRAIN_HOURS)]
    return train, [FIRST_SCORED + timedelta(hours=i) for i in range(scored)]


def format_metrics(name: str, m: Metrics) -> str:
    """One line of the report."""
    return (f"{name:10} precision {m.precision:.3f}  recall {m.recall:.3f}  normal devices in alert per hour "
            f"max {100 * m.false_alert_share:.2f}% (mean {100 * m.mean_false_alert_share:.2f}%)  "
            f"[{m.true_alerts} true, {m.false_alerts} false alerts, {m.missed} missed of {m.anomalous} "
            f"anomalous device-hours; {m.normal} normal]")

