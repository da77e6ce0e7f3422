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

import numpy as np
import pandas as pd

from scoring.align import Grid
from scoring.records import Failure, Features

DEVICE_HOUR_COLUMNS = {
    "device": "string", "tag": "string", "status": "string", "rows": "int64", "expected": "int64",
    "coverage": "float64", "filled": "int64", "duplicates": "int64", "superseded": "int64",
    "anomalies": "int64", "longest_run": "int64", "min_score": "float64", "alert": "bool",
}
"""The per-device-hour table: ``status`` is ``scored``, ``failed`` or ``silent`` (no reading at all)."""


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


def device_hour(features: Features, score: np.ndarray, anomaly: np.ndarray, grid: Grid,
                rule: AlertRule) -> dict:
    """The row of one scored model: what was scored, how much of it was anomalous, and the alert."""
    flagged = grid.steps(features.ts[anomaly.astype(bool)])
    return {
        "device": features.key[0], "tag": features.key[1], "status": "scored",
        "rows": len(features.ts), "expected": features.expected, "coverage": features.coverage,
        "filled": features.filled, "duplicates": features.duplicates, "superseded": features.superseded,
        "anomalies": len(flagged), "longest_run": longest_run(flagged),
        "min_score": float(score.min()), "alert": rule.holds(flagged),
    }


def unscored(failure: Failure, grid: Grid) -> dict:
    """The row of a model that could not be scored (its reason is in the errors)."""
    return {"device": failure.device, "tag": failure.tag, "status": failure.status, "rows": 0,
            "expected": grid.size, "coverage": 0.0, "filled": 0, "duplicates": 0, "superseded": 0,
            "anomalies": 0, "longest_run": 0, "min_score": np.nan, "alert": False}


def device_hours(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows as the typed per-device-hour frame, sorted by device and tag (reruns write the same bytes)."""
    frame = pd.DataFrame(list(rows), columns=list(DEVICE_HOUR_COLUMNS)).astype(DEVICE_HOUR_COLUMNS)
    return frame.sort_values(["device", "tag"], ignore_index=True)
