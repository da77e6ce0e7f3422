"""Reading and writing an hour of telemetry (``telemetry/date=.../hour=.../*.parquet|*.csv``).

The flow only lists the hour's files and checks their footers (:func:`scan_hour`);
rows are read by the batches, each the rows of its own range of device ids
(:class:`DeviceRange`), straight from Arrow: files are written sorted by device,
so a batch reads the few row groups whose statistics overlap its range.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring import layout
from scoring.features import LONG_COLUMNS, validate
from scoring.records import Failure
from scoring.store import Store, is_text

ROW_GROUP_ROWS = 64_000
"""Rows per Parquet row group: small enough that a batch skips the groups of other devices."""

IDS = pa.dictionary(pa.int32(), pa.string())
"""Device ids and tags as a batch holds them: codes into a small dictionary of names.

Read so from Parquet's own dictionary pages (3x faster than building the strings), they are
selected, checked and sorted by name once per name, not once per row.
"""

VALID = pa.schema([("ts", pa.timestamp("ns", "UTC")), ("device", IDS), ("tag", IDS), ("value", pa.float64())])
"""Rows that met the contract, as :func:`~scoring.features.validate` normalises them (ids as :data:`IDS`)."""


@dataclass(frozen=True)
class InputFile:
    """One telemetry file as read: recorded with the commit, so a changed or late file is noticed."""

    path: str
    size: int
    version: str
    """The blob's etag, or the local file's modification time: changes whenever the content may have."""


class UnreadableFile(ValueError):
    """A telemetry file that cannot be parsed: reported with its reason, never retried."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@dataclass
class HourScan:
    """What the hour's folder holds: files that look like telemetry, and files that cannot be read.

    ``devices`` holds each Parquet file's device ids from its footer, as one row group
    (:meth:`DeviceStats.whole`): a batch is sent only the files that may hold its range.
    """

    files: list[InputFile]
    unreadable: list[Failure]
    devices: dict[str, DeviceStats] = field(default_factory=dict)

    def files_for(self, span: DeviceRange) -> list[InputFile]:
        """The files a batch of ``span`` reads: the Parquet files whose footers allow its ids, every CSV file.

        Otherwise every batch opens the footer of every file of the hour: at 100,000 devices
        in 10 files a worker's first batch took 17 MB more than at 10,000 in one.
        """
        return [f for f in self.files if f.path not in self.devices or span.reads(self.devices[f.path])]


@dataclass(frozen=True)
class DeviceRange:
    """The device ids one batch reads, ``start <= device < stop``; ``None`` leaves that end open.

    Batches split the ids between them (:func:`scoring.batch.device_ranges`), so every
    device in the hour's files is read by exactly one batch, whether it has a model or
    not. Rows without a device id are read by the range open at the top: writers sort
    them last.
    """

    start: str | None = None
    stop: str | None = None

    @classmethod
    def around(cls, devices: Collection[str]) -> DeviceRange:
        """The narrowest range holding ``devices``; ``last + "\\0"`` is the smallest id after the last."""
        if not devices:
            return cls("", "")
        return cls(min(devices), max(devices) + "\0")

    @property
    def anonymous(self) -> bool:
        """Whether rows without a device id belong to this range."""
        return self.stop is None

    def groups(self, stats: DeviceStats) -> list[int]:
        """The row groups of a Parquet file that may hold rows of the range."""
        return np.flatnonzero(self._hits(stats)).tolist()

    def reads(self, stats: DeviceStats) -> bool:
        """Whether a Parquet file with these statistics may hold rows of the range."""
        return bool(self._hits(stats).any())

    def _hits(self, stats: DeviceStats) -> np.ndarray:
        """Whether each row group may hold rows of the range."""
        hit = ~stats.known | (stats.nulls & self.anonymous)
        overlap = stats.ids.copy()
        # Ids compared as Python strings: NumPy would make "a\0" a NumPy string, which drops trailing NULs.
        if self.start is not None:
            overlap &= stats.high >= np.array(self.start, dtype=object)
        if self.stop is not None:
            overlap &= stats.low < np.array(self.stop, dtype=object)
        return hit | overlap

    def holds(self, device: str) -> bool:
        """Whether one device id is in the range."""
        return (self.start is None or device >= self.start) and (self.stop is None or device < self.stop)


@dataclass(frozen=True)
class DeviceStats:
    """Each row group's smallest and largest device id, from a Parquet footer.

    ``ids`` is true where a group holds ids between ``low`` and ``high``; ``nulls`` where
    it may hold rows without an id; ``known`` is false where its statistics say neither
    (every range reads such a group).
    """

    low: np.ndarray
    high: np.ndarray
    ids: np.ndarray
    nulls: np.ndarray
    known: np.ndarray

    @classmethod
    def of(cls, metadata: pq.FileMetaData, column: int) -> DeviceStats:
        chunks = [metadata.row_group(i).column(column) for i in range(metadata.num_row_groups)]
        stats = [c.statistics for c in chunks]
        ids = np.array([s is not None and s.has_min_max for s in stats], dtype=bool)
        counted = [s is not None and s.has_null_count for s in stats]
        nulls = np.array([not n or s.null_count > 0 for s, n in zip(stats, counted)], dtype=bool)
        only_nulls = np.array([n and s.null_count == c.num_values for s, n, c in zip(stats, counted, chunks)], dtype=bool)
        low = np.array([s.min if i else "" for s, i in zip(stats, ids)], dtype=object)
        high = np.array([s.max if i else "" for s, i in zip(stats, ids)], dtype=object)
        return cls(low, high, ids, nulls, ids | only_nulls)

    def whole(self) -> DeviceStats:
        """The file as a single row group: it may hold a range wherever one of its groups may."""
        lows, highs = self.low[self.ids], self.high[self.ids]
        return DeviceStats(np.array([min(lows, default="")], dtype=object),
                           np.array([max(highs, default="")], dtype=object),
                           np.array([self.ids.any()]), np.array([self.nulls.any()]), np.array([self.known.all()]))


@dataclass(frozen=True)
class _Footer:
    """What a batch needs of a Parquet file before reading a row: its schema, column names and device statistics."""

    schema: pa.Schema
    names: dict[str, str]
    devices: DeviceStats

    @classmethod
    def of(cls, rel: str, metadata: pq.FileMetaData) -> _Footer:
        """The footer of file ``rel``, its schema checked as telemetry's (else :class:`UnreadableFile`)."""
        schema = metadata.schema.to_arrow_schema()
        names = _check_schema(rel, schema)
        return cls(schema, names, DeviceStats.of(metadata, schema.get_field_index(names["device"])))


@dataclass
class Rows:
    """A batch's telemetry: rows that met the contract, rows that did not, and the devices seen.

    ``table`` holds ``ts, device, tag, value, file`` (ids and files as dictionaries), as
    :func:`~scoring.features.to_features` takes them; ``quarantined`` the bad rows as
    strings with ``reason`` and ``file``; ``devices`` every device id in the range read,
    kept or not, so devices without a model are named.
    """

    table: pa.Table
    quarantined: pd.DataFrame
    devices: list[str]

    @cached_property
    def rows(self) -> pd.DataFrame:
        """The valid rows as a frame, ids and files as categories (no string per row)."""
        return self.table.to_pandas()


def hour_files(store: Store, hour: datetime) -> list[InputFile]:
    """The hour's telemetry files, or ``FileNotFoundError`` naming the folder."""
    folder = layout.telemetry_dir(hour)
    files = [InputFile(e["path"], e["size"], e["version"]) for e in store.list_detail(folder)
             if e["path"].endswith((".parquet", ".csv"))]
    if not files:
        raise FileNotFoundError(f"no telemetry for {layout.hour_label(hour)}: {store.url_of(folder)} holds no .parquet or .csv")
    return files


def inputs_changed(store: Store, hour: datetime, recorded: Sequence[dict]) -> bool:
    """Whether the hour's files differ from those a commit recorded (path, size and version)."""
    try:
        now = [asdict(f) for f in hour_files(store, hour)]
    except FileNotFoundError:
        now = []
    return now != sorted(recorded, key=lambda f: f["path"])


def scan_hour(store: Store, hour: datetime) -> HourScan:
    """List the hour's files and check that each can be read as telemetry, reading no Parquet row.

    A Parquet file is checked from its footer (schema), whatever its size, and its device
    statistics kept; a CSV file (the original sample's format, small) is parsed. A file
    that cannot be read (empty, not Parquet or CSV, columns missing) becomes a
    :class:`Failure` naming it; storage errors are raised, to be retried.
    """
    scan = HourScan([], [])
    for entry in hour_files(store, hour):
        try:
            devices = _check_file(store, entry)
        except UnreadableFile as exc:
            scan.unreadable.append(Failure(None, exc.reason, exc.file))
            continue
        scan.files.append(entry)
        if devices is not None:
            scan.devices[entry.path] = devices
    return scan


def _check_file(store: Store, entry: InputFile) -> DeviceStats | None:
    """A Parquet file's device ids as one group, checked from its footer; ``None`` for CSV, checked whole.

    Raises :class:`UnreadableFile` unless the file looks like telemetry.
    """
    if entry.size == 0:
        raise UnreadableFile(entry.path, "file is empty (0 bytes)")
    if entry.path.endswith(".csv"):
        _read_csv(store, entry.path)
        return None
    with _parse_errors(entry.path):
        return _Footer.of(entry.path, pq.read_metadata(store.path(entry.path), filesystem=store.fs)).devices.whole()


def hour_devices(store: Store, scan: HourScan) -> list[str]:
    """Every device id in the scan's files, reading their device columns: what training shards by."""
    devices: set[str] = set()
    for entry in scan.files:
        with _parse_errors(entry.path):
            if (table := _read_file(store, entry, DeviceRange(), ("device",))) is not None:
                devices.update(pc.unique(table["device"]).to_pylist())
    return sorted(d for d in devices if d is not None)


@contextmanager
def _parse_errors(rel: str) -> Iterator[None]:
    """Errors of the file's content (not of the storage) as :class:`UnreadableFile`."""
    try:
        yield
    except UnreadableFile:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError,
            UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UnreadableFile(rel, f"not readable as Parquet or CSV telemetry: {type(exc).__name__}: {exc}") from None


def _check_columns(rel: str, names: Sequence[str]) -> dict[str, str]:
    """The file's name of each telemetry column (``TS``, ``Device``... in the sample's CSV), or :class:`UnreadableFile`."""
    found = {n.lower(): n for n in names if isinstance(n, str)}
    missing = [c for c in LONG_COLUMNS if c not in found]
    if missing:
        raise UnreadableFile(rel, f"lacks column(s) {missing}; expected {list(LONG_COLUMNS)}")
    return {c: found[c] for c in LONG_COLUMNS}


def _is_text(kind: pa.DataType) -> bool:
    """Text ids, plain or dictionary-encoded (as Parquet files written from pandas categoricals hold them)."""
    return is_text(kind.value_type if pa.types.is_dictionary(kind) else kind)


def _check_schema(rel: str, schema: pa.Schema) -> dict[str, str]:
    """A Parquet file's telemetry columns, checked: batches compare device ids as text."""
    names = _check_columns(rel, schema.names)
    kind = schema.field(names["device"]).type
    if not _is_text(kind):
        raise UnreadableFile(rel, f"column {names['device']} holds {kind}, not text device ids")
    return names


def write_hour(store: Store, hour: datetime, frame: pd.DataFrame, name: str = "part-00000") -> str:
    """Write one hour as Parquet sorted by device, so readers can prune row groups.

    Rows are written as given, bad ones too (NaN values, odd ids): telling them
    apart is the reader's job, as it is with what real devices send.
    """
    rows = frame.rename(columns={c: c.lower() for c in frame.columns})[list(LONG_COLUMNS)]
    # Plain strings, not dictionaries (pandas categoricals): a batch's device-range filter and its
    # string columns then cost what they did (dictionary columns made a batch's read 8x slower).
    rows = rows.astype({"device": "string", "tag": "string"})
    table = pa.Table.from_pandas(rows.sort_values(["device", "ts", "tag"], kind="stable"), preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS)
    rel = f"{layout.telemetry_dir(hour)}/{name}.parquet"
    store.write(rel, buffer.getvalue())
    return rel


def _read_csv(store: Store, rel: str) -> pa.Table:
    """A CSV file's telemetry columns as text, or :class:`UnreadableFile`."""
    with _parse_errors(rel), store.fs.open(store.path(rel), "rb") as f:
        frame = pd.read_csv(f, dtype=str)
    names = _check_columns(rel, frame.columns)
    return pa.table({c: pa.array(frame[names[c]].astype(object), pa.string()) for c in LONG_COLUMNS})


@lru_cache(maxsize=64)
def _footer(store: Store, entry: InputFile) -> _Footer:
    """A Parquet file's footer, checked once per worker process for each version of the file.

    Every batch whose range a file may hold reads it: at 100,000 devices a file's footer
    (256 kB, 560 row groups' statistics, 6 ms to read and check) serves 50 batches. The
    key holds the file's size and etag (or mtime), so a file replaced since is read again,
    on a long-lived cluster too. Only what every batch needs is kept for every file (the
    statistics as arrays, some kB); the parsed footer is :func:`_metadata`'s.
    """
    return _Footer.of(entry.path, _metadata(store, entry))


@lru_cache(maxsize=4)
def _metadata(store: Store, entry: InputFile) -> pq.FileMetaData:
    """A Parquet file's parsed footer, for the few files being read.

    About 2 MB each for a 10,000-device file: kept for every file of the hour it made a
    worker grow with the fleet. A batch reads the one or two files that hold its range, and
    workers take batches in device order, so four cover the files in use.
    """
    return pq.read_metadata(store.path(entry.path), filesystem=store.fs)


def _read_file(store: Store, entry: InputFile, span: DeviceRange,
               columns: Sequence[str] = LONG_COLUMNS) -> pa.Table | None:
    """One file's rows that may be in ``span``, columns named as :data:`LONG_COLUMNS`, text ids as :data:`IDS`.

    Parquet: only the row groups whose device statistics overlap the range are read,
    so the table may hold some rows of neighbouring devices, and ``None`` when no group
    does (the file is not opened); CSV: the whole file. Every id column comes as one
    chunk with one dictionary.
    """
    rel = entry.path
    if rel.endswith(".csv"):
        table = _read_csv(store, rel).select(list(columns))
    else:
        with _parse_errors(rel):
            footer = _footer(store, entry)
            groups = span.groups(footer.devices)
            if not groups:
                return None
            names = footer.names
            texts = [names[c] for c in columns if c in ("device", "tag") and _is_text(footer.schema.field(names[c]).type)]
            with pq.ParquetFile(store.path(rel), filesystem=store.fs, metadata=_metadata(store, entry),
                                read_dictionary=texts) as parquet:
                # One thread: a worker runs one batch per core already, and Arrow's pool on top cost 20 %.
                table = parquet.read_row_groups(groups, columns=[names[c] for c in columns], use_threads=False)
        table = table.rename_columns(list(columns))
    for name in ("device", "tag"):
        if name in columns and _is_text(table.schema.field(name).type):
            table = table.set_column(table.schema.get_field_index(name), name, _ids(table[name]))
    return table.unify_dictionaries().combine_chunks()


def _ids(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A text column (plain or dictionary) as :data:`IDS`."""
    return (column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)).cast(IDS)


def _selected(table: pa.Table, span: DeviceRange, keep: Collection[str] | None) -> tuple[pa.Table, list[str]]:
    """The rows of the range (of its devices in ``keep`` only, if given) and every device id of the range.

    Decided once per name of the ids' dictionary, then looked up per row by code. Rows
    without a device id are kept when the range takes them.
    """
    device = table["device"].chunk(0) if table["device"].num_chunks else pa.array([], IDS)
    names = device.dictionary.to_pylist()
    inside = [span.holds(n) for n in names]
    chosen = np.array([i and (keep is None or n in keep) for n, i in zip(names, inside)] + [span.anonymous])
    rows = chosen[device.indices.fill_null(len(names)).to_numpy()]
    seen = [n for n, i in zip(names, inside) if i]
    return (table if rows.all() else table.filter(pa.array(rows))), seen


def _validated(table: pa.Table) -> tuple[pa.Table, pd.DataFrame]:
    """Rows that meet the contract (as :data:`VALID`) and the quarantined rows, cheaply where it can be.

    Typed rows (timestamps, text ids, float values) with every field present and a
    finite value meet the contract as they are and stay in Arrow. Any other row, and
    every row of a file of other types (CSV text), goes through
    :func:`~scoring.features.validate`, which alone decides the rest and names the reasons.
    """
    schema = table.schema
    typed = (pa.types.is_timestamp(schema.field("ts").type) and pa.types.is_floating(schema.field("value").type)
             and _is_text(schema.field("device").type) and _is_text(schema.field("tag").type))
    if typed:
        plain = pc.and_(pc.and_(table["ts"].is_valid(), table["device"].is_valid()),
                        pc.and_(table["tag"].is_valid(), pc.is_finite(table["value"]).fill_null(False)))
        if pc.all(plain).as_py() is not False:  # the usual case: nothing to set aside (and no row)
            return table.cast(VALID), _NO_QUARANTINE
        good, rest = table.filter(plain).cast(VALID), table.filter(pc.invert(plain))
    else:
        good, rest = VALID.empty_table(), table
    valid, quarantined = validate(rest.to_pandas())
    valid = pa.Table.from_pandas(valid, preserve_index=False)
    valid = pa.table([valid["ts"], _ids(valid["device"]), _ids(valid["tag"]), valid["value"]], schema=VALID)
    return pa.concat_tables([good, valid]), quarantined


_NO_QUARANTINE = validate(pd.DataFrame(columns=list(LONG_COLUMNS)))[1].assign(file=pd.array([], "string"))
"""The quarantine's columns and types when no row is bad (shared: never modified)."""


def read_rows(store: Store, files: Sequence[InputFile], span: DeviceRange = DeviceRange(),
              keep: Collection[str] | None = None) -> Rows:
    """The rows of ``span`` in some telemetry files, validated; only devices in ``keep`` (within ``span``) if given.

    Rows of other devices are neither validated nor quarantined (their devices are only
    listed), nor are rows without a device id unless the range takes them. Raises
    :class:`UnreadableFile` when a file cannot be read as telemetry at all.
    """
    keep = None if keep is None else set(keep)
    good, read, bad, seen = [], [], [], set()
    for entry in files:
        with _parse_errors(entry.path):
            if (table := _read_file(store, entry, span)) is None:
                continue
            rows, devices = _selected(table, span, keep)
            seen.update(devices)
            valid, quarantined = _validated(rows)
        good.append(valid)
        read.append(entry.path)
        if len(quarantined):
            bad.append(quarantined.assign(file=entry.path))
    return Rows(_table(good, read), pd.concat(bad, ignore_index=True) if bad else _NO_QUARANTINE, sorted(seen))


def _table(tables: Sequence[pa.Table], files: Sequence[str]) -> pa.Table:
    """Valid rows of several files as one table, with each row's file.

    The file, a dictionary too, lets rows quarantined later (outside the hour, conflicts) still name it.
    """
    table = pa.concat_tables([VALID.empty_table(), *tables]).unify_dictionaries()
    codes = np.repeat(np.arange(len(tables), dtype=np.int32), [t.num_rows for t in tables])
    file = pa.DictionaryArray.from_arrays(codes, pa.array(list(files), pa.string()))
    return table.append_column("file", file)


def read_hour(store: Store, hour: datetime, devices: Sequence[str] | None = None) -> pd.DataFrame:
    """The hour's valid telemetry (of ``devices`` only, if given) from its readable files.

    Files that cannot be read are left out here; :func:`scan_hour` names them. No scan is made:
    one per training shard or per device would check every file again.
    """
    span = DeviceRange() if devices is None else DeviceRange.around(devices)
    frames = []
    for entry in hour_files(store, hour):
        try:
            frames.append(read_rows(store, [entry], span, devices).rows)
        except UnreadableFile:
            continue
    rows = pd.concat(frames or [read_rows(store, []).rows], ignore_index=True)
    return rows.drop(columns="file").astype({"device": "string", "tag": "string"})
