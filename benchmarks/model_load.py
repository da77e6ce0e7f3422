"""Cost of loading one model: joblib pickles against the code-free array format.

    .venv/bin/python benchmarks/model_load.py --models 1000

Fits ``--distinct`` standard models on generated hours (720 rows, 5 tags, the
training settings of ``fleetscore.yaml``), then loads ``--models`` of them, cycling,
four ways: ``joblib.load`` and ``pickle.loads`` of their pickles (what scoring did
before model versions), ``decode_arrays`` of their ``ocsvm-arrays`` bytes, and
:func:`scoring.models.load_models` on a local store in batches of one pack
(pack read, zip, sha256 checks and decoding: what a scoring batch does now).
Each figure is the best of ``--repeat`` rounds, in milliseconds per model.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np

from cluster.config import setting
from scoring import layout, models
from scoring.generate import device_ids, generate_hour
from scoring.model_format import decode_arrays, encode
from scoring.predict import fit_model
from scoring.store import Store

WINDOW = (layout.parse_hour("2026-11-27T08"), layout.parse_hour("2026-11-27T10"))


def fitted_models(distinct: int) -> list:
    frame, _ = generate_hour(device_ids(distinct), WINDOW[0], seed=3)
    values = frame["value"].to_numpy().reshape(distinct, 720, -1)
    return [fit_model(X, nu=setting("scoring.nu"), gamma=setting("scoring.gamma")) for X in values]


def per_model_ms(load: Callable[[], int], repeat: int) -> float:
    """Best of ``repeat`` rounds of ``load()``, which returns how many models it loaded."""
    best = np.inf
    for _ in range(repeat):
        started = time.perf_counter()
        count = load()
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=50)
    parser.add_argument("--per-pack", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/model_load.json")
    args = parser.parse_args()
    fleet = fitted_models(args.distinct)
    chosen = [fleet[i % len(fleet)] for i in range(args.models)]
    pickles = [pickle.dumps(m) for m in chosen]
    dumped = []
    for model in chosen:
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        dumped.append(buffer.getvalue())
    arrays = [encode(m)[1] for m in chosen]
    with tempfile.TemporaryDirectory() as folder:
        store, version = Store(folder), models.new_version()
        names = device_ids(args.models)
        entries, packs = {}, {}
        for shard, start in enumerate(range(0, args.models, args.per_pack)):
            chunk = {(n, None): chosen[i] for i, n in enumerate(names[start:start + args.per_pack], start)}
            e, p = models.publish_pack(store, version, shard, chunk, {k: list("abcde") for k in chunk}, WINDOW)
            entries, packs = entries | e, packs | p
        manifest = models.write_manifest(store, version, "device", WINDOW, entries, packs)
        batches = [names[i:i + args.per_pack] for i in range(0, args.models, args.per_pack)]

        def through_packs() -> int:
            for batch in batches:
                loaded, failures = models.load_models(store, models.manifest_slice(manifest, batch), batch)
                assert not failures and len(loaded) == len(batch)
            return args.models

        rows = {
            "joblib.load (pickle, before)": per_model_ms(lambda: len([joblib.load(io.BytesIO(d)) for d in dumped]),
                                                         args.repeat),
            "pickle.loads (pickle)": per_model_ms(lambda: len([pickle.loads(d) for d in pickles]), args.repeat),
            "decode_arrays (ocsvm-arrays)": per_model_ms(lambda: len([decode_arrays(d) for d in arrays]), args.repeat),
            "load_models from packs, local store": per_model_ms(through_packs, args.repeat),
        }
    sizes = {"joblib bytes": int(np.mean([len(d) for d in dumped])),
             "arrays bytes": int(np.mean([len(d) for d in arrays]))}
    for name, ms in rows.items():
        print(f"{name:40s} {ms:8.4f} ms/model")
    ratio = rows["joblib.load (pickle, before)"] / rows["decode_arrays (ocsvm-arrays)"]
    print(f"mean size: {sizes}; joblib.load / decode_arrays = {ratio:.0f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"models": args.models, "ms_per_model": rows, "mean_size": sizes}, indent=1))


if __name__ == "__main__":
    main()
