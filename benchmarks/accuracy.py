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

import argparse
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from benchmarks.endtoend import cluster_of
from flows import rules
from scoring import layout, predictions, telemetry
from scoring.alerts import AlertRule
from scoring.generate import device_ids, generate_hour
from scoring.realistic import realistic_hour
from scoring.store import Store, parquet_bytes

GENERATORS: dict[str, Callable[..., tuple[pd.DataFrame, pd.DataFrame]]] = {
    "clean": generate_hour,
    "realistic": realistic_hour,
}
FIRST_SCORED = layout.parse_hour("2026-11-27T10")
TRAIN_HOURS = 2
"""As ``fleetscore train`` by default: the two hours before the first scored hour."""
RESULTS = Path(__file__).with_name("results")
SWEEP = [(k, m) for m in (6, 12, 24) for k in (2, 3, 4, 6, 8, 10, 12, 16) if k <= m]
"""Persistence rules tried: k anomalous steps within m consecutive 5-second steps."""


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
                anomaly_rate: float) -> tuple[pd.DataFrame, float]:
    """Write the hours' telemetry and anomaly records, as ``fleetscore generate`` does.

    Returns all the anomalies and the seconds spent generating (not writing) an hour, at most.
    """
    recorded, slowest = [], 0.0
    for hour in hours:
        started = time.perf_counter()
        frame, anomalies = GENERATORS[kind](devices, hour, seed=seed, anomaly_rate=anomaly_rate)
        slowest = max(slowest, time.perf_counter() - started)
        telemetry.write_hour(store, hour, frame)
        store.write(layout.anomalies_file(hour), parquet_bytes(anomalies))
        recorded.append(anomalies)
    return pd.concat(recorded, ignore_index=True), slowest


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


def alerting(alerts: pd.DataFrame) -> set[tuple[str, pd.Timestamp]]:
    """The (device, hour) pairs in alert."""
    return set(alerts.loc[alerts["alert"].astype(bool), ["device", "hour"]].itertuples(index=False, name=None))


def flagged_steps(frame: pd.DataFrame, hour: datetime) -> pd.Series:
    """Per device, the sorted grid steps its model flagged in the hour (the input of every alert rule)."""
    grid = rules.grid([hour])
    flagged = frame[frame["anomaly"] == 1]
    steps = pd.Series(grid.steps(flagged["ts"].to_numpy(dtype="datetime64[ns]")), index=flagged.index)
    return steps.groupby(flagged["device"].astype(str)).agg(lambda s: s.sort_values().to_numpy())


def rule_alerts(steps: dict[datetime, pd.Series], rule: AlertRule) -> pd.DataFrame:
    """``device, hour, alert`` as ``rule`` decides it from the flagged steps of each device-hour."""
    rows = [(device, hour, rule.holds(flagged)) for hour, by_device in steps.items()
            for device, flagged in by_device.items()]
    return pd.DataFrame(rows, columns=["device", "hour", "alert"])


def run_pipeline(store: Store, train: list[datetime], scored: list[datetime],
                 workers: int) -> tuple[pd.DataFrame, dict[datetime, pd.Series]]:
    """Train and score with the real flows; the committed device-hour tables and the flagged steps."""
    from flows.score import score_fleet
    from flows.train import train_fleet

    tables, steps = [], {}
    with cluster_of(workers):
        train_fleet(start=layout.hour_label(train[0]), end=layout.hour_label(train[-1]), store=store.url)
        for hour in scored:
            score_fleet(store=store.url, hour=layout.hour_label(hour))
            tables.append(predictions.read_device_hours(store, hour).assign(hour=pd.Timestamp(hour)))
            steps[hour] = flagged_steps(predictions.read_predictions(store, hour), hour)
    return pd.concat(tables, ignore_index=True), steps


def measure(kind: str, devices: int, scored_hours: int, seed: int, anomaly_rate: float,
            workers: int) -> dict:
    """One kind of telemetry end to end: generate, train, score, compare; the figures and the sweep."""
    store = Store(str(RESULTS / f"accuracy-{kind}-{devices}"))
    shutil.rmtree(store.url, ignore_errors=True)
    store.create()
    train, scored = hours_of(scored_hours)
    ids = device_ids(devices)
    injected, generate_seconds = write_fleet(store, kind, ids, train + scored, seed, anomaly_rate)
    injected = injected[injected["start"] >= pd.Timestamp(scored[0])]
    started = time.perf_counter()
    tables, steps = run_pipeline(store, train, scored, workers)
    expected = truth(injected, ids, scored)
    committed = score_alerts(expected, tables)
    default = rules.alert_rule()
    if alerting(rule_alerts(steps, default)) != alerting(tables):
        raise RuntimeError("alerts recomputed from the predictions differ from the committed ones: "
                           "the sweep would not measure the pipeline's rule")
    sweep = {f"{k}/{m}": score_alerts(expected, rule_alerts(steps, AlertRule(k, m))) for k, m in SWEEP}
    missed = missed_anomalies(injected, tables)
    normal_runs = tables.merge(expected[~expected["anomalous"]], on=["device", "hour"])["longest_run"]
    return {"kind": kind, "rule": f"{default.anomalous_steps}/{default.within_steps}", "metrics": committed,
            "sweep": sweep, "missed": missed, "normal_longest_run": normal_runs.describe(percentiles=[.5, .99]),
            "failed": int((tables["status"] != "scored").sum()), "seconds": time.perf_counter() - started,
            "generate_seconds": generate_seconds}


def report(result: dict) -> str:
    """The printed figures of one kind of telemetry."""
    kind = result["kind"]
    lines = [f"== {kind}: alert rule {result['rule']} (k anomalous steps within m), "
             f"{result['failed']} device-hours not scored, pipeline {result['seconds']:.0f}s, "
             f"slowest hour generated in {result['generate_seconds']:.2f}s",
             format_metrics(kind, result["metrics"]),
             "longest run of anomalous steps of normal device-hours: "
             + ", ".join(f"{k} {v:.0f}" for k, v in result["normal_longest_run"].items() if k != "count"),
             "sweep (k/m):"]
    lines += [format_metrics(rule, m) for rule, m in result["sweep"].items()]
    missed = result["missed"]
    lines.append(f"missed anomalies at {result['rule']}: {len(missed)}")
    if len(missed):
        lines.append(missed.to_string(index=False, max_rows=30))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--devices", type=int, default=1000, help="devices in the fleet (default: %(default)s)")
    top.add_argument("--hours", type=int, default=3, help="hours scored after the two training hours "
                     "(default: %(default)s)")
    top.add_argument("--kinds", default="clean,realistic", help="telemetry kinds, comma-separated "
                     f"among {', '.join(GENERATORS)} (default: %(default)s)")
    top.add_argument("--anomaly-rate", type=float, default=0.05,
                     help="share of devices with an anomaly per hour (default: %(default)s)")
    top.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    top.add_argument("--workers", type=int, default=2, help="Dask workers (default: %(default)s)")
    args = top.parse_args(argv)
    unknown = set(args.kinds.split(",")) - set(GENERATORS)
    if unknown:
        top.error(f"unknown kinds {sorted(unknown)}: choose among {', '.join(GENERATORS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from prefect.testing.utilities import prefect_test_harness

    args = parse_args(argv)
    results = []
    with prefect_test_harness(server_startup_timeout=120):
        for kind in args.kinds.split(","):
            print(f"... {kind} telemetry, {args.devices} devices, {args.hours} scored hours", flush=True)
            results.append(measure(kind, args.devices, args.hours, args.seed, args.anomaly_rate, args.workers))
    print("\n" + "\n\n".join(report(r) for r in results))  # after the runs' logs, all in one place
    out = RESULTS / f"accuracy-{args.devices}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps([{"kind": r["kind"], "rule": r["rule"], "metrics": asdict(r["metrics"]),
                                "sweep": {k: asdict(m) for k, m in r["sweep"].items()},
                                "missed": r["missed"].astype(str).to_dict("records")} for r in results],
                              indent=1))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
