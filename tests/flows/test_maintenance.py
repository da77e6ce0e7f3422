"""maintain-tables compacts a day and vacuums; `fleetscore history`; one run of an hour at a time."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pandas as pd
import polars as pl
import pytest

from flows import cli
from flows.limits import one_run_per_hour
from flows.maintenance import maintain_tables
from scoring import layout, predictions, tables
from scoring.records import Failure
from scoring.store import Store

pytestmark = pytest.mark.usefixtures("prefect_backend")

HOURS = [layout.parse_hour("2026-11-26T22"), layout.parse_hour("2026-11-26T23")]


def batch(devices: list[str], hour) -> pd.DataFrame:
    return pd.DataFrame({"ts": pd.to_datetime([hour] * len(devices)), "device": pd.array(devices, "string"),
                         "tag": pd.array([None] * len(devices), "string"), "score": [0.5] * len(devices),
                         "anomaly": pd.array([0] * len(devices), "int8"),
                         "model_sha256": pd.array(["x"] * len(devices), "string")})


def commit(store: Store, hour, run: str) -> None:
    parts = [predictions.write_part(store, hour, batch([f"{run}-{i}"], hour)) for i in range(3)]
    predictions.commit(store, hour, parts, [Failure(f"{run}-broken", "no rows")],
                       {"flow_run_id": run, "model_version": "v1", "rows": 3})


def test_maintenance_compacts_the_day_before_and_vacuums_replaced_and_uncommitted_files(any_store):
    for hour in HOURS:
        commit(any_store, hour, "first")
        commit(any_store, hour, "second")  # replaces the first run's files
    stray = predictions.write_part(any_store, HOURS[0], batch(["crashed"], HOURS[0]))  # never committed
    before = {h: predictions.read_predictions(any_store, h) for h in HOURS}
    summary = maintain_tables(store=any_store.url, days=1, retention="0s", today="2026-11-27")
    assert summary["compacted_files"] == {"2026-11-26": {"predictions": 6, "device_hours": 0, "errors": 0,
                                                         "quarantine": 0}}  # one file an hour is left as it is
    assert summary["vacuumed_files"]["predictions"] == 6 + 6 + 1  # the first runs', the compacted, the stray
    assert not any_store.exists(stray.rel)
    where = tables.location(any_store, "predictions")
    polars_rows = pl.read_delta(where.uri, storage_options=where.options or None)
    assert sorted(polars_rows["device"].to_list()) == sorted([f"second-{i}" for i in range(3)] * 2)
    for hour, rows in before.items():
        pd.testing.assert_frame_equal(predictions.read_predictions(any_store, hour), rows)
        assert predictions.committed(any_store, hour)["claim"] == 2


def test_history_lists_an_hours_versions_with_run_and_model_version(tmp_path, capsys):
    store = Store(tmp_path)
    commit(store, HOURS[0], "first")
    commit(store, HOURS[0], "second")
    assert cli.main(["history", "--store", str(tmp_path), "--hour", "2026-11-26T22"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "committed", "(UTC)", "claim", "rows", "model", "version", "flow", "run"]
    assert [line.split()[3] for line in lines[1:]] == ["2", "1"]
    assert [line.split()[-1] for line in lines[1:]] == ["second", "first"]
    assert cli.main(["history", "--store", str(tmp_path), "--hour", "2026-11-26T23"]) == 1
    assert "was never committed" in capsys.readouterr().err


def test_runs_of_one_hour_queue_and_other_hours_do_not_wait():
    spans: dict[str, tuple[float, float]] = {}

    def hold(name: str, hour, seconds: float) -> None:
        with one_run_per_hour(hour):
            entered = time.monotonic()
            time.sleep(seconds)
            spans[name] = (entered, time.monotonic())

    runs = [threading.Thread(target=hold, args=(name, hour, 3)) for name, hour in
            (("a", HOURS[0]), ("b", HOURS[0]), ("other", HOURS[0] + timedelta(days=30)))]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    first, second = sorted([spans["a"], spans["b"]])
    assert second[0] >= first[1]  # the second run of the hour entered only after the first left
    assert spans["other"][0] < first[1]  # another hour ran meanwhile

