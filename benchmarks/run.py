"""``make bench``: every way of scoring one generated hour, measured in one run, as a table and JSON.

    python -m benchmarks.run                      # 10,000 devices x 720 rows x 5 tags
    python -m benchmarks.run --quick              # 1,000 devices, smaller memory sizes
    python -m benchmarks.run --devices 2000 --memory-sizes 1000,2000,5000

Ratios are to the scikit-learn floor measured in the same run, since timings on
a shared machine drift between runs but much less within one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from benchmarks import contenders, endtoend
from benchmarks.contenders import Bench, Outcome
from benchmarks.fleet import SCORED_HOUR, FleetSize, prepare, ready_matrices
from benchmarks.memory import PeakMemory
from scoring import models, telemetry

RESULTS = Path(__file__).with_name("results")
SKLEARN_FLOOR = "compute floor, scikit-learn"


def measure(name: str, func: Callable[[], Outcome]) -> dict[str, Any]:
    """Run one contender under the memory sampler; one table row."""
    print(f"... {name}", flush=True)
    with PeakMemory() as memory:
        outcome = func()
    row = {"name": name, **asdict(outcome), "devices_per_s": outcome.devices / outcome.seconds,
           "driver_mb": memory.driver_mb, "worker_mb": memory.worker_mb,
           "workers_total_mb": memory.workers_total_mb}
    print(f"    {outcome.seconds:.2f}s, {row['devices_per_s']:.0f} devices/s, driver {memory.driver_mb:.0f} MB, "
          f"worker {memory.worker_mb:.0f} MB", flush=True)  # a long run shows its figures as it goes
    return row


def _bench(store, workers: int) -> Bench:
    scratch = RESULTS / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return Bench(store, SCORED_HOUR, models.read_manifest(store), workers, scratch)


def _in_memory(bench: Bench, size: FleetSize) -> tuple[list[Any], list[Any]]:
    names = sorted(bench.manifest["models"])
    loaded, _ = models.load_models(bench.store, bench.manifest, names)
    return [loaded[n].reference for n in names], ready_matrices(size)  # scikit-learn's pipelines, as fitted


def contender_rows(bench: Bench, size: FleetSize, sample: int) -> list[dict[str, Any]]:
    """The floors and the alternatives; Spark only where pyspark is installed."""
    fleet, matrices = _in_memory(bench, size)
    telemetry.scan_hour(bench.store, bench.hour)  # first Parquet read of the process pays Arrow's start-up
    rows = [
        measure(SKLEARN_FLOOR, lambda: contenders.sklearn_floor(bench, fleet, matrices)),
        measure("compute floor, fast path", lambda: contenders.fastpath_floor(bench, fleet, matrices)),
    ]
    del fleet, matrices
    rows += [
        measure("serial loop, pandas pivot per device", lambda: contenders.serial_loop(bench)),
        measure("joblib, fleetscore batches", lambda: contenders.joblib_batches(bench)),
        measure("Dask, one task per device", lambda: contenders.dask_per_device(bench, sample)),
        measure("Dask, fleetscore batches, no Prefect", lambda: endtoend.without_prefect(bench)),
    ]
    if importlib.util.find_spec("pyspark"):
        rows.append(measure("Spark groupBy.applyInPandas", lambda: contenders.spark_apply_in_pandas(bench)))
    else:
        rows.append({"name": "Spark groupBy.applyInPandas", "note": "not installed (pip install '.[bench]')"})
    return rows


def flow_row(bench: Bench) -> tuple[dict[str, Any], endtoend.Phases]:
    phases: list[endtoend.Phases] = []

    def run() -> Outcome:
        outcome, measured = endtoend.flow_run(bench)
        phases.append(measured)
        return outcome

    return measure("fleetscore score (flow, end to end)", run), phases[0]


def memory_rows(sizes: list[int], base: FleetSize, workers: int, measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Peak memory of the flow process and of one worker, end to end, at several fleet sizes.

    ``measured`` is the flow row of the main fleet, reused at its size.
    """
    rows = []
    for devices in sizes:
        if devices == base.devices:
            rows.append({**measured, "name": f"{devices} devices"})
            continue
        size = FleetSize(devices, base.rows, base.tags)
        bench = _bench(prepare(RESULTS, size, workers), workers)
        row, _ = flow_row(bench)
        rows.append({**row, "name": f"{devices} devices"})
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], floor: float | None) -> str:
    """Wall time, throughput, memory and ratio to the floor; every figure from this run."""
    lines = [f"{'':44} {'wall s':>8} {'dev/s':>8} {'driver MB':>9} {'worker MB':>9} {'x floor':>8} "
             f"{'anomalies':>9}  note",
             "-" * 120]
    for r in rows:
        ratio = r["seconds"] / floor if floor and r.get("seconds") else None
        lines.append(f"{r['name']:44} {_fmt(r.get('seconds'), '8.2f')} {_fmt(r.get('devices_per_s'), '8.0f')} "
                     f"{_fmt(r.get('driver_mb'), '9.0f')} {_fmt(r.get('worker_mb'), '9.0f')} "
                     f"{_fmt(ratio, '8.2f')} {_fmt(r.get('anomalies'), '9d')}  {r.get('note', '')}")
    return "\n".join(lines)


def phase_lines(phases: endtoend.Phases, plain: dict[str, Any]) -> str:
    """The fixed start-up cost on its own line, and Prefect's share of the run."""
    read_inputs = plain["parts"]["read_inputs"]
    prefect = phases.total - phases.cluster_start - phases.teardown - plain["seconds"]
    return "\n".join([
        f"fixed start-up cost: {phases.fixed(read_inputs):.2f}s (cluster start {phases.cluster_start:.2f}s, "
        f"flow start {phases.flow_start(read_inputs):.2f}s, teardown {phases.teardown:.2f}s)",
        f"flow phases: before cluster {phases.before_cluster:.2f}s (flow start, manifest, devices), "
        f"batches {phases.scoring:.2f}s, after cluster {phases.after_cluster:.2f}s "
        f"(commit, report, artifacts, flow end)",
        f"Prefect overhead: {prefect:.2f}s = {100 * prefect / phases.total:.1f}% of the run "
        f"(flow minus cluster start/teardown minus the same work without Prefect, {plain['seconds']:.2f}s)",
    ])


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "system": platform.platform()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--devices", type=int, default=10_000)
    top.add_argument("--rows", type=int, default=720, help="rows per device in the hour (5 s grid, at most 720)")
    top.add_argument("--tags", type=int, default=5, help="tags per device (at most 5)")
    top.add_argument("--workers", type=int, default=2, help="Dask workers, joblib processes, Spark cores")
    top.add_argument("--per-device-sample", type=int, default=500,
                     help="devices scored by the one-task-per-device row (its time is scaled to the fleet)")
    top.add_argument("--memory-sizes", default="1000,3000,10000",
                     help="fleet sizes for the end-to-end memory rows, comma-separated; '' skips them")
    top.add_argument("--quick", action="store_true",
                     help="1,000 devices, memory at 300,1000,3000: a few minutes")
    args = top.parse_args(argv)
    if args.quick:
        args.devices, args.memory_sizes, args.per_device_sample = 1000, "300,1000,3000", 200
    return args


def main(argv: list[str] | None = None) -> int:
    from prefect.testing.utilities import prefect_test_harness

    args = parse_args(argv)
    size = FleetSize(args.devices, args.rows, args.tags)
    sizes = [int(s) for s in args.memory_sizes.split(",") if s.strip()]
    started = time.perf_counter()
    print(f"fleet {size.key} (devices x rows x tags), {args.workers} workers; preparing it (cached) ...", flush=True)
    bench = _bench(prepare(RESULTS, size, args.workers), args.workers)
    rows = contender_rows(bench, size, args.per_device_sample)
    with prefect_test_harness(server_startup_timeout=120):
        e2e, phases = flow_row(bench)
        memory = memory_rows(sizes, size, args.workers, e2e)
    rows.append(e2e)
    floor = rows[0]["seconds"]
    plain = next(r for r in rows if r["name"].endswith("no Prefect"))
    report = "\n\n".join([
        f"fleet {size.key}, {args.workers} workers, {machine()['cpus']} CPUs",
        table(rows, floor), phase_lines(phases, plain),
        "memory end to end by fleet size:\n" + table(memory, None),
    ])
    print("\n" + report)
    out = RESULTS / f"bench-{size.key}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"size": asdict(size), "workers": args.workers, "machine": machine(),
                               "rows": rows, "phases": {**asdict(phases), "fixed": phases.fixed(plain["parts"]["read_inputs"])},
                               "memory": memory, "seconds": time.perf_counter() - started}, indent=1))
    print(f"\nwritten {out} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
