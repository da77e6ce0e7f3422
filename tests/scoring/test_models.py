import json

import numpy as np
import pytest

from scoring import layout, models
from scoring.predict import fit_model
from scoring.store import Store

WINDOW = (layout.parse_hour("2026-11-27T08"), layout.parse_hour("2026-11-27T10"))


@pytest.fixture
def published(any_store):
    store = any_store
    rng = np.random.default_rng(1)
    fitted = {(f"d{i}", None): fit_model(rng.normal(size=(50, 2)), nu=0.1, gamma=0.5) for i in range(3)}
    entries, packs = models.publish_pack(store, 0, fitted, {k: ["a", "b"] for k in fitted}, WINDOW)
    manifest = models.write_manifest(store, "device", WINDOW, entries, packs)
    return store, manifest, fitted


def test_manifest_records_file_sha_features_version_and_window(published):
    store, manifest, _ = published
    on_disk = json.loads(store.read(layout.MANIFEST))
    assert on_disk == manifest
    entry = manifest["models"]["d1"]
    assert entry["file"] == "models/d1.joblib" and store.exists(entry["file"])
    assert entry["features"] == ["a", "b"] and entry["window"]["start"].startswith("2026-11-27T08")
    assert len(entry["sha256"]) == 64 and entry["sklearn_version"]
    assert manifest["packs"][entry["pack"]]["models"] == ["d0", "d1", "d2"]


def test_load_models_returns_the_published_models(published):
    store, manifest, fitted = published
    loaded, failures = models.load_models(store, manifest, ["d0", "d2"])
    assert failures == []
    X = np.random.default_rng(2).normal(size=(5, 2))
    np.testing.assert_array_equal(loaded["d2"].decision_function(X), fitted[("d2", None)].decision_function(X))


def test_an_altered_model_is_refused_before_unpickling_and_others_load(published):
    store, manifest, _ = published
    store.remove([entry["pack"] for entry in manifest["models"].values()][:1])  # force per-file reads
    store.write("models/d1.joblib", b"cos\nsystem\n(S'echo owned'\ntR.")
    loaded, failures = models.load_models(store, manifest, ["d0", "d1", "d2"])
    assert sorted(loaded) == ["d0", "d2"]
    assert [(f.device, f.file) for f in failures] == [("d1", "models/d1.joblib")]
    assert "sha256 differs" in failures[0].reason


def test_a_corrupt_pack_falls_back_to_the_model_files(published):
    store, manifest, _ = published
    store.write(manifest["models"]["d0"]["pack"], b"not a zip")
    loaded, failures = models.load_models(store, manifest, ["d0", "d1"])
    assert sorted(loaded) == ["d0", "d1"] and failures == []


def test_missing_models_and_manifest_are_named(published, tmp_path):
    store, manifest, _ = published
    store.remove([manifest["models"]["d2"]["pack"], "models/d2.joblib"])
    _, failures = models.load_models(store, manifest, ["d2"])
    assert failures[0].reason == "model file is missing"
    with pytest.raises(FileNotFoundError, match="run `fleetscore train"):
        models.read_manifest(Store(tmp_path / "empty"))
