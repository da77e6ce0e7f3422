"""One worker's resident memory batch after batch, for fleets of different sizes.

The memory rows give a worker's peak at each fleet size, but a worker of a larger fleet also
runs more batches, so they cannot tell memory that grows with the fleet (something held per
device or per file) from memory that grows with the batches a process has run (the allocators
settling). Here one single-threaded worker, started as the memory rows' are (``dask worker``
with fleetscore's malloc settings, as on the Azure VMs), scores the hour's batches one at a
time, in plan order and again from the first once the hour's are done, and reports its memory
after given counts of batches. Equal curves for a small and a large fleet mean the fleet's
size does not matter, only the batches run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from distributed import Client

from benchmarks.contenders import Bench
from benchmarks.memory import separate_cluster
from cluster.config import setting
from flows import rules
from scoring import telemetry
from scoring.batch import BatchJob, batch_jobs, plan, score_batch

MB = 1024 * 1024
CHECKPOINTS = (1, 10, 25, 50, 100, 250, 500, 1000, 2000)
"""Batch counts after which the worker's memory is reported (and the last batch's)."""


def _high_water_mb() -> float:
    """This process's peak resident memory so far (Linux's ``VmHWM``).

    Not ``ru_maxrss``: that keeps the peak from before ``exec``, and a spawned worker is
    forked from the process that starts it, whose size it would report.
    """
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def scored_memory(job: BatchJob) -> tuple[float, float]:
    """Score one batch on the worker; its resident memory after it and its peak so far, in MB.

    The peak is the largest a batch made the worker, which a sample taken between batches would miss.
    """
    score_batch(job)
    return psutil.Process().memory_info().rss / MB, _high_water_mb()


def worker_curve(bench: Bench, batches: int) -> dict[str, Any]:
    """A fresh worker's memory after each checkpoint of ``batches`` batches of the bench's hour."""
    manifest = bench.manifest
    jobs = batch_jobs(bench.store, bench.grid, manifest, plan(manifest, setting("scoring.packs-per-batch")),
                      telemetry.scan_hour(bench.store, bench.hour), rules.alert_rule())
    points = []
    with separate_cluster(1) as cluster, Client(cluster.address) as client:
        for done in range(1, batches + 1):
            rss, peak = client.submit(scored_memory, jobs[(done - 1) % len(jobs)], pure=False).result()
            if done in CHECKPOINTS or done == batches:
                points.append({"batches": done, "rss_mb": round(rss, 1), "peak_mb": round(peak, 1)})
    return {"devices": len(manifest["models"]), "hour_batches": len(jobs), "points": points}


def curve_table(curves: list[dict[str, Any]]) -> str:
    """Resident and peak MB of the worker after each checkpoint, one column pair per fleet."""
    counts = sorted({p["batches"] for c in curves for p in c["points"]})
    labels = [f"{c['devices']:,} devices, {c['hour_batches']} a pass" for c in curves]
    head = "".join(f" {label:>29}" for label in labels)
    lines = [f"{'batches run':>12}{head}", f"{'':>12}" + "".join(f" {'RSS MB':>14} {'peak MB':>14}" for _ in curves)]
    for n in counts:
        cells = []
        for c in curves:
            p = next((p for p in c["points"] if p["batches"] == n), None)
            cells.append(f" {p['rss_mb']:14.0f} {p['peak_mb']:14.0f}" if p else f" {'-':>14} {'-':>14}")
        lines.append(f"{n:>12,}" + "".join(cells))
    return "\n".join(lines)
