"""The benchmark's fleet is what the pipeline reads, and its memory sampler sees worker processes."""

import subprocess
import sys

import numpy as np
import pytest

from benchmarks import contenders
from benchmarks.contenders import Bench
from benchmarks.fleet import SCORED_HOUR, FleetSize, fleet_values, prepare, ready_matrices
from benchmarks.memory import PeakMemory
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
