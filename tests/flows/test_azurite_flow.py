"""The whole path (generate, train-fleet, score-fleet) on Azure Blob through Azurite equals the local run."""

import pandas as pd
import pytest

from flows.score import score_fleet
from flows.train import train_fleet
from scoring import layout, models, predictions
from scoring.store import Store

pytestmark = pytest.mark.usefixtures("prefect_backend")


def run_everything(store: Store, write_fleet, train_hours, scored_hour) -> dict:
    write_fleet(store, devices=12)
    train_fleet(start=layout.hour_label(train_hours[0]), end=layout.hour_label(train_hours[-1]),
                store=store.url, devices_per_pack=5)
    return score_fleet(store=store.url, hour=layout.hour_label(scored_hour))


def test_azurite_and_local_runs_give_the_same_models_and_predictions(
        az_store, tmp_path, write_fleet, train_hours, scored_hour):
    local = Store(tmp_path)
    on_blob = run_everything(az_store, write_fleet, train_hours, scored_hour)
    on_disk = run_everything(local, write_fleet, train_hours, scored_hour)
    assert on_blob["devices_scored"] == on_disk["devices_scored"] == 12
    assert on_blob["predictions"].startswith(az_store.url)
    blob_models, disk_models = models.read_manifest(az_store)["models"], models.read_manifest(local)["models"]
    assert {n: e["sha256"] for n, e in blob_models.items()} == {n: e["sha256"] for n, e in disk_models.items()}
    pd.testing.assert_frame_equal(predictions.read_predictions(az_store, scored_hour),
                                  predictions.read_predictions(local, scored_hour))
    assert same_run(predictions.committed(az_store, scored_hour)) == same_run(predictions.committed(local, scored_hour))


def same_run(marker: dict) -> dict:
    """A commit record less what names this run and store's own objects: run id, model version id, input file versions."""
    kept = {k: v for k, v in marker.items() if k not in ("model_version", "flow_run_id")}
    return kept | {"inputs": [{k: v for k, v in i.items() if k != "version"} for i in marker["inputs"]]}
