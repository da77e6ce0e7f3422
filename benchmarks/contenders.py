"""The ways of scoring one hour that fleetscore is measured against, each on the same store.

Every contender scores with :func:`scoring.predict.predict` (the fast path for
the standard model), so the table compares what is around the model: reading,
reshaping, loading models, scheduling and writing. The two floors have no I/O
at all: models in memory, matrices ready.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from joblib import Parallel, delayed

from cluster.config import setting
from flows import rules
from scoring import layout, telemetry
from scoring.align import Grid
from scoring.batch import BatchJob, batch_jobs, plan, score_batch
from scoring.model_format import ModelPolicy, decode
from scoring.models import Manifest
from scoring.predict import predict
from scoring.store import Store, parquet_bytes


BENCH_MIN_COVERAGE = 0.0
"""Fleets of ``--per-device-sample``-sized hours send fewer rows than the 5 s grid holds: score them all."""


@dataclass
class Bench:
    """What every contender gets: one store, one hour, its manifest, and the worker count."""

    store: Store
    hour: datetime
    manifest: Manifest
    workers: int
    scratch: Path

    @property
    def grid(self) -> Grid:
        """The hour's grid; a bench fleet may send fewer rows than the grid holds, so no coverage floor."""
        return rules.grid([self.hour], min_coverage=BENCH_MIN_COVERAGE)

    def fresh_predictions(self) -> None:
        """Remove the tables: data files are content-addressed, and one already there is not rewritten."""
        folder = self.store.path(layout.TABLES)
        if self.store.fs.exists(folder):
            self.store.fs.rm(folder, recursive=True)

    def batch_jobs(self) -> list[BatchJob]:
        """The hour's batches as the flow plans them, each with the files that may hold its devices."""
        batches = plan(self.manifest, setting("scoring.packs-per-batch"))
        return batch_jobs(self.store, self.grid, self.manifest, batches, telemetry.scan_hour(self.store, self.hour),
                          rules.alert_rule())


@dataclass
class Outcome:
    """What a contender scored, and its measured wall time (set-up such as cluster start excluded)."""

    devices: int
    rows: int
    anomalies: int
    seconds: float
    note: str = ""
    parts: dict[str, float] = field(default_factory=dict)
    measured_seconds: float | None = None  # the time of the devices scored, where ``seconds`` is scaled to the fleet

    @property
    def devices_per_s(self) -> float:
        """Throughput of the devices scored: from the measured time, not the one scaled to the fleet."""
        return self.devices / (self.measured_seconds or self.seconds)


def combined(parts: Sequence[Outcome]) -> Outcome:
    """One outcome of a contender measured in parts (the floors, one file's devices at a time)."""
    return Outcome(sum(p.devices for p in parts), sum(p.rows for p in parts), sum(p.anomalies for p in parts),
                   sum(p.seconds for p in parts), parts[0].note)


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = func()
    return result, time.perf_counter() - started


def _floor(bench: Bench, models: Sequence[Any], matrices: Sequence[np.ndarray],
           score: Callable[[Any, np.ndarray], np.ndarray]) -> Outcome:
    """Sum of per-device scoring time, divided by the workers: perfect parallelism, no overhead."""
    total, rows, anomalies = 0.0, 0, 0
    for model, X in zip(models, matrices):
        values, seconds = timed(lambda: score(model, X))
        total += seconds
        rows += len(values)
        anomalies += int((values <= 0).sum())
    return Outcome(len(models), rows, anomalies, total / bench.workers,
                   f"sum of per-device times / {bench.workers} workers")


def sklearn_floor(bench: Bench, models: Sequence[Any], matrices: Sequence[np.ndarray]) -> Outcome:
    """scikit-learn's ``decision_function`` on ready matrices, models in memory."""
    return _floor(bench, models, matrices, lambda m, X: m.decision_function(X))


def fastpath_floor(bench: Bench, models: Sequence[Any], matrices: Sequence[np.ndarray]) -> Outcome:
    """The fast path (compiling each model included, as a batch does once per hour)."""
    return _floor(bench, models, matrices, lambda m, X: predict(m, X)[0])


def pivot_and_score(model: Any, rows: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """The textbook per-device step: pandas pivot of the long rows, then score."""
    wide = rows.pivot(index="ts", columns="tag", values="value").loc[:, list(features)]
    score, anomaly = predict(model, wide.to_numpy(dtype="float64"))
    return pd.DataFrame({"ts": wide.index, "device": rows["device"].iloc[0], "score": score,
                         "anomaly": anomaly})


def model_file(store: Store, entry: dict[str, Any]) -> Any:
    """One model from its own file, as the original sample loaded it."""
    return decode(entry["format"], store.read(entry["file"]), ModelPolicy())


def _outcome(frame: pd.DataFrame, seconds: float, note: str = "") -> Outcome:
    return Outcome(int(frame["device"].nunique()), len(frame), int(frame["anomaly"].sum()), seconds, note)


def _write(bench: Bench, name: str, frame: pd.DataFrame) -> None:
    """Results of a contender go to scratch, never into the store's committed predictions."""
    (bench.scratch / f"{name}.parquet").write_bytes(parquet_bytes(frame))


def serial_loop(bench: Bench) -> Outcome:
    """One process: read the hour once, then per device a pandas pivot, a model file, a score."""
    entries = bench.manifest["models"]

    def run() -> pd.DataFrame:
        hour = telemetry.read_hour(bench.store, bench.hour)
        frames = [pivot_and_score(model_file(bench.store, entries[str(d)]), rows, entries[str(d)]["features"])
                  for d, rows in hour.groupby("device", sort=True, observed=True)]
        frame = pd.concat(frames, ignore_index=True)
        _write(bench, "serial", frame)
        return frame

    frame, seconds = timed(run)
    return _outcome(frame, seconds)


def joblib_batches(bench: Bench) -> Outcome:
    """fleetscore's own batch function (one per pack) on a joblib process pool instead of Dask."""
    bench.fresh_predictions()
    jobs = bench.batch_jobs()
    pool = Parallel(n_jobs=bench.workers)
    results, seconds = timed(lambda: pool(delayed(score_batch)(job) for job in jobs))
    return Outcome(sum(r.scored for r in results), sum(r.rows for r in results),
                   sum(r.anomalies for r in results), seconds, f"{len(jobs)} batches")


def score_device(store: Store, hour: datetime, entry: dict[str, Any]) -> pd.DataFrame:
    """One Dask task per device: read the device's rows of the hour, load its model file, score."""
    rows = telemetry.read_hour(store, hour, [entry["device"]])
    return pivot_and_score(model_file(store, entry), rows, entry["features"])


def dask_per_device(bench: Bench, sample: int) -> Outcome:
    """``client.map`` with one task per device, on the first ``sample`` devices, scaled to the fleet."""
    from distributed import Client, LocalCluster

    entries = [bench.manifest["models"][n] for n in sorted(bench.manifest["models"])][:sample]
    with LocalCluster(n_workers=bench.workers, threads_per_worker=1, dashboard_address=None,
                      memory_limit="4GiB") as cluster, Client(cluster) as client:
        def run() -> pd.DataFrame:
            futures = client.map(score_device, [bench.store] * len(entries), [bench.hour] * len(entries),
                                 entries, pure=False)
            return pd.concat(client.gather(futures), ignore_index=True)

        frame, seconds = timed(run)
    _write(bench, "dask-per-device", frame)
    fleet = len(bench.manifest["models"])
    outcome = _outcome(frame, seconds * fleet / len(entries),
                       f"{len(entries)} of {fleet} devices measured, time scaled to the fleet")
    return replace(outcome, measured_seconds=seconds)


def spark_apply_in_pandas(bench: Bench) -> Outcome:
    """Spark ``groupBy("device").applyInPandas`` on ``local[workers]``; session start excluded."""
    from benchmarks import spark

    session, started = timed(lambda: spark.session(bench.workers))
    try:
        out = bench.scratch / "spark"
        _, seconds = timed(lambda: spark.score_hour(session, bench.store, bench.hour, bench.manifest, out))
    finally:
        session.stop()
    frame = pq.read_table(out).to_pandas()
    return _outcome(frame, seconds, f"session start {started:.1f}s not counted")
