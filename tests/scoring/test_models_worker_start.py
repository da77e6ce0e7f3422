"""A Dask worker's first batch of standard models imports neither scikit-learn, skops nor joblib.

Workers are fresh processes; importing those libraries cost ~1.5 s of each one's start.
"""

import json
import subprocess
import sys
from pathlib import Path

from scoring import layout, models
from scoring.align import Grid
from scoring.generate import device_ids
from scoring.store import Store
from scoring.training import train_batch

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 3
WORKER = """
import json, sys
from scoring import models, telemetry
from scoring.alerts import AlertRule
from scoring.align import Grid
from scoring.batch import BatchJob, score_batch
from scoring.layout import parse_hour
from scoring.store import Store

store, hour = Store(sys.argv[1]), parse_hour(sys.argv[2])
manifest = models.read_manifest(store)
result = score_batch(BatchJob(store, Grid.over([hour]), manifest, telemetry.scan_hour(store, hour).files, AlertRule(1, 1)))
heavy = [m for m in ("sklearn", "skops", "joblib") if m in sys.modules]
print(json.dumps({"scored": result.scored, "rows": result.rows, "failures": len(result.failures), "heavy": heavy}))
"""


def test_scoring_a_batch_of_array_models_imports_no_scikit_learn_skops_or_joblib(tmp_path, write_fleet,
                                                                                  train_hours, scored_hour):
    store = Store(tmp_path)
    write_fleet(store, devices=DEVICES)
    version = models.new_version()
    trained = train_batch(store, train_hours, Grid.over(train_hours), device_ids(DEVICES), 0, "device",
                          0.05, "scale", version)
    manifest = models.write_manifest(store, version, "device", layout.span(train_hours), trained.entries,
                                     trained.packs)
    models.activate(store, version)
    assert {e["format"] for e in manifest["models"].values()} == {"ocsvm-arrays"}

    run = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path), scored_hour.isoformat()],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(run.stdout)
    assert report["scored"] == DEVICES and report["rows"] > 0 and report["failures"] == 0
    assert report["heavy"] == []
