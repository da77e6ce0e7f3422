"""Models per second read from Azure Blob (Azurite), with model packs and one blob per model.

    .venv/bin/python benchmarks/blob_models.py --devices 10000

Thousands of small model blobs, not the scoring, limit a run on blob storage.
This publishes ``--devices`` models (copies of a few fitted ones, so it needs
no long training) in packs of ``--per-pack``, then loads all of them as the
scoring batches do: once through the packs, once file by file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Azurite  # noqa: E402  (the test suite's Azurite launcher)

from scoring import layout, models  # noqa: E402
from scoring.predict import fit_model  # noqa: E402
from scoring.store import Store  # noqa: E402


def publish(store: Store, devices: int, per_pack: int) -> models.Manifest:
    rng = np.random.default_rng(0)
    fitted = [fit_model(rng.normal(size=(720, 5)), nu=0.001, gamma=0.02) for _ in range(10)]
    names = [f"dev-{i:05d}" for i in range(devices)]
    window = (layout.parse_hour("2026-11-27T08"), layout.parse_hour("2026-11-27T10"))
    entries, packs, version = {}, {}, models.new_version()
    for shard, start in enumerate(range(0, devices, per_pack)):
        chunk = {(n, None): fitted[i % len(fitted)] for i, n in enumerate(names[start:start + per_pack])}
        e, p = models.publish_pack(store, version, shard, chunk, {k: list("abcde") for k in chunk}, window)
        entries |= e
        packs |= p
    manifest = models.write_manifest(store, version, "device", window, entries, packs)
    models.activate(store, version)
    return manifest


def timed_load(store: Store, manifest: models.Manifest, per_batch: int) -> float:
    names = sorted(manifest["models"])
    started = time.perf_counter()
    for i in range(0, len(names), per_batch):
        batch = names[i:i + per_batch]
        loaded, failures = models.load_models(store, models.manifest_slice(manifest, batch), batch)
        assert not failures and len(loaded) == len(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-pack", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results/blob_models.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        azurite = Azurite(Path(folder))
        azurite.start()
        try:
            os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
            store = Store("az://bench/models")
            store.create()
            manifest = publish(store, args.devices, args.per_pack)
            packed = timed_load(store, manifest, args.per_pack)
            loose = {**manifest, "packs": {},
                     "models": {n: {k: v for k, v in e.items() if k != "pack"} for n, e in manifest["models"].items()}}
            single = timed_load(store, loose, args.per_pack)
        finally:
            azurite.stop()
    rows = pd.DataFrame([
        {"read": f"packs of {args.per_pack}", "seconds": packed, "models_per_s": args.devices / packed},
        {"read": "one blob per model (bulk cat)", "seconds": single, "models_per_s": args.devices / single},
    ])
    print(f"{args.devices:,} models from Azurite\n" + rows.to_string(index=False, float_format="%.2f"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows.to_dict("records"), indent=1))


if __name__ == "__main__":
    main()
