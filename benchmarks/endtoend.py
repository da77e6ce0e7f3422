"""``fleetscore score`` end to end (the ``score-fleet`` flow), split into its phases.

The flow runs unchanged against a real, temporary Prefect API. Its cluster
context manager is wrapped to time the cluster's start and teardown, so the
fixed start-up cost is reported apart from the scoring. The same batches on
Dask without Prefect give the baseline for Prefect's own overhead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import dask.config

import flows.score
from benchmarks.contenders import BENCH_MIN_COVERAGE, Bench, Outcome, timed
from benchmarks.sampling import PrefectTime
from cluster.clusters import open_cluster
from cluster.config import setting
from flows import rules
from scoring import layout, models, predictions, telemetry
from scoring.batch import batch_jobs, plan, score_batch


@dataclass
class Phases:
    """Seconds spent in each part of one flow run.

    The flow closes its cluster in a thread while it commits and reports, so ``teardown``
    (how long closing took) overlaps ``after_cluster``; ``teardown_waited`` is the part of it
    the run waited for once its own work was done, the part that made the run longer.
    """

    total: float
    before_cluster: float  # flow start and reading the manifest (the footers are read while the cluster starts)
    cluster_start: float
    scoring: float  # batches on the cluster
    teardown: float
    teardown_waited: float
    after_cluster: float  # from the last batch: commit, report, artifacts, events, flow end
    prefect_own: float = 0.0  # sampled: the flow process's main thread in Prefect's code (benchmarks.sampling)
    heartbeat_wait: float = 0.0  # sampled: of which waiting for Prefect's heartbeat thread as the flow returns
    prefect_callers: dict[str, float] = field(default_factory=dict)  # sampled: the rest by fleetscore's caller

    def flow_start(self, read_manifest: float) -> float:
        """Prefect's start of the run: the time before the cluster less reading the manifest without Prefect."""
        return max(self.before_cluster - read_manifest, 0.0)

    def fixed(self, read_manifest: float) -> float:
        """Cluster start, flow start and the teardown the run waited for: paid once per run, whatever the fleet size."""
        return self.cluster_start + self.flow_start(read_manifest) + self.teardown_waited


@contextmanager
def cluster_of(workers: int) -> Iterator[None]:
    """The flow's LocalCluster at a fixed size of ``workers`` single-threaded workers."""
    with dask.config.set({
        "fleetscore.cluster.kind": "local",
        "fleetscore.cluster.local.n-workers": workers,
        "fleetscore.cluster.local.threads-per-worker": 1,
        "fleetscore.cluster.local.dashboard-address": None,
        "fleetscore.cluster.adapt": {"minimum": workers, "maximum": workers},
    }):
        yield


def flow_run(bench: Bench) -> tuple[Outcome, Phases]:
    """Run ``score-fleet`` on the bench's hour; the caller provides the Prefect API."""
    marks: dict[str, float] = {}
    bench.fresh_predictions()

    @contextmanager
    def timed_cluster(*args: Any, **kwargs: Any) -> Iterator[Any]:
        marks["open"] = time.perf_counter()
        with open_cluster(*args, **kwargs) as client:
            marks["ready"] = time.perf_counter()
            try:
                yield client
            finally:
                marks["leave"] = time.perf_counter()
        marks["closed"] = time.perf_counter()

    def reported(summary: dict[str, Any]) -> str:  # the flow's last step before it waits for the teardown
        marks["reported"] = time.perf_counter()
        return one_line(summary)

    one_line = flows.score.report.one_line
    with (cluster_of(bench.workers), mock.patch.object(flows.score, "open_cluster", timed_cluster),
          mock.patch.object(flows.score.report, "one_line", reported)):
        with PrefectTime() as sampled:
            started = time.perf_counter()
            summary = flows.score.score_fleet(store=bench.store.url, hour=layout.hour_label(bench.hour),
                                              min_coverage=BENCH_MIN_COVERAGE)
            ended = time.perf_counter()
    phases = Phases(ended - started, marks["open"] - started, marks["ready"] - marks["open"],
                    marks["leave"] - marks["ready"], marks["closed"] - marks["leave"],
                    max(marks["closed"] - marks["reported"], 0.0), ended - marks["leave"],
                    sampled.of("prefect") + sampled.of("heartbeat"), sampled.of("heartbeat"), sampled.by_caller())
    outcome = Outcome(summary["devices_scored"], summary["rows"], summary["anomalous_rows"], phases.total,
                      f"cluster start {phases.cluster_start:.1f}s included, teardown {phases.teardown:.1f}s "
                      f"behind the commit ({phases.teardown_waited:.1f}s waited for)")
    return outcome, phases


def without_prefect(bench: Bench) -> Outcome:
    """The flow's work with no Prefect: read inputs, one Dask task per batch, commit. Cluster start excluded."""
    bench.fresh_predictions()
    parts: dict[str, float] = {}
    with cluster_of(bench.workers), open_cluster() as client:
        def run() -> dict[str, Any]:
            manifest, parts["read_manifest"] = timed(lambda: models.read_manifest(bench.store))
            scan, parts["scan_hour"] = timed(lambda: telemetry.scan_hour(bench.store, bench.hour))
            batches = plan(manifest, setting("scoring.packs-per-batch"))
            jobs = batch_jobs(bench.store, bench.grid, manifest, batches, scan, rules.alert_rule())
            futures = [client.submit(score_batch, job, pure=False) for job in jobs]
            results = client.gather(futures)
            failures = scan.unreadable + [f for r in results for f in r.failures]
            stats = {"models_scored": sum(r.scored for r in results), "rows": sum(r.rows for r in results),
                     "anomalies": sum(r.anomalies for r in results), "failed": len(failures)}
            return predictions.commit(bench.store, bench.hour, [r.part for r in results if r.part], failures, stats,
                                      [r.quarantine for r in results if r.quarantine])

        with PrefectTime():  # sampled as the flow is, so that the difference of the two leaves the sampler out
            marker, seconds = timed(run)
    return Outcome(marker["models_scored"], marker["rows"], marker["anomalies"], seconds,
                   "same batches as the flow, plain client.submit; its commit leaves out the device-hour rows", parts)
