"""Model versions, model packs and manifests (``models/``).

Each training run writes a new version under its own prefix,
``models/v=<version>/``: model files, packs of many models (a scoring batch
reads its models in one request), then the manifest and its signature. A
version is never rewritten. Only then is the small pointer ``models/live.json``
switched, so a run that is scoring keeps reading the version it started with.

Models are stored without code (:mod:`scoring.model_format`); each model's
sha256 is checked against the manifest before it is decoded, and the manifest
itself is checked against its signature (:mod:`scoring.signing`) before any
model file is read.
"""

from __future__ import annotations

import gc
import io
import json
import secrets
import struct
import zipfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from functools import cache
from importlib.metadata import version as installed_version
from typing import TYPE_CHECKING, Any

from scoring import layout, signing
from scoring.fastpath import CompiledOCSVM
from scoring.model_format import FORMATS, ModelPolicy, decode, encode
from scoring.records import Failure, ModelKey, key_name
from scoring.signing import SigningKey
from scoring.store import Store, sha256

if TYPE_CHECKING:  # scikit-learn is not imported here: a worker scoring stored arrays starts without it
    from sklearn.base import BaseEstimator

Manifest = dict[str, Any]
_LOCAL_HEADER = b"PK\x03\x04"
MANIFEST_FORMAT = 2
"""2: versioned, code-free models; 1 was joblib files at fixed paths."""


@cache
def _sklearn_version() -> str:
    """The installed scikit-learn's version, recorded in manifests, read without importing scikit-learn."""
    return installed_version("scikit-learn")


def new_version(now: datetime | None = None) -> str:
    """A fresh version id, ``20261127T101500.123456Z-3fa9c1``: sorts by creation time, unique without coordination."""
    now = now or datetime.now(timezone.utc)
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(3)}"


def _pack(blobs: Mapping[str, bytes]) -> bytes:
    """A zip of models, stored uncompressed with fixed timestamps so equal input gives equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in blobs.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _span(window: tuple[datetime, datetime] | None) -> dict[str, str] | None:
    """A training window as ISO strings for the manifest; ``None`` when unknown (imported models)."""
    return None if window is None else {"start": window[0].isoformat(), "end": window[1].isoformat()}


def _entry(version: str, key: ModelKey, fmt: str, data: bytes, features: list[str],
           window: dict[str, str] | None, pack: str) -> dict[str, Any]:
    """One model's manifest entry: where it is, how it is stored, its digest and what it was fitted on."""
    return {"device": key[0], "tag": key[1], "format": fmt,
            "file": layout.model_file(version, key[0], key[1], FORMATS[fmt].suffix),
            "sha256": sha256(data), "features": list(features), "sklearn_version": _sklearn_version(),
            "window": window, "pack": pack}


def publish_pack(
    store: Store,
    version: str,
    shard: int,
    models: Mapping[ModelKey, BaseEstimator | CompiledOCSVM],
    features: Mapping[ModelKey, list[str]],
    window: tuple[datetime, datetime] | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Write one shard's model files and pack into ``version``; return its manifest entries and pack entry.

    Shards are written by parallel tasks; :func:`write_manifest` then lists them.
    ``window`` is the training window, ``None`` when unknown (imported models).
    """
    span = _span(window)
    encoded = {k: encode(m) for k, m in models.items()}
    pack_path = layout.pack_file(version, shard)
    entries = {key_name(k): _entry(version, k, fmt, data, features[k], span, pack_path)
               for k, (fmt, data) in encoded.items()}
    return entries, _write_pack(store, pack_path, entries, {key_name(k): d for k, (_, d) in encoded.items()})


def _write_pack(store: Store, pack_path: str, entries: Mapping[str, dict[str, Any]],
                blobs: Mapping[str, bytes]) -> dict[str, Any]:
    """Write each model's own file and the pack holding them all; return the pack's manifest entry."""
    store.write_many({entries[n]["file"]: blobs[n] for n in entries})
    data = _pack({_member(n, entries[n]): blobs[n] for n in sorted(blobs)})
    store.write(pack_path, data)
    return {pack_path: {"sha256": sha256(data), "models": sorted(blobs)}}


def _member(name: str, entry: Mapping[str, Any]) -> str:
    """A model's name inside its pack: the manifest name with its format's suffix."""
    return f"{name}{FORMATS[entry['format']].suffix}"


def carry_over(store: Store, previous: Manifest, names: Iterable[str], version: str,
               shard: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[Failure]]:
    """Copy models of ``previous`` into ``version`` unchanged (``--allow-partial``), checked by sha256.

    Copied, not referenced, so deleting old versions never breaks a newer one.
    Returns the entries (marked ``carried_from``), the pack entry and models that could not be read.
    """
    names = sorted(n for n in names if n in previous["models"])
    blobs, failures = _read_verified(store, previous, names)
    entries = {}
    pack_path = layout.pack_file(version, shard)
    for name in blobs:
        old = previous["models"][name]
        entries[name] = {**old, "file": layout.model_file(version, old["device"], old["tag"],
                                                           FORMATS[old["format"]].suffix),
                         "pack": pack_path, "carried_from": previous["version"]}
    pack = _write_pack(store, pack_path, entries, blobs) if blobs else {}
    return entries, pack, failures


def write_manifest(
    store: Store,
    version: str,
    granularity: str,
    window: tuple[datetime, datetime] | None,
    entries: Mapping[str, dict[str, Any]],
    packs: Mapping[str, dict[str, Any]],
    key: SigningKey | None = None,
) -> Manifest:
    """Write the version's manifest after every file it names, and its signature when ``key`` is given.

    The version is not live until :func:`activate` switches the pointer to it.
    """
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "granularity": granularity,
        "sklearn_version": _sklearn_version(),
        "window": _span(window),
        "packs": dict(packs),
        "models": dict(entries),
    }
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    store.write(layout.manifest_file(version), data)
    if key is not None:
        store.write(layout.signature_file(version), key.sign(data).encode())
    return manifest


def activate(store: Store, version: str) -> None:
    """Make ``version`` the live one: one small write, the last of a publication."""
    if not store.exists(layout.manifest_file(version)):
        raise FileNotFoundError(f"no manifest at {store.url_of(layout.manifest_file(version))}: "
                                "write the version before making it live")
    store.write(layout.MODELS_LIVE, json.dumps({"version": version}).encode())


def live_version(store: Store) -> str:
    """The live version id, or ``FileNotFoundError`` telling how to publish one."""
    try:
        return layout.check_id(json.loads(store.read(layout.MODELS_LIVE))["version"], "model version")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no live model version at {store.url_of(layout.MODELS_LIVE)}: run `fleetscore train --store "
            f"{store.url}` or `fleetscore import-models --store {store.url}` first"
        ) from None


def versions(store: Store) -> list[str]:
    """Every version with a manifest, oldest first."""
    prefix = f"{layout.MODELS}/v="
    found = [d.removeprefix(prefix) for d in store.list_dirs(layout.MODELS) if d.startswith(prefix)]
    return sorted(v for v in found if store.exists(layout.manifest_file(v)))


def read_manifest(store: Store, version: str | None = None, key: SigningKey | None = None,
                  require_signature: bool = False) -> Manifest:
    """The manifest of ``version`` (default: the live one), checked against its signature.

    Raises ``SignatureError`` for a manifest that must not be used (see
    :func:`scoring.signing.check`), before any model file is read.
    """
    version = live_version(store) if version is None else layout.check_id(version, "model version")
    path = layout.manifest_file(version)
    try:
        data = store.read(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model version {version} has no manifest at {store.url_of(path)}; "
                                f"versions: {', '.join(versions(store)) or 'none'}") from None
    try:
        signature = store.read(layout.signature_file(version)).decode()
    except FileNotFoundError:
        signature = None
    signing.check(data, signature, key, require_signature, store.url_of(path))
    manifest = _parse(data)
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != version:
        raise ValueError(f"{store.url_of(path)} is not a format-{MANIFEST_FORMAT} manifest of version {version}")
    return manifest


def _parse(data: bytes) -> Manifest:
    """The manifest's JSON, parsed with Python's cycle collector paused.

    A 100,000-model manifest is about two million objects, none of them in a cycle, and
    the collections their creation set off took 40 % of its parse (0.5 to 0.65 s, 0.3 s
    without). The collector is switched back on as it was, whatever happens.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(data)
    finally:
        if enabled:
            gc.enable()


def prune(store: Store, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the live one; return the deleted ids.

    A run that pinned a deleted version with ``--model-version`` fails to find it, by name.
    """
    if keep < 1:
        raise ValueError(f"fleetscore.models.keep-versions must be at least 1, not {keep}")
    live = live_version(store)
    old = [v for v in versions(store)[:-keep] if v != live]
    for version in old:
        discard(store, version)
    return old


def discard(store: Store, version: str) -> None:
    """Delete everything under a version's prefix: an unpublished one, or one retention drops."""
    folder = store.path(layout.version_dir(version))
    if store.fs.exists(folder):
        store.fs.rm(folder, recursive=True)


def manifest_slice(manifest: Manifest, names: Iterable[str]) -> Manifest:
    """The part of the manifest one batch needs, so tasks stay small when pickled."""
    models = {n: manifest["models"][n] for n in names}
    packs = {p: manifest["packs"][p] for p in {e.get("pack") for e in models.values()} if p}
    return {**manifest, "models": models, "packs": packs}


def _from_packs(store: Store, manifest: Manifest, names: Iterable[str]) -> dict[str, bytes]:
    """Model bytes from the packs that hold ``names``; a pack that fails its checksum is ignored."""
    wanted = set(names)
    packs = sorted({manifest["models"][n]["pack"] for n in wanted if "pack" in manifest["models"][n]})
    found: dict[str, bytes] = {}
    for path, data in store.read_many(packs).items():
        if sha256(data) != manifest["packs"][path]["sha256"]:
            continue  # each model then falls back to its own file and its own check
        members = _unpack(data)
        for name in wanted.intersection(manifest["packs"][path]["models"]):
            found[name] = members.get(_member(name, manifest["models"][name]), b"")
    return found


def _unpack(data: bytes) -> dict[str, bytes]:
    """The members of a pack, sliced out of its bytes.

    zipfile's reader costs more per member than decoding the model. Packs are
    written uncompressed (:func:`_pack`), so a member starts right after its
    local header; anything else is left to zipfile. Members are then checked by
    their sha256, which zipfile's CRC check would only repeat.
    """
    members = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            start = info.header_offset
            if info.compress_type != zipfile.ZIP_STORED or data[start:start + 4] != _LOCAL_HEADER:
                members[info.filename] = archive.read(info)
                continue
            name_length, extra_length = struct.unpack_from("<HH", data, start + 26)
            begin = start + 30 + name_length + extra_length
            members[info.filename] = data[begin:begin + info.file_size]
    return members


def _read_verified(store: Store, manifest: Manifest, names: list[str]) -> tuple[dict[str, bytes], list[Failure]]:
    """Each model's bytes (pack first, then its own file) once they match the manifest's sha256."""
    blobs = _from_packs(store, manifest, names)
    loose = {manifest["models"][n]["file"]: n for n in names if n not in blobs}
    blobs |= {loose[f]: data for f, data in store.read_many(list(loose)).items()}
    verified, failures = {}, []
    for name in names:
        entry = manifest["models"][name]
        data = blobs.get(name)
        if data is None:
            failures.append(Failure(entry["device"], "model file is missing", entry["file"], entry["tag"]))
        elif sha256(data) != entry["sha256"]:
            failures.append(Failure(entry["device"], "model sha256 differs from the manifest; refusing to load it",
                                    entry["file"], entry["tag"]))
        else:
            verified[name] = data
    return verified, failures


def load_models(
    store: Store, manifest: Manifest, names: Iterable[str], policy: ModelPolicy = ModelPolicy()
) -> tuple[dict[str, BaseEstimator | CompiledOCSVM], list[Failure]]:
    """Load models by manifest name, checking each sha256 before decoding it.

    A model that is missing, altered, unreadable or refused by ``policy`` (a
    pickle, an untrusted type) becomes a :class:`Failure` naming its file; the
    others load.
    """
    names = list(names)
    blobs, failures = _read_verified(store, manifest, names)
    models: dict[str, BaseEstimator | CompiledOCSVM] = {}
    for name, data in blobs.items():
        entry = manifest["models"][name]
        try:
            models[name] = decode(entry["format"], data, policy)
        except ValueError as exc:
            failures.append(Failure(entry["device"], str(exc), entry["file"], entry["tag"]))
    return models, failures
