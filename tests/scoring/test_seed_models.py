"""The original sample's scikit-learn 0.19.2 pickles, read as data: same decisions, nothing executed."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import IsolationForest

from scoring import models
from scoring.fastpath import to_pipeline
from scoring.predict import fit_model, predict
from scoring.seed_models import import_models, name_pattern, read_legacy_model
from scoring.signing import SigningKey
from scoring.store import Store, sha256

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed"
pytestmark = pytest.mark.skipif(not (SEED / "models").is_dir(), reason=f"the original sample's files are not at {SEED}")


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return pd.read_csv(SEED / "sensor_data.csv")


@pytest.mark.parametrize("name", sorted(p.name for p in (SEED / "models").glob("model_*")))
def test_each_legacy_model_decides_as_current_scikit_learn_with_its_parameters(name, sample):
    model, version = read_legacy_model((SEED / "models" / name).read_bytes())
    assert version == "0.19.2" and model.gamma == 0.01 and model.n_features_in_ == 1
    _, device, tag = name.split("_")
    X = sample.query(f"Device == {device} and Tag == {tag}")["Value"].to_numpy()[:, None]
    reference = to_pipeline(model)  # a current OneClassSVM holding the fitted parameters
    score, anomaly = predict(model, X)
    np.testing.assert_allclose(score, reference.decision_function(X), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(anomaly, np.where(reference.predict(X) == 1, 0, 1))  # the sample's own rule


def test_a_current_pickle_of_the_standard_pipeline_reads_too():
    fitted = fit_model(np.random.default_rng(0).normal(size=(60, 3)), nu=0.05, gamma=0.3)
    model, _ = read_legacy_model(pickle.dumps(fitted))
    X = np.random.default_rng(1).normal(size=(20, 3))
    np.testing.assert_allclose(model.decision_function(X), fitted.decision_function(X), rtol=0, atol=1e-12)


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appearing would prove code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("hostile", ["reduce", "object-array", "other-estimator"])
def test_anything_else_is_refused_by_name_and_nothing_runs(tmp_path, hostile):
    proof = tmp_path / "executed"
    data = {
        "reduce": lambda: pickle.dumps(CreatesAFile(proof)),
        "object-array": lambda: pickle.dumps(np.array([1, "x"], dtype=object)),
        "other-estimator": lambda: pickle.dumps(IsolationForest(n_estimators=2).fit(np.zeros((4, 1)))),
    }[hostile]()
    expected = {"reduce": "io.open", "object-array": "dtype 'O8' are refused", "other-estimator": "IsolationForest"}[hostile]
    with pytest.raises(ValueError, match=expected):
        read_legacy_model(data)
    assert not proof.exists()


def test_the_pattern_names_device_and_tag():
    assert name_pattern("model_{device}_{tag}").fullmatch("model_dev_1_4").groupdict() == {"device": "dev", "tag": "1_4"}
    with pytest.raises(ValueError, match="must hold"):
        name_pattern("model_{device}")


def test_import_publishes_a_signed_per_sensor_version(any_store):
    key = SigningKey(b"s" * 32, "test key")
    manifest, ignored = import_models(Store(SEED / "models"), "model_{device}_{tag}", any_store, key)
    assert ignored == []
    assert manifest["granularity"] == "sensor" and len(manifest["models"]) == 15
    entry = manifest["models"]["2/3"]
    assert entry["format"] == "ocsvm-arrays" and entry["features"] == ["value"] and entry["sklearn_version"] == "0.19.2"
    assert entry["imported_from"]["sha256"] == sha256((SEED / "models" / "model_2_3").read_bytes())
    models.activate(any_store, manifest["version"])
    assert models.read_manifest(any_store, key=key, require_signature=True) == manifest
    loaded, failures = models.load_models(any_store, manifest, manifest["models"])
    assert failures == [] and len(loaded) == 15


def test_files_named_otherwise_are_listed_not_imported(tmp_path):
    source = tmp_path / "legacy"
    shutil.copytree(SEED / "models", source)
    (source / "notes.txt").write_text("not a model")
    manifest, ignored = import_models(Store(source), "model_{device}_{tag}", Store(tmp_path / "store"))
    assert ignored == ["notes.txt"] and len(manifest["models"]) == 15


def test_one_bad_file_refuses_the_whole_import(tmp_path):
    source = tmp_path / "legacy"
    shutil.copytree(SEED / "models", source)
    (source / "model_9_9").write_bytes(pickle.dumps(CreatesAFile(tmp_path / "executed")))
    target = Store(tmp_path / "store")
    with pytest.raises(ValueError, match="imported nothing: .*model_9_9 cannot be read .* io.open"):
        import_models(Store(source), "model_{device}_{tag}", target)
    assert models.versions(target) == [] and not (tmp_path / "executed").exists()
