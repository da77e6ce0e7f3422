"""The original sample end to end: its 15 pickled models imported, its sensor_data.csv scored by score-fleet."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows import cli
from flows.score import score_fleet
from scoring import layout, models, predictions
from scoring.fastpath import to_pipeline
from scoring.store import Store

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed"
HOUR = layout.parse_hour("2018-08-29T00")
pytestmark = [pytest.mark.usefixtures("prefect_backend"),
              pytest.mark.skipif(not (SEED / "models").is_dir(), reason=f"the original sample's files are not at {SEED}")]


def write_sample(store: Store) -> pd.DataFrame:
    """The sample's CSV, one file per hour as it came (``TS,Device,Tag,Value``); returns the scored hour's rows."""
    sample = pd.read_csv(SEED / "sensor_data.csv")
    stamps = pd.to_datetime(sample["TS"], utc=True)
    for hour, rows in sample.groupby(stamps.dt.floor("h")):
        store.write(f"{layout.telemetry_dir(hour)}/sensor_data.csv", rows.to_csv(index=False).encode())
    return sample[stamps.dt.floor("h") == HOUR].assign(ts=stamps)


def test_imported_sample_models_score_the_sample_as_its_own_job_would(any_store, capsys):
    any_store.create()
    rows = write_sample(any_store)
    assert cli.main(["import-models", "--store", any_store.url, "--from", str(SEED / "models")]) == 0
    version = models.live_version(any_store)
    # the sample's sensors report on about a third of the 5 s steps, each reading scored as it came
    summary = score_fleet(store=any_store.url, hour=layout.hour_label(HOUR), granularity="sensor", min_coverage=0.0,
                          max_fill=0)
    assert summary["model_version"] == version == predictions.committed(any_store, HOUR)["model_version"]
    got = predictions.read_predictions(any_store, HOUR)
    assert summary["devices_failed"] == 0 and len(got) == len(rows) == 4203
    manifest = models.read_manifest(any_store)
    loaded, _ = models.load_models(any_store, manifest, manifest["models"])
    for (device, tag), expected in rows.groupby(["Device", "Tag"]):
        scored = got[(got["device"] == str(device)) & (got["tag"] == str(tag))].merge(
            expected, on="ts", validate="one_to_one")
        reference = to_pipeline(loaded[f"{device}/{tag}"])  # the sample's job: pipe.predict, 1 = anomaly
        X = scored["Value"].to_numpy()[:, None]
        np.testing.assert_array_equal(scored["anomaly"], np.where(reference.predict(X) == 1, 0, 1))
        np.testing.assert_allclose(scored["score"], reference.decision_function(X), rtol=0, atol=1e-12)
