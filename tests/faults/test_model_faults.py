"""Models that must not be trusted: forged with their digest, pickles in a pack, versions switched mid-run.

Each case runs score-fleet on real LocalCluster workers and adds its row to the fault table.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import dask.config
import numpy as np
import pytest

from cluster.config import setting
from flows import rules
from flows.score import score_fleet
from scoring import layout, models, predictions
from scoring.generate import device_ids
from scoring.model_format import encode
from scoring.predict import fit_model
from scoring.signing import SignatureError
from scoring.store import Store, sha256
from scoring.training import train_batch
from tests.scoring.test_models import put_in_pack

from .test_faults import DEVICES, SIGNING_KEY, accounting, fleet, score  # noqa: F401 - fleet is a fixture

pytestmark = pytest.mark.usefixtures("prefect_backend")
PRELOAD = str(Path(__file__).with_name("preload_models.py"))


def forge(store: Store, device: str) -> str:
    """Replace one device's model and its digest in the manifest, as anyone who can write the store can."""
    manifest = models.read_manifest(store)
    data = encode(fit_model(np.random.default_rng(5).normal(size=(50, 5)), nu=0.5, gamma=5.0))[1]
    entry = manifest["models"][device]
    store.write(entry["file"], data)
    entry["sha256"] = sha256(data)
    entry.pop("pack")
    store.write(layout.manifest_file(manifest["version"]), json.dumps(manifest, indent=1, sort_keys=True).encode())
    return entry["sha256"]


@pytest.mark.parametrize("signing", ["on", "off"])
def test_a_model_replaced_with_its_digest(tmp_path, fleet, scored_hour, fault_table, monkeypatch, signing):
    if signing == "on":
        monkeypatch.setenv(setting("models.signing-key-env"), SIGNING_KEY)
    store = fleet(Store(tmp_path))
    forged = forge(store, "dev-00002")
    if signing == "on":
        with pytest.raises(SignatureError, match="signature does not verify"):
            score(store, scored_hour)
        assert predictions.committed(store, scored_hour) is None
        assert store.list(layout.table_partition("predictions", scored_hour)) == []  # refused before any batch ran
        fault_table.append(("forged model", "model and its digest replaced in the manifest, signing on",
                            "run refused before any model was read; nothing written", "-", "-"))
        return
    summary = score(store, scored_hour)
    got = predictions.read_predictions(store, scored_hour)
    assert (got.loc[got["device"] == "dev-00002", "model_sha256"] == forged).all()  # what signing off means
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0) and summary["model_version"] == models.live_version(store)
    fault_table.append(("forged model", "model and its digest replaced in the manifest, signing off",
                        "forged model scored, as documented: only signing makes models authentic", lost, dupes))


class CreatesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_in_the_pack_is_refused_and_never_executed(tmp_path, fleet, scored_hour, fault_table):
    store = fleet(Store(tmp_path / "store"))
    proof = tmp_path / "executed"
    manifest = models.read_manifest(store)
    put_in_pack(store, manifest, "dev-00002", "joblib", pickle.dumps(CreatesAFile(proof)))
    store.write(layout.manifest_file(manifest["version"]), json.dumps(manifest).encode())
    summary = score(store, scored_hour)
    errors = predictions.read_errors(store, scored_hour)
    assert errors["device"].tolist() == ["dev-00002"] and "allow-pickle is false" in errors["reason"].iloc[0]
    assert not proof.exists() and summary["devices_scored"] == DEVICES - 1
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0)
    fault_table.append(("pickle in a pack", "joblib pickle whose __reduce__ creates a file, allow-pickle false",
                        "that device failed: refused, file not created; others scored", lost, dupes))


def test_a_version_switched_while_a_run_scores_is_not_seen_by_it(tmp_path, fleet, scored_hour, train_hours,
                                                                 fault_table, monkeypatch):
    store = fleet(Store(tmp_path / "store"))
    first = models.read_manifest(store)
    version = models.new_version()
    shards = [train_batch(store, train_hours, rules.grid(train_hours), device_ids(DEVICES), 0, "device",
                          setting("scoring.nu"), 0.5, version)]
    second = models.write_manifest(store, version, "device", layout.span(train_hours), shards[0].entries,
                                   shards[0].packs)
    monkeypatch.setenv("FLEETSCORE_SWITCH_STORE", store.url)
    monkeypatch.setenv("FLEETSCORE_SWITCH_VERSION", version)
    monkeypatch.setenv("FLEETSCORE_FAULT_MARKER", str(tmp_path / "switched"))
    with dask.config.set({"distributed.worker.preload": [PRELOAD]}):
        summary = score(store, scored_hour)
    assert (tmp_path / "switched").exists() and models.live_version(store) == version, "the switch did not happen"
    got = predictions.read_predictions(store, scored_hour)
    first_models = {e["sha256"] for e in first["models"].values()}
    assert set(got["model_sha256"]) <= first_models and not set(got["model_sha256"]) & {
        e["sha256"] for e in second["models"].values()}
    assert summary["model_version"] == first["version"] == predictions.committed(store, scored_hour)["model_version"]
    lost, dupes = accounting(store, scored_hour, set(device_ids(DEVICES)))
    assert (lost, dupes) == (0, 0)
    fault_table.append(("version switched", "live pointer moved to a new version as the first batch started",
                        "every batch scored with the run's version, recorded in summary and commit", lost, dupes))
