"""What travels to Dask workers: it must pickle, and it must not carry or print a secret."""

import pickle

import cloudpickle
import pytest

from scoring import batch, layout, training
from scoring.store import Store


def test_store_urls_never_carry_credentials():
    for url in ["az://c/p?sv=2024&sig=abc", "abfs://c/p;AccountKey=abc"]:
        with pytest.raises(ValueError, match="must not carry credentials"):
            Store(url)


def test_local_paths_and_file_urls_are_the_same_store(tmp_path):
    Store(tmp_path).write("x/y.bin", b"1")
    assert Store(f"file://{tmp_path}").read("x/y.bin") == b"1"
    assert Store(f"file://{tmp_path}").list("x") == ["x/y.bin"]


def test_an_azure_store_pickles_without_its_credentials(az_store, azurite):
    az_store.write("probe.txt", b"ok")
    payload = pickle.dumps(az_store)
    assert azurite.connection_string.encode() not in payload and b"AccountKey" not in payload
    assert azurite.connection_string not in repr(az_store)
    assert pickle.loads(payload).read("probe.txt") == b"ok"  # reopened from this process's environment


def test_the_adlfs_filesystem_itself_pickles(az_store):
    az_store.write("probe.txt", b"ok")
    fs = pickle.loads(pickle.dumps(az_store.fs))
    assert fs.cat_file(az_store.path("probe.txt")) == b"ok"


@pytest.mark.parametrize("func", [batch.score_batch, training.train_batch])
def test_every_callable_sent_to_workers_round_trips(func, az_store, azurite):
    hour = layout.parse_hour("2026-11-27T10")
    sent = cloudpickle.dumps((func, az_store, hour, {"models": {}, "packs": {}}))
    assert b"AccountKey" not in sent
    again, store, when, manifest = cloudpickle.loads(sent)
    assert again is func and store == az_store and when == hour
    assert cloudpickle.loads(cloudpickle.dumps(batch.BatchResult(["d"], failures=[]))).names == ["d"]
