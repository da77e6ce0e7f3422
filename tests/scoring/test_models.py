"""Model versions: written under their own prefix, made live last, signed, pruned, loaded without code."""

import gc
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import sklearn
from sklearn.ensemble import IsolationForest

from scoring import layout, models
from scoring.model_format import FORMATS, ModelPolicy, encode
from scoring.predict import fit_model
from scoring.signing import SignatureError, SigningKey
from scoring.store import Store, sha256

WINDOW = (layout.parse_hour("2026-11-27T08"), layout.parse_hour("2026-11-27T10"))
KEY = SigningKey(b"k" * 32, "test key")


def publish(store: Store, seed: int = 1, key: SigningKey | None = None, extra: dict | None = None) -> tuple:
    """Fit three standard models (plus ``extra``), write them as a new version and make it live."""
    rng = np.random.default_rng(seed)
    fitted = {(f"d{i}", None): fit_model(rng.normal(size=(50, 2)), nu=0.1, gamma=0.5) for i in range(3)}
    fitted |= extra or {}
    version = models.new_version()
    entries, packs = models.publish_pack(store, version, 0, fitted, {k: ["a", "b"] for k in fitted}, WINDOW)
    manifest = models.write_manifest(store, version, "device", WINDOW, entries, packs, key)
    models.activate(store, version)
    return manifest, fitted


@pytest.fixture
def published(any_store):
    manifest, fitted = publish(any_store)
    return any_store, manifest, fitted


def test_a_version_lives_under_its_own_prefix_and_the_pointer_names_it(published):
    store, manifest, _ = published
    version = manifest["version"]
    assert models.live_version(store) == version
    assert models.read_manifest(store) == manifest == json.loads(store.read(layout.manifest_file(version)))
    entry = manifest["models"]["d1"]
    assert entry["file"] == f"models/v={version}/d1.f64" and store.exists(entry["file"])
    assert entry["format"] == "ocsvm-arrays" and entry["features"] == ["a", "b"]
    assert entry["window"]["start"].startswith("2026-11-27T08") and len(entry["sha256"]) == 64
    assert manifest["packs"][entry["pack"]]["models"] == ["d0", "d1", "d2"]


@pytest.mark.parametrize("collecting", [True, False])
def test_reading_a_manifest_leaves_the_cycle_collector_as_it_found_it(tmp_path, collecting):
    """The collector is paused while a manifest is parsed, even one that is not JSON."""
    store = Store(tmp_path / "s")
    publish(store)
    broken = Store(tmp_path / "broken")
    broken.write(layout.MODELS_LIVE, json.dumps({"version": "20000101T000000Z-000000"}).encode())
    broken.write(layout.manifest_file("20000101T000000Z-000000"), b"{not json")
    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        assert models.read_manifest(store)["models"]
        assert gc.isenabled() is collecting
        with pytest.raises(json.JSONDecodeError):
            models.read_manifest(broken)
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()


def test_the_manifest_records_the_installed_scikit_learn_version(published):
    _, manifest, _ = published
    assert manifest["sklearn_version"] == manifest["models"]["d0"]["sklearn_version"] == sklearn.__version__


def test_publishing_a_new_version_leaves_the_old_one_untouched(published):
    store, first, _ = published
    before = {f: store.read(f) for f in [first["models"]["d0"]["file"], layout.manifest_file(first["version"])]}
    second, _ = publish(store, seed=2)
    assert models.live_version(store) == second["version"] != first["version"]
    assert {f: store.read(f) for f in before} == before
    assert models.read_manifest(store, first["version"]) == first  # pinned
    assert models.versions(store) == sorted([first["version"], second["version"]])


def test_load_models_scores_like_the_fitted_pipelines(published):
    store, manifest, fitted = published
    loaded, failures = models.load_models(store, manifest, ["d0", "d2"])
    assert failures == []
    X = np.random.default_rng(2).normal(size=(5, 2))
    np.testing.assert_allclose(loaded["d2"].decision_function(X), fitted[("d2", None)].decision_function(X),
                               rtol=0, atol=1e-12)


def test_an_altered_model_is_refused_before_decoding_and_others_load(published):
    store, manifest, _ = published
    store.remove(sorted(manifest["packs"]))  # force per-file reads
    store.write(manifest["models"]["d1"]["file"], b"cos\nsystem\n(S'echo owned'\ntR.")
    loaded, failures = models.load_models(store, manifest, ["d0", "d1", "d2"])
    assert sorted(loaded) == ["d0", "d2"]
    assert [(f.device, f.file) for f in failures] == [("d1", manifest["models"]["d1"]["file"])]
    assert "sha256 differs" in failures[0].reason


def test_a_corrupt_pack_falls_back_to_the_model_files(published):
    store, manifest, _ = published
    store.write(manifest["models"]["d0"]["pack"], b"not a zip")
    loaded, failures = models.load_models(store, manifest, ["d0", "d1"])
    assert sorted(loaded) == ["d0", "d1"] and failures == []


def test_missing_models_versions_and_pointer_are_named(published, tmp_path):
    store, manifest, _ = published
    store.remove([manifest["models"]["d2"]["pack"], manifest["models"]["d2"]["file"]])
    _, failures = models.load_models(store, manifest, ["d2"])
    assert failures[0].reason == "model file is missing"
    with pytest.raises(FileNotFoundError, match="run `fleetscore train"):
        models.read_manifest(Store(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=f"versions: {manifest['version']}"):
        models.read_manifest(store, "20000101T000000Z-000000")
    with pytest.raises(ValueError, match="invalid model version"):
        models.read_manifest(store, "../x")


def pickle_that_creates(path) -> bytes:
    """A pickle whose loading would create ``path``: proof of execution if the file appears."""
    class Payload:
        def __reduce__(self):
            return (open, (str(path), "w"))
    return pickle.dumps(Payload())


def put_in_pack(store: Store, manifest: dict, name: str, fmt: str, data: bytes) -> None:
    """Replace one model inside its pack, digests of model and pack updated, as a writer of the store could."""
    entry = manifest["models"][name]
    with zipfile.ZipFile(io.BytesIO(store.read(entry["pack"]))) as old:
        members = {m: old.read(m) for m in old.namelist() if not m.startswith(f"{name}.")}
    members[f"{name}{FORMATS[fmt].suffix}"] = data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as new:
        for member, content in members.items():
            new.writestr(member, content)
    store.write(entry["pack"], buffer.getvalue())
    entry.update(format=fmt, sha256=sha256(data))
    manifest["packs"][entry["pack"]]["sha256"] = sha256(buffer.getvalue())


@pytest.mark.parametrize("declared", ["joblib", "ocsvm-arrays", "skops"])
def test_a_pickle_in_the_pack_is_refused_and_never_executed(published, tmp_path, declared):
    store, manifest, _ = published
    proof = tmp_path / f"executed-{declared}"
    put_in_pack(store, manifest, "d1", declared, pickle_that_creates(proof))
    loaded, failures = models.load_models(store, manifest, ["d0", "d1"])
    assert sorted(loaded) == ["d0"] and [f.device for f in failures] == ["d1"]
    assert not proof.exists()
    if declared == "joblib":
        assert "allow-pickle is false" in failures[0].reason
        models.load_models(store, manifest, ["d1"], ModelPolicy(allow_pickle=True))
        assert proof.exists()  # what allow-pickle means: the pickle's code runs


def test_other_estimators_go_through_skops_with_a_trusted_list(any_store):
    rng = np.random.default_rng(4)
    forest = IsolationForest(n_estimators=5, random_state=0).fit(rng.normal(size=(100, 2)))
    manifest, _ = publish(any_store, extra={("forest", None): forest})
    assert manifest["models"]["forest"]["format"] == "skops"
    assert manifest["models"]["forest"]["file"].endswith("/forest.skops")
    _, failures = models.load_models(any_store, manifest, ["forest"])
    assert "sklearn.tree._tree.Tree" in failures[0].reason  # not trusted by default
    loaded, failures = models.load_models(any_store, manifest, ["forest"], ModelPolicy(trusted=("sklearn.tree._tree.Tree",)))
    X = rng.normal(size=(10, 2))
    assert failures == [] and (loaded["forest"].decision_function(X) == forest.decision_function(X)).all()


def test_a_signed_manifest_verifies_and_an_altered_one_is_refused(tmp_path):
    store = Store(tmp_path)
    manifest, _ = publish(store, key=KEY)
    assert models.read_manifest(store, key=KEY, require_signature=True) == manifest
    with pytest.raises(SignatureError, match="does not verify"):
        models.read_manifest(store, key=SigningKey(b"x" * 32, "another key"))
    entry = manifest["models"]["d1"]
    forged = fit_model(np.random.default_rng(9).normal(size=(50, 2)), nu=0.1, gamma=0.5)
    data = encode(forged)[1]
    store.write(entry["file"], data)
    entry["sha256"] = sha256(data)  # a model replaced together with its digest
    store.write(layout.manifest_file(manifest["version"]), json.dumps(manifest, indent=1, sort_keys=True).encode())
    with pytest.raises(SignatureError, match="does not verify"):
        models.read_manifest(store, key=KEY)
    assert models.read_manifest(store)["models"]["d1"]["sha256"] == sha256(data)  # without a key: accepted


def test_require_signature_refuses_unsigned_and_unverifiable_versions(tmp_path):
    store = Store(tmp_path)
    publish(store)
    with pytest.raises(SignatureError, match="not signed"):
        models.read_manifest(store, key=KEY, require_signature=True)
    publish(store, key=KEY)
    with pytest.raises(SignatureError, match="no signing key is configured"):
        models.read_manifest(store, require_signature=True)


def test_a_signed_manifest_copied_into_another_version_is_refused(tmp_path):
    store = Store(tmp_path)
    first, _ = publish(store, key=KEY)
    second, _ = publish(store, key=KEY)
    for name in (layout.manifest_file, layout.signature_file):
        store.write(name(second["version"]), store.read(name(first["version"])))
    with pytest.raises(ValueError, match=f"not a format-2 manifest of version {second['version']}"):
        models.read_manifest(store, key=KEY)


def test_prune_keeps_the_newest_versions_and_the_live_one(tmp_path):
    store = Store(tmp_path)
    made = [publish(store, seed=i)[0]["version"] for i in range(4)]
    models.activate(store, made[0])  # an old version made live again (a rollback)
    assert models.prune(store, keep=2) == made[1:2]
    assert models.versions(store) == [made[0], *made[2:]]
    assert not store.list_dirs(layout.version_dir(made[1]))


def test_carry_over_copies_previous_models_into_the_new_version(tmp_path):
    store = Store(tmp_path)
    previous, fitted = publish(store)
    version = models.new_version()
    entries, pack, failures = models.carry_over(store, previous, ["d1", "missing"], version, 7)
    assert failures == [] and list(entries) == ["d1"]
    assert entries["d1"]["carried_from"] == previous["version"] and entries["d1"]["file"].startswith(f"models/v={version}/")
    manifest = models.write_manifest(store, version, "device", WINDOW, entries, pack)
    models.discard(store, previous["version"])  # the new version does not depend on the old one's files
    loaded, failures = models.load_models(store, manifest, ["d1"])
    X = np.random.default_rng(3).normal(size=(4, 2))
    assert failures == []
    np.testing.assert_allclose(loaded["d1"].decision_function(X), fitted[("d1", None)].decision_function(X), atol=1e-12)


def test_a_compressed_pack_is_read_through_zipfile(published):
    store, manifest, fitted = published
    pack = manifest["models"]["d0"]["pack"]
    with zipfile.ZipFile(io.BytesIO(store.read(pack))) as stored:
        members = {m: stored.read(m) for m in stored.namelist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as deflated:
        for member, content in members.items():
            deflated.writestr(member, content)
    store.write(pack, buffer.getvalue())
    manifest["packs"][pack]["sha256"] = sha256(buffer.getvalue())
    store.remove([manifest["models"]["d0"]["file"]])  # so the model can only come from the pack
    loaded, failures = models.load_models(store, manifest, ["d0"])
    assert failures == [] and loaded["d0"].intercept == fitted[("d0", None)].steps[1][1].intercept_[0]
