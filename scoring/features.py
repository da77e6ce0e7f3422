"""Long telemetry (``ts, device, tag, value``) to one feature matrix per model.

Rows are checked against the contract (:func:`validate`), aligned to the grid
once per batch (:mod:`scoring.align`), then scattered into each model's matrix
with NumPy, never with a pandas pivot per device: at thousands of devices per
hour the per-device pandas overhead costs more than the scoring itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring.align import Aligned, Grid, align, code_of, quarantine
from scoring.records import Failure, Features, ModelKey

LONG_COLUMNS = ("ts", "device", "tag", "value")


def validate(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split telemetry into rows that meet the contract and rows that do not.

    Accepts the original sample's ``TS,Device,Tag,Value`` headers. Returns the
    good rows normalised (UTC ``ts``, string ``device`` and ``tag``, float
    ``value``) and the bad rows as they came, as strings, with a ``reason``, so
    they can be kept in quarantine rather than dropped. A missing, NaN or
    infinite value is a lost reading: quarantined, and its timestamp then lacks
    that tag. Raises ``ValueError`` when whole columns are missing: then no row
    can be trusted.
    """
    renamed = frame.rename(columns={c: c.lower() for c in frame.columns if isinstance(c, str)})
    missing = [c for c in LONG_COLUMNS if c not in renamed.columns]
    if missing:
        raise ValueError(f"telemetry lacks column(s) {missing}; expected {list(LONG_COLUMNS)}")
    raw = renamed.loc[:, list(LONG_COLUMNS)]
    ts, value = _timestamps(raw["ts"]), _numbers(raw["value"])
    lost = value.isna().to_numpy()
    checks = {  # the first that holds is the row's reason
        "device or tag is missing": (raw["device"].isna() | raw["tag"].isna()).to_numpy(),
        "ts is not a timestamp": ts.isna().to_numpy(),
        "value is not a number": lost & raw["value"].notna().to_numpy(),
        "value is missing or NaN": lost,
        "value is not finite": np.isinf(value.to_numpy()),
    }
    bad = np.logical_or.reduce(list(checks.values()))
    # Reasons for the bad rows only: a string per row of the batch cost more than reading it.
    reason = np.select([c[bad] for c in checks.values()], list(checks), default="")
    good = pd.DataFrame({
        "ts": ts[~bad],
        "device": raw["device"][~bad].astype("string"),
        "tag": raw["tag"][~bad].astype("string"),
        "value": value[~bad].astype("float64"),
    }).reset_index(drop=True)
    quarantined = raw[bad].astype("string").assign(reason=pd.array(reason, dtype="string")).reset_index(drop=True)
    return good, quarantined


def _timestamps(values: pd.Series) -> pd.Series:
    """UTC timestamps in nanoseconds, whatever unit a file used; what cannot be read as one becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True).dt.as_unit("ns")
    return pd.to_datetime(values, utc=True, errors="coerce", format="mixed").dt.as_unit("ns")


def _numbers(values: pd.Series) -> pd.Series:
    """Floats; booleans and text that is not a number become NaN."""
    if pd.api.types.is_bool_dtype(values):
        return pd.Series(np.nan, index=values.index)
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    return pd.to_numeric(values.where(~values.map(lambda v: isinstance(v, bool))), errors="coerce")


_NOTHING_QUARANTINED = quarantine(pd.DataFrame(columns=[*LONG_COLUMNS, "file"]), np.zeros(0, np.int64), [])
"""What a batch whose every reading has a step of the window to itself quarantines: nothing (shared: never modified)."""


def to_features(
    telemetry: pd.DataFrame | pa.Table, specs: Mapping[ModelKey, Sequence[str]], grid: Grid
) -> tuple[list[Features], list[Failure], pd.DataFrame]:
    """Build the input of every model in ``specs`` from one batch of normalised telemetry.

    ``specs`` maps a model key to its feature order: the device's tags for a
    per-device model, ``["value"]`` for a per-sensor model ``(device, tag)``.
    Readings are aligned to ``grid`` (:mod:`scoring.align`); a model's rows are
    the grid's timestamps that have every feature, after filling. Returns the
    models' inputs, the models that cannot be scored (no readings: ``silent``;
    coverage below ``grid.min_coverage``: ``failed``), and the quarantined rows
    with their reason. One model's problems never affect another.

    An Arrow table (a batch's rows as :mod:`scoring.telemetry` reads them) takes a
    shortcut, :class:`_Cube`, with the same result: only the readings the rules must
    judge are aligned as a pandas frame, and the rows of a device that sent a tag its
    model does not know.
    """
    if not isinstance(telemetry, pa.Table):
        return _aligned(telemetry, specs, grid)
    cube = _Cube.of(telemetry, grid)
    if cube is None:
        return _aligned(telemetry.to_pandas(), specs, grid)
    on_grid = {key: order for key, order in specs.items() if cube.takes(key, order)}
    features, failures = cube.features(on_grid, grid)
    rest = {key[0] for key in specs if key not in on_grid}
    if not rest:
        return features, failures, cube.quarantined
    rows = telemetry.filter(cube.rows_of(rest)).to_pandas()
    others = _aligned(rows, {key: order for key, order in specs.items() if key not in on_grid}, grid)
    judged = cube.quarantined[~cube.quarantined["device"].isin(rest)]  # the rest's are judged again with all their rows
    return features + others[0], failures + others[1], pd.concat([judged, others[2]], ignore_index=True)


def _aligned(telemetry: pd.DataFrame, specs: Mapping[ModelKey, Sequence[str]], grid: Grid
             ) -> tuple[list[Features], list[Failure], pd.DataFrame]:
    """:func:`to_features` by the rules of :mod:`scoring.align`, whatever the readings."""
    aligned = align(telemetry, grid)
    columns = _ColumnLookup(aligned.tags)
    features: list[Features] = []
    failures: list[Failure] = []
    quarantined = [aligned.quarantined]
    for key, order in specs.items():
        rows = aligned.rows_of(key[0])
        if key[1] is not None:  # a per-sensor model: its tag's rows, as its one feature
            rows = _rows_of_tag(aligned, rows, key[1])
            col = np.zeros(rows.stop - rows.start, dtype=np.int64)
        else:
            col = columns.of(order)[aligned.tag[rows]]
        if rows.stop == rows.start:
            failures.append(_silent(key, grid))
            continue
        unknown = col < 0
        if unknown.any():
            names = aligned.tags[aligned.tag[rows][unknown]]
            quarantined.append(quarantine(telemetry, aligned.source[rows][unknown],
                                          [f"tag {n} is not among the model's features {list(order)}" for n in names]))
        step, value = aligned.step[rows][~unknown], aligned.value[rows][~unknown]
        made = _matrix(key, step, col[~unknown], value, len(order), grid, aligned.counts_of(key[0]))
        (features if isinstance(made, Features) else failures).append(made)
    return features, failures, pd.concat(quarantined, ignore_index=True)


class _ColumnLookup:
    """Tag code to column number (-1: not a feature), one array per feature order, built once per batch."""

    def __init__(self, tags: np.ndarray) -> None:
        self._tags = pd.Index(tags)
        self._made: dict[tuple[str, ...], np.ndarray] = {}

    def of(self, order: Sequence[str]) -> np.ndarray:
        key = tuple(order)
        if key not in self._made:
            self._made[key] = pd.Index(key).get_indexer(self._tags).astype(np.int64)
        return self._made[key]


def _rows_of_tag(aligned: Aligned, rows: slice, tag: str) -> slice:
    """The rows of one tag within one device's rows (sorted by tag code)."""
    code = code_of(aligned.tags, tag)
    if code is None:
        return slice(0, 0)
    first, last = np.searchsorted(aligned.tag[rows], [code, code + 1])
    return slice(rows.start + first, rows.start + last)


@dataclass(frozen=True)
class _Cube:
    """A batch's readings on the grid as ``values[device, step, tag]``, NaN where there is none.

    Nearly every reading has a step of the window to itself (its device, tag and step
    hold no other): the rules keep it as it is, so it is scattered straight from Arrow
    into the cube, with no sort and no pandas (30 ms of a 100-device batch saved). The
    others (duplicates, conflicts, jitter into one step, rows outside the window) are
    judged by :func:`~scoring.align.align` alone, which names what to quarantine and
    counts what it drops, and what it keeps is scattered too. Each model's matrix is
    then a slice of the cube. ``sent[device, tag]`` says whether a device has a kept
    reading of a tag; the last tag column stands for any tag the batch does not hold,
    so it is always NaN.
    """

    values: np.ndarray
    sent: np.ndarray
    duplicates: np.ndarray
    superseded: np.ndarray
    quarantined: pd.DataFrame
    devices: dict[str, int]
    tags: dict[str, int]
    row_device: np.ndarray

    @classmethod
    def of(cls, table: pa.Table, grid: Grid) -> _Cube | None:
        """The cube of a batch's rows (``None`` if their ids' dictionaries repeat a name)."""
        device, tag = (table[c].combine_chunks() for c in ("device", "tag"))
        devices, tags = device.dictionary.to_pylist(), tag.dictionary.to_pylist()
        if len(set(devices)) < len(devices) or len(set(tags)) < len(tags):
            return None
        used = np.zeros(len(devices), dtype=bool)  # the dictionary may name devices of other batches
        d, t = device.indices.to_numpy(), tag.indices.to_numpy()
        used[d] = True
        d = (np.cumsum(used) - 1)[d]
        names = np.asarray(devices, dtype=object)[used]
        width = len(tags) + 1
        step = grid.steps(table["ts"].to_numpy())
        inside = (step >= 0) & (step < grid.size)
        pair = d * width + t
        cell = (d * grid.size + np.clip(step, 0, grid.size - 1)) * width + t
        alone = inside & (np.bincount(cell[inside], minlength=len(names) * grid.size * width)[cell] == 1)
        value = table["value"].to_numpy()
        if not alone.all():  # masks copy: only where some reading is not alone
            pair, cell, value = pair[alone], cell[alone], value[alone]
        values = np.full((len(names), grid.size, width), np.nan)
        values.reshape(-1)[cell] = value
        sent = (np.bincount(pair, minlength=len(names) * width) > 0).reshape(-1, width)
        index = {n: i for i, n in enumerate(names)}, {n: i for i, n in enumerate(tags)}
        judged = (np.zeros(len(names), np.int64), np.zeros(len(names), np.int64), _NOTHING_QUARANTINED)
        if not alone.all():
            judged = _judge(table.filter(pa.array(~alone)).to_pandas(), grid, values, sent, *index)
        return cls(values, sent, *judged, *index, d)

    def columns(self, tags: Sequence[str]) -> list[int]:
        """The cube's columns of some tags, in their order."""
        return _columns(self.tags, tags)

    def takes(self, key: ModelKey, order: Sequence[str]) -> bool:
        """Whether a model's matrix is a slice of the cube: its device sent no tag the model does not know."""
        device = self.devices.get(key[0])
        return key[1] is not None or device is None or set(np.flatnonzero(self.sent[device])) <= set(self.columns(order))

    def features(self, specs: Mapping[ModelKey, Sequence[str]], grid: Grid) -> tuple[list[Features], list[Failure]]:
        """:func:`to_features` of models the cube :meth:`takes`."""
        features, failures = [], []
        for key, order in specs.items():
            device = self.devices.get(key[0])
            cols = self.columns([key[1]] if key[1] is not None else order)
            if device is None or not self.sent[device, cols].any():
                failures.append(_silent(key, grid))
                continue
            counts = int(self.duplicates[device]), int(self.superseded[device])
            made = _features(key, self.values[device][:, cols], grid, counts)
            (features if isinstance(made, Features) else failures).append(made)
        return features, failures

    def rows_of(self, devices: Collection[str]) -> pa.Array:
        """Which of the batch's rows are of ``devices``."""
        chosen = np.zeros(len(self.devices), dtype=bool)
        chosen[[self.devices[n] for n in devices if n in self.devices]] = True
        return pa.array(chosen[self.row_device])


def _columns(index: Mapping[str, int], tags: Sequence[str]) -> list[int]:
    """Columns of some tags in a cube whose last column stands for every tag it does not hold."""
    return [index.get(name, len(index)) for name in tags]


def _judge(rows: pd.DataFrame, grid: Grid, values: np.ndarray, sent: np.ndarray, devices: Mapping[str, int],
           tags: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Align readings that shared a step or fell outside the window, as the rules say, into the cube.

    Returns each cube device's readings dropped as duplicates and superseded, and the quarantined rows.
    """
    aligned = align(rows.assign(device=rows["device"].cat.remove_unused_categories()), grid)
    codes = np.array([devices[n] for n in aligned.devices], dtype=np.int64)
    d, t = codes[aligned.device], np.array(_columns(tags, aligned.tags), dtype=np.int64)[aligned.tag]
    values[d, aligned.step, t] = aligned.value
    sent[d, t] = True
    duplicates, superseded = (np.zeros(len(values), np.int64) for _ in range(2))
    duplicates[codes], superseded[codes] = aligned.duplicates, aligned.superseded
    return duplicates, superseded, aligned.quarantined


def _silent(key: ModelKey, grid: Grid) -> Failure:
    """A model whose device (or sensor) sent nothing in the window."""
    return Failure(key[0], f"no telemetry rows in {grid.label}", tag=key[1], status="silent")


def _matrix(key: ModelKey, step: np.ndarray, col: np.ndarray, value: np.ndarray, width: int,
            grid: Grid, counts: tuple[int, int]) -> Features | Failure:
    """One model's (timestamps x features) input on the grid, or a failure when coverage is too low."""
    X = np.full((grid.size, width), np.nan)
    X[step, col] = value
    return _features(key, X, grid, counts)


def _features(key: ModelKey, X: np.ndarray, grid: Grid, counts: tuple[int, int]) -> Features | Failure:
    """A model's input from its (steps x features) matrix, filled forward in place, or a failure when coverage is too low."""
    filled = _fill_forward(X, grid.max_fill)  # only timestamps with some reading: never invent one
    complete = ~np.isnan(X).any(axis=1)
    scored = int(complete.sum())
    coverage = scored / grid.size
    if scored == 0 or coverage < grid.min_coverage:
        return Failure(key[0], f"coverage {coverage:.1%} is below min-coverage {grid.min_coverage:.0%}: "
                               f"{scored} of {grid.size} timestamps in {grid.label} have every tag",
                       tag=key[1])
    kept = np.flatnonzero(complete)
    return Features(key, grid.times(kept), X[kept], expected=grid.size, filled=filled,
                    duplicates=counts[0], superseded=counts[1])


def _fill_forward(X: np.ndarray, limit: int) -> int:
    """Fill gaps in place from the same column's previous value at most ``limit`` rows back; return how many.

    Only rows that hold some reading are filled: a timestamp the device did not
    report at all stays a gap, and is not scored.
    """
    if limit == 0:
        return 0
    missing = np.isnan(X)
    if not missing.any():
        return 0
    index = np.arange(len(X))[:, None]
    last = np.maximum.accumulate(np.where(missing, -1, index), axis=0)
    reported = ~missing.all(axis=1, keepdims=True)
    fill = missing & reported & (last >= 0) & (index - last <= limit)
    rows, cols = np.nonzero(fill)
    X[rows, cols] = X[last[rows, cols], cols]
    return len(rows)


GRANULARITIES = ("device", "sensor")


def infer_specs(telemetry: pd.DataFrame, granularity: str = "device") -> dict[ModelKey, list[str]]:
    """The models a training window calls for, each with its feature order.

    ``device``: one model per device over its tags, sorted by name (the order is
    recorded in the manifest, so scoring never depends on row order).
    ``sensor``: one model per ``(device, tag)`` with the single feature ``value``.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    pairs = telemetry[["device", "tag"]].drop_duplicates().sort_values(["device", "tag"])
    if granularity == "sensor":
        return {(str(d), str(t)): ["value"] for d, t in pairs.itertuples(index=False)}
    return {
        (str(device), None): [str(t) for t in group["tag"]]
        for device, group in pairs.groupby("device", sort=True)
    }
