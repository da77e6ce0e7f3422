"""Telemetry as real fleets send it: jittered, lossy, duplicated, late, with sensor-like signals.

:func:`scoring.generate.generate_hour` is the tidy fleet: every tag of a reading
on the 5-second grid, uniform noise. Real devices and IoT ingestion differ, and
the pipeline must cope with each difference, so :func:`realistic_hour` produces:

- **signals that look like sensors**: each device has its own baseline per tag;
  a latent factor shared by the device's tags (so tags are correlated) plus
  each tag's own noise, both AR(1) (smooth, not white); a small daily drift,
  a sinusoid over the UTC day, so a model trained on the hours before still
  fits the hour it scores;
- **delivery as IoT ingestion does it**: each tag of a reading stamped a few
  hundred ms off the grid on its own, readings lost, exact duplicate
  deliveries, and late rows: readings of the previous hour's last minutes that
  arrive in this hour's file (and are missing from that hour's);
- **anomalies an operator would want to hear about**: a 1 to 5 minute run of
  out-of-range readings on one tag (``spike``, ``offset`` or ``stuck`` at a
  rail value), recorded with ``device, tag, start, end, kind``.

Everything is drawn from ``seed`` and the hour (and the device id for the
device's own profile, so a device looks the same in every hour and in a fleet
of any size): the same arguments always give the same frames.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from scoring.generate import ANOMALY_COLUMNS, STEP_SECONDS, TAG_RANGES
from scoring.layout import parse_hour

JITTER_SECONDS = 0.3
"""Largest offset of a reading's timestamp from its grid time, either side."""
LOSS = 0.005
"""Share of readings lost in transit."""
DUPLICATES = 0.002
"""Share of readings delivered twice, identical."""
LATE = 0.001
"""Share of an hour's readings that arrive in the next hour's file, taken from its last minutes."""
LATE_STEPS = 60
"""Late readings come from the last 60 steps (5 minutes) of the hour they belong to."""

NOISE = 0.08
"""Standard deviation of a tag's noise, as a share of its range: normal readings stay in range."""
DRIFT = 0.03
"""Amplitude of the daily drift, as a share of the range: under a tenth of the noise per hour."""
LATENT_PHI, OWN_PHI = 0.8, 0.5
"""AR(1) coefficients of the shared factor and of each tag's own noise (5-second steps): time constants
of 22 s and 7 s. Smoother noise (0.9, 0.7) gave normal devices runs of up to 12 flagged steps, as long
as the shortest anomaly, so no persistence rule could tell them apart (measured on 300 devices)."""
LOADING = (0.6, 0.9)
"""Range of each tag's loading on the device's shared factor: tag correlations of 0.36 to 0.81."""
ANOMALY_STEPS = (12, 60)
"""An anomaly lasts 1 to 5 minutes (12 to 60 steps), so a persistence rule can tell it from noise."""
KINDS = ("spike", "offset", "stuck")
REALISTIC_COLUMNS = (*ANOMALY_COLUMNS, "kind")

STEPS = 3600 // STEP_SECONDS
_TAGS = list(TAG_RANGES)
_LOW = np.array([TAG_RANGES[t][0] for t in _TAGS])
_WIDTH = np.array([TAG_RANGES[t][1] for t in _TAGS]) - _LOW
_STEP_MS = STEP_SECONDS * 1000


@dataclass(frozen=True)
class Delivery:
    """How readings travel from devices to the hour's file; the knobs of :func:`realistic_hour`."""

    jitter: float = JITTER_SECONDS
    loss: float = LOSS
    duplicates: float = DUPLICATES
    late: float = LATE

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < STEP_SECONDS / 2:
            raise ValueError(f"jitter must be in [0, {STEP_SECONDS / 2}) seconds, so readings stay nearest "
                             f"their own grid time; got {self.jitter}")
        for name in ("loss", "duplicates"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} is a share of readings in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.late <= LATE_STEPS / STEPS:
            raise ValueError(f"late is a share of readings in [0, {LATE_STEPS / STEPS:.4f}] (they come from the "
                             f"hour's last {LATE_STEPS} steps), got {self.late}")


@dataclass
class _Readings:
    """One hour's readings before delivery, flat in (device, step, tag) order, and what was injected."""

    ts: np.ndarray  # int64 ms since the epoch, jittered: devices stamp readings to the millisecond
    value: np.ndarray
    held: np.ndarray  # readings that arrive late, in the next hour's file
    anomalies: pd.DataFrame


def _ar1(shocks: np.ndarray, phi: float) -> np.ndarray:
    """Stationary AR(1) with unit variance along axis 1: the first step is scaled to the stationary spread."""
    shocks = shocks * np.sqrt(1 - phi**2)
    shocks[:, 0] /= np.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], shocks, axis=1)


def _profiles(devices: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per device and tag: baseline, loading on the shared factor, phase of the daily drift.

    Seeded by the device id, not its position, so a device is the same whatever fleet it is generated in.
    """
    draws = np.array([np.random.default_rng([seed, zlib.crc32(d.encode())]).random((3, len(_TAGS)))
                      for d in devices]).reshape(len(devices), 3, len(_TAGS))
    baseline = _LOW + _WIDTH * (0.3 + 0.4 * draws[:, 0])
    loading = LOADING[0] + (LOADING[1] - LOADING[0]) * draws[:, 1]
    return baseline, loading, 2 * np.pi * draws[:, 2]


def _signal(devices: Sequence[str], start: datetime, seed: int, rng: np.random.Generator) -> np.ndarray:
    """Normal readings of the hour as a (device, step, tag) array."""
    baseline, loading, phase = _profiles(devices, seed)
    latent = _ar1(rng.standard_normal((len(devices), STEPS)), LATENT_PHI)
    own = _ar1(rng.standard_normal((len(devices), STEPS, len(_TAGS))), OWN_PHI)
    noise = loading[:, None, :] * latent[:, :, None] + np.sqrt(1 - loading**2)[:, None, :] * own
    day = 2 * np.pi * (start.hour * 3600 + STEP_SECONDS * np.arange(STEPS)) / 86_400
    drift = DRIFT * np.sin(day[None, :, None] + phase[:, None, :])
    return baseline[:, None, :] + _WIDTH * (NOISE * noise + drift)


def _inject(values: np.ndarray, devices: Sequence[str], start: datetime, anomaly_rate: float,
            rng: np.random.Generator) -> pd.DataFrame:
    """Give a share ``anomaly_rate`` of devices one anomaly on one tag, in place; the record of them.

    ``spike``: readings 2 to 4 ranges above the maximum, noisy. ``offset``: the
    signal shifted by 1.5 to 3 ranges either way. ``stuck``: one value 1 to 2
    ranges below the minimum, as a sensor stuck at a rail. All leave the tag's range.
    """
    hit = np.flatnonzero(rng.random(len(devices)) < anomaly_rate)
    tag = rng.integers(0, len(_TAGS), size=len(hit))
    length = rng.integers(ANOMALY_STEPS[0], ANOMALY_STEPS[1] + 1, size=len(hit))
    first = rng.integers(0, STEPS - length + 1)
    kind = rng.integers(0, len(KINDS), size=len(hit))
    size = rng.uniform(0, 1, size=len(hit))
    sign = rng.choice([-1.0, 1.0], size=len(hit))
    for d, t, f, n, k, s, g in zip(hit, tag, first, length, kind, size, sign):
        run, low, width = values[d, f : f + n, t], _LOW[t], _WIDTH[t]
        if KINDS[k] == "spike":
            values[d, f : f + n, t] = run + width * (2.7 + 2 * s)  # the baseline is >= 0.3 range above the minimum
        elif KINDS[k] == "offset":
            values[d, f : f + n, t] = run + g * width * (1.5 + 1.5 * s)
        else:
            values[d, f : f + n, t] = low - width * (1 + s)
    stamp = int(start.timestamp())
    return pd.DataFrame({
        "device": pd.array([devices[d] for d in hit], dtype="string"),
        "tag": pd.array([_TAGS[t] for t in tag], dtype="string"),
        "start": pd.to_datetime(stamp + STEP_SECONDS * first, unit="s", utc=True).as_unit("ns"),
        "end": pd.to_datetime(stamp + STEP_SECONDS * (first + length - 1), unit="s", utc=True).as_unit("ns"),
        "kind": pd.array([KINDS[k] for k in kind], dtype="string"),
    }, columns=list(REALISTIC_COLUMNS))


def _readings(devices: Sequence[str], start: datetime, seed: int, anomaly_rate: float,
              delivery: Delivery) -> _Readings:
    """Every reading of the hour, jittered, with the late ones marked; one random stream per concern."""
    stamp = int(start.timestamp())
    values = _signal(devices, start, seed, np.random.default_rng([seed, stamp, 1]))
    anomalies = _inject(values, devices, start, anomaly_rate, np.random.default_rng([seed, stamp, 2]))
    rng = np.random.default_rng([seed, stamp, 3])
    shape = values.shape
    offset = rng.uniform(-delivery.jitter, delivery.jitter, size=shape)
    offset[:, 0, :] = np.abs(offset[:, 0, :])  # the hour's first readings are never stamped in the hour before
    grid = stamp * 1000 + _STEP_MS * np.arange(STEPS)
    ts = (grid[None, :, None] + np.round(offset * 1000).astype(np.int64)).ravel()
    last = (np.arange(STEPS) >= STEPS - LATE_STEPS)[None, :, None]
    held = (last & (rng.random(shape) < delivery.late * STEPS / LATE_STEPS)).ravel()
    return _Readings(ts, values.ravel(), held, anomalies)


def realistic_hour(
    devices: Sequence[str], hour: datetime | str, seed: int = 0, anomaly_rate: float = 0.05,
    jitter: float = JITTER_SECONDS, loss: float = LOSS, duplicates: float = DUPLICATES, late: float = LATE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The hour's telemetry file as a real fleet fills it, sorted by device and time, and the anomalies.

    Args:
        devices: device ids; each has its own baseline, tag loadings and drift phase.
        hour: the hour, ``YYYY-MM-DDTHH`` or a datetime.
        seed: with the hour, fixes every draw.
        anomaly_rate: share of devices with one injected anomaly in the hour.
        jitter: largest offset, in seconds, of each tag's timestamp from its grid time.
        loss: share of readings lost.
        duplicates: share of readings delivered twice, identical.
        late: share of readings that arrive in the next hour's file. This hour's file
            lacks its own late readings and holds those of the hour before (``ts`` before ``hour``).

    Returns:
        ``ts, device, tag, value`` rows, and ``device, tag, start, end, kind`` per
        anomaly (``start`` and ``end`` are grid times of its first and last readings).
    """
    start = parse_hour(hour)
    delivery = Delivery(jitter, loss, duplicates, late)
    now = _readings(devices, start, seed, anomaly_rate, delivery)
    before = _readings(devices, start - timedelta(hours=1), seed, anomaly_rate, delivery)
    rng = np.random.default_rng([seed, int(start.timestamp()), 4])
    kept = np.flatnonzero(~now.held & (rng.random(len(now.ts)) >= loss))
    twice = kept[rng.random(len(kept)) < duplicates]
    index = np.concatenate([kept, twice])
    late_index = np.flatnonzero(before.held)
    ts = np.concatenate([now.ts[index], before.ts[late_index]])
    value = np.concatenate([now.value[index], before.value[late_index]])
    flat = np.concatenate([index, late_index])  # position in (device, step, tag) order
    device, tag = flat // (STEPS * len(_TAGS)), flat % len(_TAGS)
    since = ts - (int(start.timestamp()) - 3600) * 1000  # ms since the hour before: under 2**23
    order = np.argsort((device << 32) | (since << 3) | tag, kind="stable")  # one int64 key: device, ts, tag
    telemetry = pd.DataFrame({
        "ts": pd.DatetimeIndex(ts[order].astype("datetime64[ms]")).tz_localize("UTC").as_unit("ns"),
        "device": pd.Categorical.from_codes(device[order], list(devices)),
        "tag": pd.Categorical.from_codes(tag[order], _TAGS),
        "value": value[order],
    })
    return telemetry, now.anomalies
