"""The benchmark's fleet is what the pipeline reads, and its memory sampler sees worker processes."""

import json
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest
from distributed import Client

from benchmarks import contenders, run, suite
from benchmarks.contenders import Bench
from benchmarks.fleet import SCORED_HOUR, FleetSize, fleet_values, prepare, ready_matrices
from benchmarks.memory import PeakMemory, separate_cluster
from benchmarks.suite import floor_rows
from benchmarks.worker_memory import curve_table
from flows import rules
from scoring import models, telemetry
from scoring.features import to_features
from scoring.records import parse_key


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    size = FleetSize(devices=12, rows=60, tags=3)
    return size, prepare(tmp_path_factory.mktemp("bench"), size, jobs=1)


def test_the_floor_scores_the_matrices_the_pipeline_builds(fleet):
    size, store = fleet
    manifest = models.read_manifest(store)
    assert len(manifest["models"]) == 12
    specs = {parse_key(n): e["features"] for n, e in manifest["models"].items()}
    features, failures, _ = to_features(telemetry.read_hour(store, SCORED_HOUR), specs, rules.grid([SCORED_HOUR], min_coverage=contenders.BENCH_MIN_COVERAGE))
    assert not failures
    for f, ready in zip(sorted(features, key=lambda f: f.key), ready_matrices(size), strict=True):
        np.testing.assert_array_equal(f.X, ready)


def test_every_contender_finds_the_same_anomalies(fleet, tmp_path):
    size, store = fleet
    bench = Bench(store, SCORED_HOUR, models.read_manifest(store), 1, tmp_path)
    loaded, _ = models.load_models(store, bench.manifest, bench.manifest["models"])
    fleet_models = [loaded[n].reference for n in sorted(loaded)]
    floor = contenders.sklearn_floor(bench, fleet_models, ready_matrices(size))
    assert floor.anomalies > 0 and floor.rows == 12 * 60
    for outcome in (contenders.fastpath_floor(bench, fleet_models, ready_matrices(size)),
                    contenders.serial_loop(bench), contenders.joblib_batches(bench)):
        assert (outcome.devices, outcome.rows, outcome.anomalies) == (12, floor.rows, floor.anomalies)


def test_fleet_values_stay_in_range_except_the_injected_bursts():
    size = FleetSize(devices=50, rows=40, tags=5)
    calm = fleet_values(size, 0, 50, seed=3, anomaly_rate=0.0)
    bursts = fleet_values(size, 0, 50, seed=3, anomaly_rate=0.2)
    high = np.array([15.0, 40.0, 65.0, 85.0, 110.0])
    assert calm.shape == (50, 40, 5) and (calm <= high).all()
    hit = (bursts > high).any(axis=(1, 2))
    assert 3 <= hit.sum() <= 20
    assert ((bursts > high).sum(axis=(1, 2))[hit] == 6).all()
    np.testing.assert_array_equal(bursts, fleet_values(size, 0, 50, seed=3, anomaly_rate=0.2))


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError, match="rows <= 720"):
        FleetSize(devices=10, rows=721)


def test_peak_memory_counts_a_new_child_process_not_the_driver():
    grow = "b = bytearray(200 * 1024 * 1024); import time; time.sleep(1.0)"
    with PeakMemory(interval=0.02) as memory:
        subprocess.run([sys.executable, "-c", grow], check=True)
    assert memory.worker_mb > 200
    assert memory.driver_mb > 0


def test_peak_memory_reports_a_process_apart_and_not_as_a_worker():
    grow = "b = bytearray(200 * 1024 * 1024); import time; time.sleep(1.5)"
    apart = subprocess.Popen([sys.executable, "-c", grow])
    try:
        with PeakMemory(interval=0.02, apart={"scheduler": apart.pid}) as memory:
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5)"], check=True)
            apart.wait()
    finally:
        apart.kill()
    assert memory.apart_mb["scheduler"] > 200
    assert 0 < memory.worker_mb < 100


def test_the_separate_cluster_runs_scheduler_and_workers_outside_this_process():
    with separate_cluster(2) as cluster, Client(cluster.address) as client:
        assert client.run_on_scheduler(os.getpid) == cluster.scheduler != os.getpid()
        workers = set(client.run(os.getpid).values())
        assert len(workers) == 2
        assert workers <= {c.pid for c in psutil.Process(cluster.workers).children(recursive=True)}
    assert not psutil.pid_exists(cluster.scheduler)


def test_the_per_device_row_scales_its_time_to_the_fleet_but_not_its_throughput(fleet, tmp_path):
    _, store = fleet
    bench = Bench(store, SCORED_HOUR, models.read_manifest(store), 1, tmp_path)
    outcome = contenders.dask_per_device(bench, sample=4)
    assert outcome.devices == 4 and outcome.seconds == pytest.approx(3 * outcome.measured_seconds)
    assert outcome.devices_per_s * outcome.seconds == pytest.approx(12)  # the fleet, in the time scaled to it


def test_the_floors_in_chunks_add_up_to_the_whole_fleet(fleet, tmp_path):
    size, store = fleet
    bench = Bench(store, SCORED_HOUR, models.read_manifest(store), 1, tmp_path)
    sklearn, fastpath = floor_rows(bench, size)
    loaded, _ = models.load_models(store, bench.manifest, bench.manifest["models"])
    whole = contenders.sklearn_floor(bench, [loaded[n].reference for n in sorted(loaded)], ready_matrices(size))
    for row in (sklearn, fastpath):
        assert (row["devices"], row["rows"], row["anomalies"]) == (12, whole.rows, whole.anomalies)


def test_the_run_measures_only_the_contenders_asked_for(fleet, tmp_path, monkeypatch):
    """The floors, the plain Dask batches and the flow, with the memory of each process, in one JSON."""
    size, _ = fleet
    monkeypatch.setattr(suite, "RESULTS", tmp_path)
    assert run.main(["--devices", "12", "--rows", "60", "--tags", "3", "--workers", "1",
                     "--contenders", "dask-batches,flow", "--memory-sizes", "12", "--worker-batches", "30"]) == 0
    (written,) = tmp_path.glob("bench-12x60x3-*.json")
    result = json.loads(written.read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == [suite.SKLEARN_FLOOR, suite.FASTPATH_FLOOR, "Dask, fleetscore batches, no Prefect",
                     "fleetscore score (flow, end to end)"]
    assert {(r["devices"], r["anomalies"]) for r in result["rows"]} == {(12, result["rows"][0]["anomalies"])}
    assert 0 < result["phases"]["prefect_share"] < 1 and result["phases"]["fixed"] > 0
    phases = result["phases"]
    assert 0 < phases["prefect_own"] < phases["total"]
    assert "engine" in phases["prefect_callers"]  # the flow run's creation and end, before and after fleetscore's code
    (memory,) = result["memory"]
    assert memory["devices"] == 12 and min(memory["flow_mb"], memory["scheduler_mb"], memory["worker_mb"]) > 50
    (curve,) = result["worker_curves"]  # the hour's one batch, scored 30 times over by one worker
    assert (curve["devices"], curve["hour_batches"]) == (12, 1)
    points = curve["points"]
    assert [p["batches"] for p in points] == [1, 10, 25, 30]
    assert all(50 < p["rss_mb"] <= p["peak_mb"] for p in points)
    assert [p["peak_mb"] for p in points] == sorted(p["peak_mb"] for p in points)  # a high-water mark


def test_a_process_s_peak_is_its_high_water_mark_not_its_memory_now():
    code = "from benchmarks.worker_memory import memory_mb; b = bytearray(300 * 1024 * 1024); del b; " \
           "print(*memory_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    rss, peak = map(float, out.stdout.split())
    assert rss < 250 < 300 < peak  # MB: the 300 MB were freed, the peak keeps them


def test_the_worker_curve_table_has_a_row_per_checkpoint_and_columns_per_fleet():
    points = [{"batches": b, "rss_mb": b, "peak_mb": 900.0} for b in (1, 10)]
    curves = [{"devices": n, "hour_batches": n // 200,
               "points": [p | {"rss_mb": p["rss_mb"] + n / 100} for p in points]} for n in (10_000, 100_000)]
    lines = curve_table(curves).splitlines()
    assert "10,000 devices, 50 a pass" in lines[0] and "100,000 devices, 500 a pass" in lines[0]
    assert [line.split() for line in lines[3:]] == [["1", "101", "900", "1001", "900"],
                                                    ["10", "110", "900", "1010", "900"]]


def test_contenders_are_checked_and_memory_defaults_to_the_fleet_size():
    assert [*suite.ALTERNATIVES, suite.FLOW] == run.CONTENDERS  # the flags name exactly the rows measured
    assert run.parse_args(["--devices", "500"]).memory_sizes == [500]
    assert run.parse_args(["--memory-sizes", ""]).memory_sizes == []
    assert run.parse_args(["--contenders", ""]).contenders == []
    assert [run.parse_args(flags).worker_batches for flags in ([], ["--quick"], ["--quick", "--worker-batches", "0"])] \
        == [500, 50, 0]
    with pytest.raises(SystemExit):
        run.parse_args(["--worker-batches", "-1"])
    with pytest.raises(SystemExit):
        run.parse_args(["--contenders", "flow,spak"])


def test_the_benchmark_entry_point_imports_neither_the_flow_nor_scoring():
    """Spawned Dask workers import the main module again: ``python -m benchmarks.run`` must stay light."""
    code = "import sys, benchmarks.run; print(sorted(m for m in ('flows.score', 'scoring.batch', 'prefect', "\
           "'sklearn', 'deltalake') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert out.stdout.strip() == "[]"


def test_the_worker_curve_s_module_holds_what_a_flow_s_worker_does():
    """Its worker imports it to run ``scored_memory``: no benchmark contender, Prefect or scikit-learn comes along."""
    code = "import sys, benchmarks.worker_memory; print(sorted(m for m in ('benchmarks.contenders', 'joblib', "\
           "'prefect', 'sklearn', 'flows') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert out.stdout.strip() == "[]"
