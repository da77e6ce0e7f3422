"""One worker's resident memory batch after batch, for fleets of different sizes.

The memory rows give a worker's peak at each fleet size, but a worker of a larger fleet also
runs more batches, so they cannot tell memory that grows with the fleet (something held per
device or per file) from memory that grows with the batches a process has run (the allocators
settling). Here one single-threaded worker, started as the memory rows' are (``dask worker``
with fleetscore's malloc settings, as on the Azure VMs), scores the hour's batches one at a
time, in plan order and again from the first once the hour's are done, and reports its memory
after given counts of batches. Equal curves for a small and a large fleet mean the fleet's
size does not matter, only the batches run.

The tables are removed before each pass, so that every batch writes its predictions file as
in a run (a file already there is not written again). Unlike a flow's worker, this one drops each
result as soon as it is back, where a flow's results wait on their worker until the flow has read
them. Where the hour's batches differ in size (a small fleet's last one), the resident memory
after a count depends on which batch came last; the peak does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Client

from benchmarks.memory import separate_cluster
from scoring.batch import BatchJob, score_batch

if TYPE_CHECKING:  # the worker imports this module to run scored_memory: it holds what a flow's worker does
    from benchmarks.contenders import Bench

STATUS = Path("/proc/self/status")
CHECKPOINTS = (1, 10, 25, 50, 100, 250, 500, 1000, 2000)
"""Batch counts after which the worker's memory is reported (and after the last batch)."""


def memory_mb() -> tuple[float, float]:
    """This process's resident memory and its peak so far (Linux's ``VmRSS`` and ``VmHWM``), in MB.

    Not ``ru_maxrss`` for the peak: it keeps the peak from before ``exec``, and a spawned
    worker is forked from the process that starts it, whose size it would report.
    """
    fields = dict(line.split(":", 1) for line in STATUS.read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def scored_memory(job: BatchJob) -> tuple[float, float]:
    """Score one batch on the worker; its resident memory after it and its peak so far, in MB."""
    score_batch(job)
    return memory_mb()


def worker_curve(bench: Bench, batches: int) -> dict[str, Any]:
    """A fresh worker's memory after each checkpoint of ``batches`` batches of the bench's hour."""
    if not STATUS.exists():
        raise RuntimeError(f"the worker curve reads Linux's {STATUS}: skip it with --worker-batches 0")
    jobs = bench.batch_jobs()
    points = []
    with separate_cluster(1) as cluster, Client(cluster.address) as client:
        for done in range(1, batches + 1):
            if (done - 1) % len(jobs) == 0:
                bench.fresh_predictions()
            rss, peak = client.submit(scored_memory, jobs[(done - 1) % len(jobs)], pure=False).result()
            if done in CHECKPOINTS or done == batches:
                points.append({"batches": done, "rss_mb": round(rss, 1), "peak_mb": round(peak, 1)})
    return {"devices": len(bench.manifest["models"]), "hour_batches": len(jobs), "points": points}


def curve_table(curves: list[dict[str, Any]]) -> str:
    """Resident and peak MB of the worker after each checkpoint, one pair of columns per fleet.

    Every curve of a run has the same checkpoints: they depend on ``--worker-batches`` only.
    """
    labels = [f"{c['devices']:,} devices, {c['hour_batches']} a pass" for c in curves]
    lines = [f"{'batches run':>12}" + "".join(f" {label:>29}" for label in labels),
             f"{'':>12}" + f" {'RSS MB':>14} {'peak MB':>14}" * len(curves), "-" * (12 + 30 * len(curves))]
    for points in zip(*(c["points"] for c in curves)):
        lines.append(f"{points[0]['batches']:>12,}" + "".join(f" {p['rss_mb']:14.0f} {p['peak_mb']:14.0f}"
                                                              for p in points))
    return "\n".join(lines)
