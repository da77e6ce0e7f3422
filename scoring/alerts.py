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
per minute of the hour, the steps scored and the steps flagged (:func:`scored_hours`, read
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


def scored_hours(scored: Sequence[tuple[Features, np.ndarray, np.ndarray]], grid: Grid, rule: AlertRule) -> pd.DataFrame:
    """The rows of scored models ``(features, score, anomaly)``, sorted by device and tag: what was scored,
    how much of it was anomalous, and the alert.

    Computed over the whole batch at once, on the models' rows laid end to end: per-model
    NumPy calls cost a 100-device batch more than scoring it. A scored model has at least one row.
    """
    if not scored:
        return device_hours([])
    scored = sorted(scored, key=lambda m: (m[0].key[0], m[0].key[1] is None, m[0].key[1] or ""))  # as device_hours sorts
    features = [f for f, _, _ in scored]
    sizes = np.array([len(f.ts) for f in features], dtype=np.int64)
    model = np.repeat(np.arange(len(scored)), sizes)
    steps = grid.steps(np.concatenate([f.ts for f in features]))
    flags = np.concatenate([a for _, _, a in scored]).astype(bool)
    flagged, owner = steps[flags], model[flags]
    columns = {
        "device": pd.array([f.key[0] for f in features], "string"), "tag": pd.array([f.key[1] for f in features], "string"),
        "status": pd.array(["scored"] * len(scored), "string"), "rows": sizes,
        "expected": np.array([f.expected for f in features], np.int64),
        "coverage": np.array([f.coverage for f in features], np.float64),
        "filled": np.array([f.filled for f in features], np.int64),
        "duplicates": np.array([f.duplicates for f in features], np.int64),
        "superseded": np.array([f.superseded for f in features], np.int64),
        "anomalies": np.bincount(owner, minlength=len(scored)).astype(np.int64),
        "longest_run": _longest_runs(flagged, owner, len(scored)),
        "min_score": np.minimum.reduceat(np.concatenate([s for _, s, _ in scored]), np.cumsum(sizes) - sizes),
        "alert": _alerts(flagged, owner, len(scored), rule),
        "minutes": _minute_records(steps, flags, model, len(scored), grid),
    }
    return pd.DataFrame(columns)


def _longest_runs(flagged: np.ndarray, owner: np.ndarray, models: int) -> np.ndarray:
    """Each model's longest run of consecutive flagged steps, from flagged step numbers sorted within each model."""
    goes_on = np.zeros(len(flagged), dtype=bool)
    goes_on[1:] = (np.diff(flagged) == 1) & (owner[1:] == owner[:-1])
    run = np.cumsum(~goes_on) - 1
    longest = np.zeros(models, dtype=np.int64)
    np.maximum.at(longest, owner[~goes_on], np.bincount(run))
    return longest


def _alerts(flagged: np.ndarray, owner: np.ndarray, models: int, rule: AlertRule) -> np.ndarray:
    """:meth:`AlertRule.holds` of each model: some ``k`` of its flagged steps within ``m`` consecutive steps."""
    k = rule.anomalous_steps
    first, last = slice(0, max(len(flagged) - k + 1, 0)), slice(k - 1, None)
    holds = (flagged[last] - flagged[first] < rule.within_steps) & (owner[last] == owner[first])
    return np.bincount(owner[first][holds], minlength=models) > 0


def _minute_records(steps: np.ndarray, flags: np.ndarray, model: np.ndarray, models: int, grid: Grid) -> pd.arrays.ArrowExtensionArray:
    """Each model's ``minutes`` value: steps scored, then steps flagged, per minute of the hour.

    Counts, not shares: a device's sensors add up exactly, and the picture's
    shares are the same floats as when they were computed from the predictions.
    """
    minutes = -(-(grid.end - grid.start) // timedelta(minutes=1))
    minute = model * minutes + steps * (grid.step // timedelta(microseconds=1)) // 60_000_000
    counts = [np.bincount(m, minlength=models * minutes).reshape(models, minutes) for m in (minute, minute[flags])]
    if counts[0].max(initial=0) > np.iinfo(MINUTE_COUNT).max:
        raise ValueError(f"a minute holds more than {np.iinfo(MINUTE_COUNT).max} steps of {grid.step}: "
                         "set fleetscore.telemetry.step to 1ms or longer")
    data = np.concatenate(counts, axis=1).astype(MINUTE_COUNT)
    offsets = np.arange(models + 1, dtype=np.int32) * data.shape[1] * data.itemsize
    records = pa.Array.from_buffers(pa.binary(), models, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pd.arrays.ArrowExtensionArray(records)


def minute_counts(record: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Steps scored and steps flagged per minute, from a ``minutes`` value."""
    scored, flagged = np.frombuffer(record, MINUTE_COUNT).reshape(2, -1)
    return scored, flagged


def unscored(failure: Failure, grid: Grid) -> dict:
    """The row of a model that could not be scored (its reason is in the errors)."""
    return {"device": failure.device, "tag": failure.tag, "status": failure.status, "rows": 0,
            "expected": grid.size, "coverage": 0.0, "filled": 0, "duplicates": 0, "superseded": 0,
            "anomalies": 0, "longest_run": 0, "min_score": np.nan, "alert": False, "minutes": None}


def device_hours(rows: Sequence[dict], scored: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows (and the :func:`scored_hours` of a batch) as the typed per-device-hour frame, sorted by device
    and tag (reruns write the same bytes)."""
    if scored is not None and not rows:  # the usual batch: typing and sorting again cost more than the rows
        return scored
    frame = pd.DataFrame(list(rows), columns=list(DEVICE_HOUR_COLUMNS)).astype(DEVICE_HOUR_COLUMNS)
    frame = frame if scored is None else pd.concat([scored, frame])
    return frame.sort_values(["device", "tag"], ignore_index=True)
