"""The unit of training sent to a Dask worker: fit the models of one shard of devices.

A plain function of picklable arguments, no Prefect, like :mod:`scoring.batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from scoring import layout
from scoring import models as model_io
from scoring import telemetry
from scoring.align import Grid
from scoring.features import infer_specs, to_features
from scoring.predict import fit_model
from scoring.records import Failure
from scoring.store import Store


@dataclass
class TrainResult:
    """A trained shard: its manifest entries and pack, and the devices that could not be fitted.

    ``lost`` marks a shard whose task failed as a whole (worker or storage gone):
    its devices were not even tried, which a publication must not hide.
    """

    entries: dict
    packs: dict
    failures: list[Failure]
    lost: bool = False


def train_batch(store: Store, hours: Sequence[datetime], grid: Grid, devices: Sequence[str], shard: int,
                granularity: str, nu: float, gamma: float | str, version: str) -> TrainResult:
    """Fit one model per device (or sensor) of the shard on the window's telemetry, into model ``version``."""
    window = pd.concat([telemetry.read_hour(store, h, devices) for h in hours], ignore_index=True)
    specs = infer_specs(window, granularity)
    features, failures, _ = to_features(window, specs, grid)  # quarantined rows are the scoring runs' to report
    fitted = {}
    for f in features:
        try:
            fitted[f.key] = fit_model(f.X, nu=nu, gamma=gamma)
        except ValueError as exc:
            failures.append(Failure(f.key[0], str(exc), tag=f.key[1]))
    window_span = layout.span(list(hours))
    entries, pack = model_io.publish_pack(store, version, shard, fitted, specs, window_span) if fitted else ({}, {})
    return TrainResult(entries, pack, failures)
