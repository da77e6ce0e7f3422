"""Model files, model packs and the manifest (``models/``).

joblib files are pickles: loading one runs whatever code it holds. So every
model's sha256 is checked against the manifest before it is unpickled, and the
manifest is written last, after every file it names.

Models are published twice: one file per model, for single-device updates and
tools, and packs of many models in one zip, so a scoring batch reads all its
models in one request (thousands of small blob reads are the slow part of a run).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import joblib
import sklearn
from sklearn.base import BaseEstimator

from scoring import layout
from scoring.records import Failure, ModelKey, key_name
from scoring.store import Store, sha256

Manifest = dict[str, Any]


def dump_model(model: BaseEstimator) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def _pack(blobs: Mapping[str, bytes]) -> bytes:
    """A zip of models, stored uncompressed with fixed timestamps so equal input gives equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in blobs.items():
            archive.writestr(zipfile.ZipInfo(f"{name}.joblib", date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def publish_pack(
    store: Store,
    shard: int,
    models: Mapping[ModelKey, BaseEstimator],
    features: Mapping[ModelKey, list[str]],
    window: tuple[datetime, datetime],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Write one shard's model files and pack; return its manifest entries and pack entry.

    Shards are written by parallel tasks; :func:`write_manifest` then makes them live.
    """
    blobs = {key_name(k): dump_model(m) for k, m in models.items()}
    span = {"start": window[0].isoformat(), "end": window[1].isoformat()}
    pack_path = layout.pack_file(shard)
    entries = {
        key_name(k): {
            "device": k[0],
            "tag": k[1],
            "file": layout.model_file(*k),
            "sha256": sha256(blobs[key_name(k)]),
            "features": list(features[k]),
            "sklearn_version": sklearn.__version__,
            "window": span,
            "pack": pack_path,
        }
        for k in models
    }
    store.write_many({e["file"]: blobs[n] for n, e in entries.items()})
    data = _pack(dict(sorted(blobs.items())))
    store.write(pack_path, data)
    return entries, {pack_path: {"sha256": sha256(data), "models": sorted(blobs)}}


def write_manifest(
    store: Store,
    granularity: str,
    window: tuple[datetime, datetime],
    entries: Mapping[str, dict[str, Any]],
    packs: Mapping[str, dict[str, Any]],
) -> Manifest:
    """Publish the manifest, last, after every file it names."""
    manifest = {
        "format": 1,
        "granularity": granularity,
        "sklearn_version": sklearn.__version__,
        "window": {"start": window[0].isoformat(), "end": window[1].isoformat()},
        "packs": dict(packs),
        "models": dict(entries),
    }
    store.write(layout.MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def manifest_slice(manifest: Manifest, names: Iterable[str]) -> Manifest:
    """The part of the manifest one batch needs, so tasks stay small when pickled."""
    models = {n: manifest["models"][n] for n in names}
    packs = {p: manifest["packs"][p] for p in {e.get("pack") for e in models.values()} if p}
    return {**manifest, "models": models, "packs": packs}


def read_manifest(store: Store) -> Manifest:
    """The published manifest, or ``FileNotFoundError`` telling how to make one."""
    try:
        return json.loads(store.read(layout.MANIFEST))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no model manifest at {store.url_of(layout.MANIFEST)}: run `fleetscore train --store {store.url}` first"
        ) from None


def _from_packs(store: Store, manifest: Manifest, names: Iterable[str]) -> dict[str, bytes]:
    """Model bytes from the packs that hold ``names``; a pack that fails its checksum is ignored."""
    wanted = set(names)
    packs = sorted({manifest["models"][n]["pack"] for n in wanted if "pack" in manifest["models"][n]})
    found: dict[str, bytes] = {}
    for path, data in store.read_many(packs).items():
        if sha256(data) != manifest["packs"][path]["sha256"]:
            continue  # each model then falls back to its own file and its own check
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in wanted.intersection(manifest["packs"][path]["models"]):
                found[name] = archive.read(f"{name}.joblib")
    return found


def load_models(
    store: Store, manifest: Manifest, names: Iterable[str]
) -> tuple[dict[str, BaseEstimator], list[Failure]]:
    """Load models by manifest name, checking each sha256 before unpickling it.

    A model that is missing, altered or unreadable becomes a :class:`Failure`
    naming its file; the others load.
    """
    names = list(names)
    blobs = _from_packs(store, manifest, names)
    loose = {manifest["models"][n]["file"]: n for n in names if n not in blobs}
    blobs |= {loose[f]: data for f, data in store.read_many(list(loose)).items()}
    models: dict[str, BaseEstimator] = {}
    failures: list[Failure] = []
    for name in names:
        entry = manifest["models"][name]
        try:
            models[name] = _unpickle(blobs.get(name), entry["sha256"])
        except ValueError as exc:
            failures.append(Failure(entry["device"], str(exc), entry["file"], entry["tag"]))
    return models, failures


def _unpickle(data: bytes | None, expected_sha256: str) -> BaseEstimator:
    """Unpickle one model's bytes once they match the manifest, else raise ``ValueError``."""
    if data is None:
        raise ValueError("model file is missing")
    if sha256(data) != expected_sha256:
        raise ValueError("model sha256 differs from the manifest; refusing to unpickle it")
    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:  # a corrupt pickle can raise anything
        raise ValueError(f"model cannot be loaded: {type(exc).__name__}: {exc}") from None
