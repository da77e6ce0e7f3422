"""Time committing an hour of 100 predictions files (and one file per other table) to the Delta tables.

``.venv/bin/python -m benchmarks.commit_hour [store]``: a temporary local folder by default. Three
commits of the same hour, so the second and third also remove the previous run's files.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import pandas as pd

from scoring import layout, tables
from scoring.store import Store

HOUR = layout.parse_hour("2026-11-27T10")
FILES = 100
DEVICES_PER_FILE = 100
STEPS = 720


def batch(seed: int) -> pd.DataFrame:
    """One batch's predictions: 100 devices x 720 steps, as a scoring batch writes them."""
    rows = DEVICES_PER_FILE * STEPS
    return pd.DataFrame({
        "ts": pd.date_range(HOUR, periods=STEPS, freq="5s").repeat(DEVICES_PER_FILE),
        "device": pd.array([f"dev-{seed:05d}-{d:03d}" for d in range(DEVICES_PER_FILE)] * STEPS, "string"),
        "tag": pd.array([None] * rows, "string"),
        "score": np.random.default_rng(seed).normal(size=rows),
        "anomaly": pd.array(np.zeros(rows, "int8")),
        "model_sha256": pd.array(["0" * 64] * rows, "string"),
    })


def main(url: str | None = None) -> None:
    store = Store(url or tempfile.mkdtemp(prefix="fleetscore-commit-"))
    for run in range(3):
        files = {"predictions": [tables.write_file(store, "predictions", HOUR, batch(run * FILES + i))
                                 for i in range(FILES)]}
        for name in layout.TABLE_NAMES[1:]:
            files[name] = [tables.write_file(store, name, HOUR, pd.DataFrame({"run": pd.array([f"{run}"], "string")}))]
        started = time.perf_counter()
        claim = tables.commit_hour(store, HOUR, files, {"flow_run_id": f"bench-{run}"})
        print(f"commit {claim} of {layout.hour_label(HOUR)}: {FILES} predictions files + {len(files) - 1} "
              f"in {time.perf_counter() - started:.3f} s ({store.url})")


if __name__ == "__main__":
    main(*sys.argv[1:])
