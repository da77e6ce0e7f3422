"""The whole path on one machine: generate, train-fleet and score-fleet on real LocalClusters."""

import gc
import threading
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest

import flows.score
from cluster.clusters import open_cluster
from flows import rules
from flows.score import score_fleet
from flows.train import train_fleet
from scoring import layout, models, predictions, tables, telemetry
from scoring.features import to_features
from scoring.records import parse_key
from scoring.store import Store

pytestmark = pytest.mark.usefixtures("prefect_backend")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, write_fleet, train_hours, scored_hour):
    store = Store(tmp_path_factory.mktemp("store"))
    anomalies = write_fleet(store, devices=40)
    trained = train_fleet(start=layout.hour_label(train_hours[0]), end=layout.hour_label(train_hours[-1]),
                          store=store.url, devices_per_pack=15)
    summary = score_fleet(store=store.url, hour=layout.hour_label(scored_hour))
    return store, anomalies, trained, summary


def test_train_publishes_one_model_per_device_in_packs(scored):
    store, _, trained, _ = scored
    manifest = models.read_manifest(store)
    assert trained["models"] == len(manifest["models"]) == 40
    assert trained["packs"] == len(manifest["packs"]) == 3


def test_predictions_equal_scikit_learn_on_the_same_rows(scored, scored_hour):
    store, _, _, summary = scored
    assert summary["devices_scored"] == 40 and summary["devices_failed"] == 0
    got = predictions.read_predictions(store, scored_hour)
    assert len(got) == 40 * 720 == summary["rows"]
    manifest = models.read_manifest(store)
    loaded, _ = models.load_models(store, manifest, manifest["models"])
    specs = {parse_key(n): e["features"] for n, e in manifest["models"].items()}
    features, _, _ = to_features(telemetry.read_hour(store, scored_hour), specs, rules.grid([scored_hour]))
    for f in features:
        rows = got[got["device"] == f.key[0]]
        model = loaded[f.key[0]].reference  # scikit-learn's own model with the published parameters
        np.testing.assert_allclose(rows["score"].to_numpy(), model.decision_function(f.X), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(rows["anomaly"].to_numpy(), (model.predict(f.X) == -1).astype(int))
        assert (rows["model_sha256"] == manifest["models"][f.key[0]]["sha256"]).all()


def test_every_injected_anomaly_is_flagged_and_false_alarms_are_rare(scored, scored_hour):
    store, anomalies, _, summary = scored
    assert len(anomalies) >= 5
    got = predictions.read_predictions(store, scored_hour)
    injected = np.zeros(len(got), dtype=bool)
    for a in anomalies.itertuples():
        injected |= (got["device"] == a.device).to_numpy() & got["ts"].between(a.start, a.end).to_numpy()
    assert injected.sum() >= 3 * len(anomalies)
    assert got.loc[injected, "anomaly"].all()
    assert got.loc[~injected, "anomaly"].mean() < 0.02
    assert summary["anomalous_rows"] == int(got["anomaly"].sum())


def test_the_devices_in_alert_are_exactly_those_with_an_injected_anomaly(scored, scored_hour):
    store, anomalies, _, summary = scored
    hours = predictions.read_device_hours(store, scored_hour)
    assert len(hours) == 40 and (hours["status"] == "scored").all() and (hours["coverage"] == 1.0).all()
    alerting = sorted(hours.loc[hours["alert"], "device"])
    assert alerting == sorted(set(anomalies["device"]))
    assert summary["devices_in_alert"] == len(alerting) and summary["devices_silent"] == 0
    assert summary["alerts"].split(", ")[0] in alerting
    got = predictions.read_predictions(store, scored_hour)
    per_device = got.groupby("device")["anomaly"].sum()
    assert hours.set_index("device")["anomalies"].to_dict() == per_device.to_dict()


def test_rerunning_an_hour_gives_the_same_files(scored, scored_hour):
    store, *_ = scored
    before = {f: store.read(f) for f in tables.hour_files(store, scored_hour)}
    score_fleet(store=store.url, hour=layout.hour_label(scored_hour))
    assert {f: store.read(f) for f in tables.hour_files(store, scored_hour)} == before
    assert [h["claim"] for h in tables.history(store, scored_hour)] == [2, 1]  # a new version, the same files
    assert gc.get_freeze_count() == 0  # the run's manifest was kept from the cycle collector only while it ran


def test_what_is_read_is_spared_from_the_collector_only_inside_the_block():
    """Read with the collector paused, so that nothing between the read and the freeze walks what was read."""
    frozen, paused = gc.get_freeze_count(), []

    def read() -> list[dict]:
        paused.append(not gc.isenabled())
        return [{} for _ in range(1000)]

    with flows.score.spared_from_collector(read) as value:
        assert gc.get_freeze_count() >= frozen + 1000 and gc.isenabled()
    assert paused == [True] and len(value) == 1000 and gc.get_freeze_count() == 0


def test_a_failed_read_leaves_the_collector_on_and_nothing_frozen():
    def read() -> None:
        raise OSError("storage unreachable")

    with pytest.raises(OSError, match="unreachable"), flows.score.spared_from_collector(read):
        pass
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_device_without_a_model_fails_alone(tmp_path, write_fleet, train_hours, scored_hour):
    store = Store(tmp_path)
    write_fleet(store, devices=6, anomaly_rate=0)
    train_fleet(start=layout.hour_label(train_hours[0]), end=layout.hour_label(train_hours[-1]), store=store.url)
    extra = telemetry.read_hour(store, scored_hour).query("device == 'dev-00000'").assign(device="newcomer")
    telemetry.write_hour(store, scored_hour, extra, name="part-00001")
    summary = score_fleet(store=store.url, hour=layout.hour_label(scored_hour))
    assert summary["devices_scored"] == 6 and summary["devices_failed"] == 1
    errors = predictions.read_errors(store, scored_hour)
    assert errors[["device", "file", "reason"]].values.tolist() == [
        ["newcomer", layout.manifest_file(models.live_version(store)), "no model in the manifest"]]
    assert set(predictions.read_predictions(store, scored_hour)["device"]) == {f"dev-{i:05d}" for i in range(6)}


def test_the_cluster_closes_while_the_hour_is_committed_and_a_failed_teardown_fails_the_run(scored, scored_hour,
                                                                                             monkeypatch):
    store, *_ = scored
    before = predictions.committed(store, scored_hour)["claim"]
    closed_by = []

    @contextmanager
    def refused_teardown(*args, **kwargs):
        with open_cluster(*args, **kwargs) as client:
            yield client
        closed_by.append(threading.current_thread().name)
        raise OSError("the VM's deletion was refused")  # after the real cluster closed

    monkeypatch.setattr(flows.score, "open_cluster", refused_teardown)
    state = score_fleet(store=store.url, hour=layout.hour_label(scored_hour), return_state=True)
    assert state.is_failed() and "the VM's deletion was refused" in state.message
    assert closed_by[0].startswith("cluster-teardown")  # not the flow's thread: it went on with the commit
    assert predictions.committed(store, scored_hour)["claim"] == before + 1
