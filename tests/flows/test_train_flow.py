"""train-fleet publishes a new version only when it may: lost shards and unfitted devices refuse, --allow-partial keeps."""

import io

import pyarrow.parquet as pq
import pytest

from flows import cli
from flows.train import TrainingRefused, train_fleet
from scoring import layout, models, predictions, telemetry
from scoring.store import Store

pytestmark = pytest.mark.usefixtures("prefect_backend")
DEVICES = 6


def train(store: Store, train_hours, **options) -> dict:
    return train_fleet(start=layout.hour_label(train_hours[0]), end=layout.hour_label(train_hours[-1]),
                       store=store.url, devices_per_pack=3, **options)


def starve(store: Store, train_hours, devices: list[str]) -> None:
    """Leave ``devices`` one reading per tag in each training hour: too little to fit a model on."""
    for hour in train_hours:
        rows = telemetry.read_hour(store, hour)
        starved = rows["device"].isin(devices)
        kept = rows[~starved | ~rows.duplicated(["device", "tag"])]
        store.remove(store.list(layout.telemetry_dir(hour)))
        telemetry.write_hour(store, hour, kept.drop(columns=[c for c in kept.columns if c not in
                                                             telemetry.LONG_COLUMNS]))


@pytest.fixture
def trained(tmp_path, write_fleet, train_hours):
    store = Store(tmp_path)
    write_fleet(store, devices=DEVICES, anomaly_rate=0)
    return store, train(store, train_hours)


def test_a_run_that_could_not_fit_enough_devices_publishes_nothing(trained, train_hours):
    store, first = trained
    assert first["models"] == DEVICES and models.live_version(store) == first["version"]
    starve(store, train_hours, ["dev-00001", "dev-00004"])
    with pytest.raises(TrainingRefused, match="2 of 6 devices could not be fitted.*--allow-partial"):
        train(store, train_hours)
    assert models.versions(store) == [first["version"]] and models.live_version(store) == first["version"]


def test_allow_partial_keeps_the_previous_models_of_what_it_could_not_fit(trained, train_hours):
    store, first = trained
    starve(store, train_hours, ["dev-00001", "dev-00004"])
    second = train(store, train_hours, allow_partial=True)
    assert second["kept_previous"] == ["dev-00001", "dev-00004"] and second["models"] == DEVICES
    manifest = models.read_manifest(store)
    assert manifest["version"] == second["version"] != first["version"]
    previous = models.read_manifest(store, first["version"])
    kept = manifest["models"]["dev-00004"]
    assert kept["carried_from"] == first["version"] and kept["sha256"] == previous["models"]["dev-00004"]["sha256"]
    assert manifest["models"]["dev-00000"].get("carried_from") is None


def test_score_can_pin_an_older_version(trained, train_hours, scored_hour, write_fleet, capsys):
    store, first = trained
    second = train(store, train_hours, gamma=0.5)
    assert models.live_version(store) == second["version"]
    hour = layout.hour_label(scored_hour)
    assert cli.main(["score", "--store", store.url, "--hour", hour, "--model-version", first["version"]]) == 0
    assert predictions.committed(store, scored_hour)["model_version"] == first["version"]
    assert set(predictions.read_predictions(store, scored_hour)["model_sha256"]) == {
        e["sha256"] for e in models.read_manifest(store, first["version"])["models"].values()}


def damage_values(store: Store, rel: str) -> None:
    """Overwrite the ``value`` column's pages of a Parquet file, its footer and device column intact.

    The hour's scan (footer and device column) still reads it; a batch reading the rows fails,
    every retry alike: a shard lost the way a file corrupted in the middle loses it.
    """
    data = bytearray(store.read(rel))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    for group in range(meta.num_row_groups):
        chunk = meta.row_group(group).column(meta.schema.names.index("value"))
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    store.write(rel, bytes(data))


def test_lost_shards_refuse_and_the_command_exits_non_zero(trained, train_hours, capsys):
    store, first = trained
    hour = train_hours[0]
    damage_values(store, f"{layout.telemetry_dir(hour)}/part-00000.parquet")  # the shard fails reading it
    code = cli.main(["train", "--store", store.url, "--end", layout.hour_label(train_hours[-1]), "--hours", "2"])
    assert code == 1
    assert "published nothing, the live models stay: 1 of 1 training shards were lost" in capsys.readouterr().err
    assert models.live_version(store) == first["version"] and models.versions(store) == [first["version"]]
