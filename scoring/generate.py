"""A synthetic fleet shaped like the original sample's simulator, with recorded anomalies.

Each device reports five tags on a 5-second grid, uniformly within fixed ranges.
Some devices get a burst of out-of-range values; the bursts are returned so tests
and the demo can check that scoring finds them.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from scoring.layout import parse_hour

TAG_RANGES: dict[str, tuple[float, float]] = {
    "sensor1": (10.0, 15.0),
    "sensor2": (30.0, 40.0),
    "sensor3": (60.0, 65.0),
    "sensor4": (80.0, 85.0),
    "sensor5": (100.0, 110.0),
}
STEP_SECONDS = 5
ANOMALY_COLUMNS = ("device", "tag", "start", "end")


def device_ids(count: int) -> list[str]:
    """``dev-00000`` ... : ids that sort in fleet order."""
    return [f"dev-{i:05d}" for i in range(count)]


def generate_hour(
    devices: list[str], hour: datetime | str, seed: int = 0, anomaly_rate: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Telemetry of ``devices`` for one hour, sorted by device, and the injected anomalies.

    The same ``(devices, hour, seed, anomaly_rate)`` always gives the same frames.
    ``anomaly_rate`` is the share of devices that get one burst of 3 to 12
    consecutive out-of-range readings on one tag.
    """
    start = parse_hour(hour)
    rng = np.random.default_rng([seed, int(start.timestamp())])
    steps = 3600 // STEP_SECONDS
    tags = list(TAG_RANGES)
    low = np.array([TAG_RANGES[t][0] for t in tags])
    high = np.array([TAG_RANGES[t][1] for t in tags])
    values = rng.uniform(low, high, size=(len(devices), steps, len(tags)))

    hit = np.flatnonzero(rng.random(len(devices)) < anomaly_rate)
    which_tag = rng.integers(0, len(tags), size=len(hit))
    first = rng.integers(0, steps - 12, size=len(hit))
    length = rng.integers(3, 13, size=len(hit))
    for d, t, f, n in zip(hit, which_tag, first, length):
        values[d, f : f + n, t] = high[t] + (high[t] - low[t]) * rng.uniform(3, 6, size=n)

    times = pd.date_range(start, periods=steps, freq=f"{STEP_SECONDS}s", tz="UTC")
    telemetry = pd.DataFrame(
        {
            "ts": pd.to_datetime(np.tile(np.repeat(times.to_numpy(), len(tags)), len(devices)), utc=True),
            "device": pd.array(np.repeat(devices, steps * len(tags)), dtype="string"),
            "tag": pd.array(np.tile(tags, steps * len(devices)), dtype="string"),
            "value": values.ravel(),
        }
    )
    anomalies = pd.DataFrame(
        {
            "device": pd.array([devices[d] for d in hit], dtype="string"),
            "tag": pd.array([tags[t] for t in which_tag], dtype="string"),
            "start": times[first],
            "end": times[first + length - 1],
        },
        columns=list(ANOMALY_COLUMNS),
    )
    return telemetry, anomalies
