"""Every way of scoring one generated hour, measured in one run: the rows, tables and JSON of ``make bench``.

Started by :mod:`benchmarks.run`, which parses the flags: this module imports the
flow, Prefect and all of scoring, which a Dask worker must not import on start.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import prefect.settings
import psutil

from benchmarks import contenders, endtoend
from benchmarks.contenders import Bench, Outcome
from benchmarks.fleet import SCORED_HOUR, FleetSize, prepare, ready_chunks
from benchmarks.memory import PeakMemory, separate_cluster
from benchmarks.warmup import warm_server
from benchmarks.worker_memory import curve_table, worker_curve
from scoring import layout, models, predictions, telemetry

RESULTS = Path(__file__).with_name("results")
SKLEARN_FLOOR = "compute floor, scikit-learn"
FASTPATH_FLOOR = "compute floor, fast path"
SPARK = "Spark groupBy.applyInPandas"
PLAIN = "dask-batches"
FLOW = "flow"
Run = Callable[[Bench, argparse.Namespace], Outcome]
ALTERNATIVES: dict[str, tuple[str, Run]] = {
    "serial": ("serial loop, pandas pivot per device", lambda bench, _: contenders.serial_loop(bench)),
    "spark": (SPARK, lambda bench, _: contenders.spark_apply_in_pandas(bench)),
    "dask-per-device": ("Dask, one task per device",
                        lambda bench, args: contenders.dask_per_device(bench, args.per_device_sample)),
    "joblib": ("joblib, fleetscore batches", lambda bench, _: contenders.joblib_batches(bench)),
    PLAIN: ("Dask, fleetscore batches, no Prefect", lambda bench, _: endtoend.without_prefect(bench)),
}
"""The ways of scoring the hour other than the floors and the flow, in the order of the table."""


def _row(name: str, outcome: Outcome, memory: PeakMemory | None = None) -> dict[str, Any]:
    """One table row, printed as it is measured: a long run shows its figures as it goes."""
    row = {"name": name, **asdict(outcome), "devices_per_s": outcome.devices_per_s}
    if memory:
        row |= {"driver_mb": memory.driver_mb, "worker_mb": memory.worker_mb,
                "workers_total_mb": memory.workers_total_mb, **{f"{k}_mb": v for k, v in memory.apart_mb.items()}}
    print(f"    {name}: {outcome.seconds:.2f}s, {row['devices_per_s']:.0f} devices/s"
          + (f", driver {memory.driver_mb:.0f} MB, worker {memory.worker_mb:.0f} MB" if memory else ""), flush=True)
    return row


def measure(name: str, func: Callable[[], Outcome]) -> dict[str, Any]:
    """Run one contender under the memory sampler; one table row."""
    print(f"... {name}", flush=True)
    with PeakMemory() as memory:
        outcome = func()
    return _row(name, outcome, memory)


def _bench(store, workers: int) -> Bench:
    scratch = RESULTS / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return Bench(store, SCORED_HOUR, models.read_manifest(store), workers, scratch)


def floor_rows(bench: Bench, size: FleetSize) -> list[dict[str, Any]]:
    """Both floors, one telemetry file's devices at a time: models and matrices in memory, no I/O timed."""
    print(f"... {SKLEARN_FLOOR}, {FASTPATH_FLOOR}", flush=True)
    names = sorted(bench.manifest["models"])
    parts: dict[str, list[Outcome]] = {SKLEARN_FLOOR: [], FASTPATH_FLOOR: []}
    for first, matrices in ready_chunks(size):
        chunk = names[first : first + len(matrices)]
        loaded, _ = models.load_models(bench.store, bench.manifest, chunk)
        fleet = [loaded[n].reference for n in chunk]  # scikit-learn's pipelines, as fitted
        parts[SKLEARN_FLOOR].append(contenders.sklearn_floor(bench, fleet, matrices))
        parts[FASTPATH_FLOOR].append(contenders.fastpath_floor(bench, fleet, matrices))
    return [_row(name, contenders.combined(outcomes)) for name, outcomes in parts.items()]


def alternative_rows(bench: Bench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The chosen alternatives; Spark says so where pyspark is not installed."""
    telemetry.scan_hour(bench.store, bench.hour)  # first Parquet read of the process pays Arrow's start-up
    rows = []
    for key in (k for k in ALTERNATIVES if k in args.contenders):
        name, run = ALTERNATIVES[key]
        if name == SPARK and not importlib.util.find_spec("pyspark"):
            rows.append({"name": name, "note": "not installed (pip install '.[bench]')"})
        else:
            rows.append(measure(name, lambda: run(bench, args)))
    return rows


def flow_row(bench: Bench) -> tuple[dict[str, Any], endtoend.Phases]:
    phases: list[endtoend.Phases] = []

    def run() -> Outcome:
        outcome, measured = endtoend.flow_run(bench)
        phases.append(measured)
        return outcome

    return measure("fleetscore score (flow, end to end)", run), phases[0]


def apart_run(bench: Bench) -> dict[str, Any]:
    """``fleetscore score`` in a process of its own, on a cluster whose scheduler and workers have theirs.

    The flow process's memory is then the flow's alone, as in production: not the
    benchmark's (which holds a manifest and the floors' leftovers), not the
    scheduler's (with a ``LocalCluster`` both share the flow process). The time
    includes the command's start but no cluster start, which this run does not measure.
    """
    with separate_cluster(bench.workers) as cluster:
        bench.fresh_predictions()
        env = os.environ | {
            "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value()),  # the harness's temporary server
            "DASK_FLEETSCORE__CLUSTER__ADDRESS": cluster.address,
            "DASK_FLEETSCORE__CLUSTER__PLAIN_TCP_HOSTS": '["127.0.0.1"]',
        }
        command = [str(Path(sys.executable).with_name("fleetscore")), "score", "--store", bench.store.url,
                   "--hour", layout.hour_label(bench.hour), "--cluster", "address",
                   "--min-coverage", str(contenders.BENCH_MIN_COVERAGE)]
        with PeakMemory(include=(cluster.workers,), apart={"scheduler": cluster.scheduler}) as memory:
            started = time.perf_counter()
            flow = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            memory.watch("flow", flow.pid)
            _, errors = flow.communicate()
            seconds = time.perf_counter() - started
    if flow.returncode:
        raise RuntimeError(f"fleetscore score failed ({flow.returncode}):\n{errors.decode()[-3000:]}")
    record = predictions.committed(bench.store, bench.hour)
    outcome = Outcome(record["models_scored"], record["rows"], record["anomalies"], seconds,
                      "fleetscore score in its own process; scheduler and workers in theirs, started before it")
    return _row(f"{outcome.devices} devices", outcome, memory)


def _bench_of(devices: int, bench: Bench, base: FleetSize) -> Bench:
    """The bench of a fleet like ``base`` of ``devices`` devices: ``bench`` itself at its own size."""
    size = FleetSize(devices, base.rows, base.tags)
    return bench if size == base else _bench(prepare(RESULTS, size, bench.workers), bench.workers)


def memory_rows(sizes: list[int], base: FleetSize, bench: Bench) -> list[dict[str, Any]]:
    """Peak memory of the flow process, the scheduler and one worker, end to end, at each fleet size."""
    rows = []
    for devices in sizes:
        print(f"... memory apart, {devices} devices", flush=True)
        rows.append(apart_run(_bench_of(devices, bench, base)))
    return rows


def worker_curves(sizes: list[int], base: FleetSize, bench: Bench, batches: int) -> list[dict[str, Any]]:
    """One fresh worker's memory over ``batches`` batches of each fleet size's hour."""
    curves = []
    for devices in sizes:
        print(f"... one worker's memory over {batches} batches, {devices} devices", flush=True)
        curves.append(worker_curve(_bench_of(devices, bench, base), batches))
    return curves


def _fmt(value: Any, spec: str) -> str:
    """``value`` in ``spec``, or a dash as wide as a number would be."""
    return format("-", f">{len(format(0, spec))}") if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], floor: float) -> str:
    """Wall time, throughput, memory and ratio to the floor; every figure from this run."""
    lines = [f"{'':44} {'wall s':>8} {'dev/s':>8} {'driver MB':>9} {'worker MB':>9} {'x floor':>8} "
             f"{'anomalies':>9}  note",
             "-" * 120]
    for r in rows:
        ratio = r["seconds"] / floor if r.get("seconds") else None
        lines.append(f"{r['name']:44} {_fmt(r.get('seconds'), '8.2f')} {_fmt(r.get('devices_per_s'), '8.0f')} "
                     f"{_fmt(r.get('driver_mb'), '9.0f')} {_fmt(r.get('worker_mb'), '9.0f')} "
                     f"{_fmt(ratio, '8.2f')} {_fmt(r.get('anomalies'), '9d')}  {r.get('note', '')}")
    return "\n".join(lines)


def memory_table(rows: list[dict[str, Any]]) -> str:
    """Peak resident memory of each process of the flow, by fleet size."""
    lines = [f"{'':16} {'wall s':>8} {'flow process MB':>15} {'scheduler MB':>12} {'worker MB':>9} "
             f"{'workers MB':>10}", "-" * 76]
    lines += [f"{r['name']:16} {r['seconds']:8.2f} {r['flow_mb']:15.0f} {r['scheduler_mb']:12.0f} "
              f"{r['worker_mb']:9.0f} {r['workers_total_mb']:10.0f}" for r in rows]
    return "\n".join(lines)


def overhead(phases: endtoend.Phases, plain: dict[str, Any] | None) -> dict[str, float | None]:
    """The fixed start-up cost and Prefect's share of the flow run.

    Both need the same work without Prefect (the ``dask-batches`` row): its time to read
    the manifest separates the flow's start from the reading, its total Prefect's overhead.
    Without it, the fixed cost counts the reading and the share is unknown. The sampled
    share (:mod:`benchmarks.sampling`) needs no other row: Prefect's own time less the wait
    for its heartbeat thread, over the run less that wait.
    """
    read_manifest = plain["parts"]["read_manifest"] if plain else 0.0
    prefect = phases.total - phases.cluster_start - phases.teardown_waited - plain["seconds"] if plain else None
    own = phases.prefect_own - phases.heartbeat_wait
    return {"fixed": phases.fixed(read_manifest), "flow_start": phases.flow_start(read_manifest),
            "prefect_s": prefect, "prefect_share": prefect / phases.total if plain else None,
            "prefect_own_share": own / (phases.total - phases.heartbeat_wait)}


def phase_lines(phases: endtoend.Phases, plain: dict[str, Any] | None) -> str:
    """The fixed start-up cost on its own line, and Prefect's share of the run."""
    cost = overhead(phases, plain)
    lines = [
        f"fixed start-up cost: {cost['fixed']:.2f}s (cluster start {phases.cluster_start:.2f}s, "
        f"flow start {cost['flow_start']:.2f}s, teardown waited for {phases.teardown_waited:.2f}s)"
        + ("" if plain else " - flow start includes reading the manifest: no dask-batches row to subtract"),
        f"flow phases: before cluster {phases.before_cluster:.2f}s (flow start, manifest), "
        f"batches {phases.scoring:.2f}s, after the batches {phases.after_cluster:.2f}s "
        f"(commit, report, artifacts, events, flow end; the cluster's {phases.teardown:.2f}s teardown runs meanwhile)",
    ]
    if plain:
        lines.append(f"Prefect overhead: {cost['prefect_s']:.2f}s = {100 * cost['prefect_share']:.1f}% of the run "
                     f"(flow minus cluster start and teardown waited for, minus the same work without Prefect, "
                     f"{plain['seconds']:.2f}s)")
    callers = list(phases.prefect_callers.items())[:6]
    lines += [f"Prefect's own time, sampled in the flow process: {phases.prefect_own:.2f}s = "
              f"{100 * phases.prefect_own / phases.total:.1f}% of the run (engine, API calls, the hour's slot, "
              f"tasks, artifacts, events, logs), of which {phases.heartbeat_wait:.2f}s waiting for its heartbeat "
              f"thread as the flow returned; without that wait {100 * cost['prefect_own_share']:.1f}%",
              "Prefect's own time by fleetscore's caller ('engine': the flow run's start and end): "
              + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in callers)]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "system": platform.platform()}


def report(size: FleetSize, args: argparse.Namespace, rows: list[dict[str, Any]],
           phases: endtoend.Phases | None, memory: list[dict[str, Any]], curves: list[dict[str, Any]]) -> str:
    """The printed tables: rows against the floor, the flow's phases, memory by process, one worker's memory curve."""
    plain = next((r for r in rows if r["name"] == ALTERNATIVES[PLAIN][0]), None)
    parts = [f"fleet {size.key}, {args.workers} workers, {machine()['cpus']} CPUs", table(rows, rows[0]["seconds"])]
    if phases:
        parts.append(phase_lines(phases, plain))
    if memory:
        parts.append("peak memory end to end by fleet size (scheduler and workers in their own processes):\n"
                     + memory_table(memory))
    if curves:
        parts.append("one fresh worker scoring the hour's batches in turn (again from the first after the last), "
                     "its memory after so many batches:\n" + curve_table(curves))
    return "\n\n".join(parts)


def main(args: argparse.Namespace) -> int:
    """Prepare (or reuse) the fleet, measure the rows asked for, print the tables, write the JSON."""
    from prefect.testing.utilities import prefect_test_harness

    size = FleetSize(args.devices, args.rows, args.tags)
    started = time.perf_counter()
    print(f"fleet {size.key} (devices x rows x tags), {args.workers} workers; preparing it (cached) ...", flush=True)
    bench = _bench(prepare(RESULTS, size, args.workers), args.workers)
    print(f"fleet ready in {time.perf_counter() - started:.0f}s", flush=True)
    rows = floor_rows(bench, size) + alternative_rows(bench, args)
    phases, memory = None, []
    if FLOW in args.contenders or args.memory_sizes:
        with prefect_test_harness(server_startup_timeout=120):
            warm_server()  # a long-running server's first answers were given long ago
            if FLOW in args.contenders:
                e2e, phases = flow_row(bench)
                rows.append(e2e)
            memory = memory_rows(args.memory_sizes, size, bench)
    curves = worker_curves(args.memory_sizes, size, bench, args.worker_batches) if args.worker_batches else []
    print("\n" + report(size, args, rows, phases, memory, curves))
    plain = next((r for r in rows if r["name"] == ALTERNATIVES[PLAIN][0]), None)
    out = RESULTS / f"bench-{size.key}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"size": asdict(size), "workers": args.workers, "machine": machine(),
                               "contenders": args.contenders, "rows": rows,
                               "phases": phases and {**asdict(phases), **overhead(phases, plain)},
                               "memory": memory, "worker_curves": curves,
                               "seconds": time.perf_counter() - started}, indent=1))
    print(f"\nwritten {out} in {time.perf_counter() - started:.0f}s")
    return 0

