"""Which devices need a look: one row per model and hour, and the persistence rule that decides.

A One-class SVM trained with ``nu=0.001`` flags about one row in a thousand of
a healthy device, so "at least one anomalous row" is true of nearly every
device every hour. A real fault persists: the rule here raises an ``alert``
only when at least ``k`` of ``m`` consecutive grid steps are anomalous
(defaults chosen by ``benchmarks/accuracy.py``, README "Accuracy").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring.align import Grid
from scoring.records import Failure, Features

DEVICE_HOUR_COLUMNS = {
    "device": "string", "tag": "string", "status": "string", "rows": "int64", "expected": "int64",
    "coverage": "float64", "filled": "int64", "duplicates": "int64", "superseded": "int64",
    "anomalies": "int64", "longest_run": "int64", "min_score": "float64", "alert": "bool",
    "minutes": pd.ArrowDtype(pa.binary()),
}
"""The per-device-hour table: ``status`` is ``scored``, ``failed`` or ``silent`` (no reading at all).

``minutes`` is what the anomaly picture draws, so that the flow never reads predictions back:
per minute of the hour, the steps scored and the steps flagged (:func:`minute_record`, read
with :func:`minute_counts`); null for a model not scored. Binary rather than two lists:
240 bytes a row, one Arrow buffer in the flow, and Delta has no unsigned integers.
"""

MINUTE_COUNT = np.dtype("<u2")
"""A minute's step count in ``minutes``: a minute holds at most 65,535 steps (a step of 1 ms or longer)."""


@dataclass(frozen=True)
class AlertRule:
    """Alert when at least ``anomalous_steps`` of any ``within_steps`` consecutive grid steps are anomalous."""

    anomalous_steps: int
    within_steps: int

    def __post_init__(self) -> None:
        if not 1 <= self.anomalous_steps <= self.within_steps:
            raise ValueError(f"the alert rule needs 1 <= anomalous-steps <= within-steps, got "
                             f"{self.anomalous_steps} and {self.within_steps}")

    def holds(self, steps: np.ndarray) -> bool:
        """Whether sorted anomalous step numbers hold ``k`` within ``m`` consecutive steps."""
        k = self.anomalous_steps
        return len(steps) >= k and bool((steps[k - 1:] - steps[: len(steps) - k + 1] < self.within_steps).any())


def longest_run(steps: np.ndarray) -> int:
    """Length of the longest run of consecutive grid steps among sorted step numbers."""
    if len(steps) == 0:
        return 0
    breaks = np.flatnonzero(np.diff(steps) != 1)
    edges = np.r_[-1, breaks, len(steps) - 1]
    return int(np.diff(edges).max())


def minute_record(steps: np.ndarray, flagged: np.ndarray, grid: Grid) -> bytes:
    """The ``minutes`` value of scored ``steps`` of which ``flagged`` are anomalous (step numbers of ``grid``).

    Counts, not shares: a device's sensors add up exactly, and the picture's
    shares are the same floats as when they were computed from the predictions.
    """
    minutes = -(-(grid.end - grid.start) // timedelta(minutes=1))
    step_us = grid.step // timedelta(microseconds=1)
    counts = [np.bincount(s * step_us // 60_000_000, minlength=minutes) for s in (steps, flagged)]
    if counts[0].max(initial=0) > np.iinfo(MINUTE_COUNT).max:
        raise ValueError(f"a minute holds more than {np.iinfo(MINUTE_COUNT).max} steps of {grid.step}: "
                         "set fleetscore.telemetry.step to 1ms or longer")
    return np.concatenate(counts).astype(MINUTE_COUNT).tobytes()


def minute_counts(record: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Steps scored and steps flagged per minute, from a ``minutes`` value."""
    scored, flagged = np.frombuffer(record, MINUTE_COUNT).reshape(2, -1)
    return scored, flagged


def device_hour(features: Features, score: np.ndarray, anomaly: np.ndarray, grid: Grid,
                rule: AlertRule) -> dict:
    """The row of one scored model: what was scored, how much of it was anomalous, and the alert."""
    steps = grid.steps(features.ts)
    flagged = steps[anomaly.astype(bool)]
    return {
        "device": features.key[0], "tag": features.key[1], "status": "scored",
        "rows": len(features.ts), "expected": features.expected, "coverage": features.coverage,
        "filled": features.filled, "duplicates": features.duplicates, "superseded": features.superseded,
        "anomalies": len(flagged), "longest_run": longest_run(flagged),
        "min_score": float(score.min()), "alert": rule.holds(flagged),
        "minutes": minute_record(steps, flagged, grid),
    }


def unscored(failure: Failure, grid: Grid) -> dict:
    """The row of a model that could not be scored (its reason is in the errors)."""
    return {"device": failure.device, "tag": failure.tag, "status": failure.status, "rows": 0,
            "expected": grid.size, "coverage": 0.0, "filled": 0, "duplicates": 0, "superseded": 0,
            "anomalies": 0, "longest_run": 0, "min_score": np.nan, "alert": False, "minutes": None}


def device_hours(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows as the typed per-device-hour frame, sorted by device and tag (reruns write the same bytes)."""
    frame = pd.DataFrame(list(rows), columns=list(DEVICE_HOUR_COLUMNS)).astype(DEVICE_HOUR_COLUMNS)
    return frame.sort_values(["device", "tag"], ignore_index=True)
