"""The Delta Lake tables of scored hours: write data files anywhere, commit an hour in one transaction.

Each table (``layout.TABLE_NAMES``) lives under ``tables/<name>`` in the store and
is partitioned by ``date`` and ``hour`` (strings, as in the folder names). Workers
write their own Parquet files into the hour's partition with :func:`write_file`,
in parallel and invisible to readers; the flow then calls :func:`commit_hour`,
which replaces the hour's previous rows in each table with those files in one
Delta transaction per table (``create_write_transaction`` in ``overwrite`` mode
with the hour as partition filter: delta-rs removes the hour's old files and
adds the new ones atomically, replaceWhere semantics, without rewriting data).

Delta Lake has no transaction across tables. Two commits of the same hour are
kept apart by an application transaction id per hour (``txn`` action,
``fleetscore-hour:<hour>``), which delta-rs's conflict checker refuses to let
two concurrent commits both set: the first table is the claim, and a run whose
claim loses, or whose claim a newer run overtook, stops with
:class:`HourConflict` instead of mixing its rows with the other run's.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema, Transaction
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction

from scoring import layout
from scoring.store import Store, is_text, sha256

METADATA_KEY = "fleetscore"
"""The commit-info key under which every commit records its hour, claim and the caller's metadata."""


class HourConflict(RuntimeError):
    """Another commit of the same hour won: this run's files stay invisible (vacuum removes them)."""


class TableLocation(NamedTuple):
    """A table's URI and the delta-rs storage options that open it (credentials: never log them)."""

    uri: str
    options: dict[str, str]

    def __repr__(self) -> str:
        return f"TableLocation({self.uri!r}, options={sorted(self.options)})"


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written into a table's hour partition, not part of the table until committed.

    Small and picklable: what a worker returns to the flow for the commit.
    """

    table: str
    rel: str
    size: int
    rows: int
    stats: str
    schema: pa.Schema

    @property
    def path(self) -> str:
        """The file's path relative to its table's root, as the Delta log names it."""
        return self.rel.removeprefix(f"{layout.table_dir(self.table)}/")


# ---------------------------------------------------------------------------- where a table lives

def _connection_string(text: str) -> dict[str, str]:
    """``AccountName``, ``AccountKey``, ``BlobEndpoint``... of an Azure connection string."""
    pairs = (part.split("=", 1) for part in text.split(";") if "=" in part)
    return {key.strip(): value.strip() for key, value in pairs}


def azure_options(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """delta-rs (object_store) Azure options from the ``AZURE_STORAGE_*`` variables adlfs reads.

    The same variables, in adlfs's order, so one environment opens the store and its
    tables: a connection string (parsed: object_store does not read one, and Azurite
    needs its endpoint and plain HTTP), an account key, a SAS token, a service principal,
    or, with the account name alone, the VM's managed identity (``AZURE_STORAGE_CLIENT_ID``
    or ``AZURE_CLIENT_ID`` picks a user-assigned one).
    """
    env = os.environ if env is None else env
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        parts = _connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
        if parts.get("UseDevelopmentStorage", "").lower() == "true":
            return {"use_emulator": "true"}
        options = {"account_name": parts.get("AccountName", "")}
        if parts.get("AccountKey"):
            options["account_key"] = parts["AccountKey"]
        if parts.get("SharedAccessSignature"):
            options["sas_token"] = parts["SharedAccessSignature"]
        if parts.get("BlobEndpoint"):
            options["azure_storage_endpoint"] = parts["BlobEndpoint"].rstrip("/")
            if parts["BlobEndpoint"].startswith("http://"):
                options["allow_http"] = "true"
        return options
    account = env.get("AZURE_STORAGE_ACCOUNT_NAME")
    if not account:
        raise ValueError("an az:// store needs AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME "
                         "(with a key, SAS token, service principal or managed identity), see README")
    options = {"account_name": account}
    client_id = env.get("AZURE_STORAGE_CLIENT_ID")
    if env.get("AZURE_STORAGE_ACCOUNT_KEY"):
        options["account_key"] = env["AZURE_STORAGE_ACCOUNT_KEY"]
    elif env.get("AZURE_STORAGE_SAS_TOKEN"):
        options["sas_token"] = env["AZURE_STORAGE_SAS_TOKEN"]
    elif client_id and env.get("AZURE_STORAGE_CLIENT_SECRET") and env.get("AZURE_STORAGE_TENANT_ID"):
        options |= {"client_id": client_id, "client_secret": env["AZURE_STORAGE_CLIENT_SECRET"],
                    "tenant_id": env["AZURE_STORAGE_TENANT_ID"]}
    else:
        options["use_managed_identity"] = "true"
        if client_id or env.get("AZURE_CLIENT_ID"):
            options["client_id"] = client_id or env["AZURE_CLIENT_ID"]
    return options


def location(store: Store, name: str) -> TableLocation:
    """Where table ``name`` of ``store`` lives for delta-rs: the one mapping from store URL and env.

    ``az://``, ``abfs://`` and ``abfss://`` stores (fsspec's ``container/prefix`` form) all
    become ``az://container/prefix/tables/<name>``, which delta-rs reads as container and path.
    """
    rel = layout.table_dir(name)
    if store.is_local:
        return TableLocation(os.path.abspath(store.path(rel)), {})
    scheme = urlsplit(store.url).scheme
    if scheme not in ("az", "abfs", "abfss"):
        raise ValueError(f"Delta tables need a local, az:// or abfs:// store, not {scheme}://")
    return TableLocation(f"az://{store.path(rel)}", azure_options())


def _open(store: Store, name: str) -> DeltaTable | None:
    where = location(store, name)
    try:
        return DeltaTable(where.uri, storage_options=where.options)
    except TableNotFoundError:
        return None


# ---------------------------------------------------------------------------- writing data files

def _arrow(frame: pd.DataFrame | pa.Table) -> pa.Table:
    """A frame (or a table built as Arrow) with Delta's types: timestamps in microseconds, no pandas index."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    if clash := set(table.column_names) & set(layout.PARTITION_COLUMNS):
        raise ValueError(f"columns {sorted(clash)} are the tables' partition columns; rename them")
    table = table.replace_schema_metadata(None)
    fields = [pa.field(f.name, pa.timestamp("us", f.type.tz)) if pa.types.is_timestamp(f.type) else f
              for f in table.schema]
    return table.cast(pa.schema(fields))


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def _stats(table: pa.Table) -> str:
    """Delta file statistics: row count, nulls, and min/max of numbers and strings (for data skipping).

    Timestamps get no min/max: engines disagree on their precision in stats, and a
    wrong bound would make a reader skip rows; the hour partition already bounds them.
    """
    stats: dict[str, Any] = {"numRecords": table.num_rows, "nullCount": {}, "minValues": {}, "maxValues": {}}
    for field, column in zip(decoded(table.schema), table.columns):
        stats["nullCount"][field.name] = column.null_count
        typed = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or is_text(field.type)
        if not typed or column.null_count == table.num_rows:
            continue
        low, high = (_json_value(v.as_py()) for v in pc.min_max(_values(column)).values())
        if low is not None and high is not None:
            stats["minValues"][field.name], stats["maxValues"][field.name] = low, high
    return json.dumps(stats)


def _values(column: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The values a column holds: for codes into a dictionary, the dictionary's entries that are used."""
    if not pa.types.is_dictionary(column.type):
        return column
    codes = column.combine_chunks()
    return codes.dictionary.take(pc.unique(codes.indices).drop_null())


def write_file(store: Store, name: str, hour: datetime, frame: pd.DataFrame | pa.Table) -> DataFile:
    """Write ``frame`` as one Parquet file into table ``name``'s partition of ``hour``; return it.

    Invisible to readers until :func:`commit_hour` adds it. Named after its content, so a
    batch that Dask runs twice writes one file. An empty frame gives an empty file, which
    carries the table's schema into a commit of an hour without rows.
    """
    table = _arrow(frame)
    schema = decoded(table.schema)
    sink = pa.BufferOutputStream()
    # Dictionary pages for text only: ids and digests repeat, scores and times hardly do, and trying
    # a dictionary on them cost more than half of writing a batch's predictions. Text given as codes
    # into a dictionary is written as it is; no Arrow schema is stored, so that every reader of the
    # file sees plain text whichever way it was given.
    pq.write_table(table, sink, use_dictionary=[f.name for f in schema if is_text(f.type)], store_schema=False)
    data = sink.getvalue().to_pybytes()
    rel = layout.table_file(name, hour, sha256(data)[:16])
    if not store.exists(rel):
        store.write(rel, data)
    return DataFile(name, rel, len(data), table.num_rows, _stats(table), schema)


def decoded(schema: pa.Schema) -> pa.Schema:
    """``schema`` with its dictionary columns as their values' type: what readers of a file see."""
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


# ---------------------------------------------------------------------------- committing an hour

def _app_id(hour: datetime) -> str:
    return f"fleetscore-hour:{layout.hour_label(hour)}"


def _delta_schema(files: Sequence[DataFile]) -> Schema:
    """The table schema of an hour's files (partition columns last); all files must agree."""
    schemas = [Schema.from_arrow(f.schema) for f in files]  # Delta's types: string and large_string agree
    if odd := next((i for i, s in enumerate(schemas) if s != schemas[0]), None):
        raise ValueError(f"{files[odd].rel} has the columns {files[odd].schema.types} where {files[0].rel} has "
                         f"{files[0].schema.types}: the files of one table must agree")
    partitions = [pa.field(column, pa.string()) for column in layout.PARTITION_COLUMNS]
    return Schema.from_arrow(pa.schema([*files[0].schema, *partitions]))


def _table(store: Store, name: str, schema: Schema) -> DeltaTable:
    """The table, created if absent (two runs creating it at once: one creates, both use it)."""
    where = location(store, name)
    try:
        return DeltaTable.create(where.uri, schema, partition_by=list(layout.PARTITION_COLUMNS), mode="ignore",
                                 storage_options=where.options)
    except DeltaError:  # the other run's version 0 won (CommitFailedError is a DeltaError)
        table = _open(store, name)
        if table is None:
            raise
        return table


def _ready_table(store: Store, name: str, files: Sequence[DataFile]) -> DeltaTable:
    """The table, ready to take ``files``: created if absent, and columns the files add, added.

    An added column is nullable, so the hours committed before it read as null (the
    ``minutes`` of device-hours written by an older fleetscore, say). A column the files
    lack or retype is refused: older hours would become unreadable or wrong.
    """
    schema = _delta_schema(files)
    table = _table(store, name, schema)
    have = {f.name: f for f in table.schema().fields}
    retyped = [f.name for f in schema.fields if f.name in have and f.type != have[f.name].type]
    lacking = sorted(set(have) - {f.name for f in schema.fields})
    if retyped or lacking:
        raise ValueError(f"table {name} has the schema {table.schema()}, the hour's files {schema}: they retype "
                         f"{retyped} and lack {lacking}; that needs a migration of the table, not a commit")
    if added := [f for f in schema.fields if f.name not in have]:
        try:
            table.alter.add_columns(added)
        except CommitFailedError:  # another run added them at once: use the table as it now is
            table.update_incremental()
            if {f.name for f in added} - {f.name for f in table.schema().fields}:
                raise
    return table


def _check_present(store: Store, hour: datetime, files: Sequence[DataFile]) -> None:
    """Refuse to commit a file that is not in storage: the table must never list a file readers cannot find."""
    folders = {f.rel.rsplit("/", 1)[0] for f in files}
    present = {rel for folder in folders for rel in store.list(folder)}
    missing = sorted(f.rel for f in files if f.rel not in present)
    if missing:
        raise RuntimeError(f"refusing to commit {layout.hour_label(hour)}: {len(missing)} written file(s) are not "
                           f"in storage, e.g. {store.url_of(missing[0])}; rerun the hour")


def _commit_table(table: DeltaTable, name: str, hour: datetime, files: Sequence[DataFile], claim: int | None,
                  metadata: Mapping[str, Any], attempts: int) -> int:
    """Replace the hour's rows of one table with ``files``; return the hour's claim number it committed.

    ``claim`` is ``None`` for the first table, whose commit takes the next claim number of
    the hour; later tables commit under that number unless a newer claim got there first.
    A conflict with anything else (another hour committed at once, a compaction of the day)
    is retried against the table's new version.
    """
    label = layout.hour_label(hour)
    adds = [AddAction(f.path, f.size, layout.partition_values(hour), int(time.time() * 1000), True, f.stats)
            for f in files]
    filters = [(column, "=", value) for column, value in layout.partition_values(hour).items()]
    read = table.transaction_version(_app_id(hour)) or 0
    for attempt in range(attempts):
        current = table.transaction_version(_app_id(hour)) or 0
        if claim is None and current != read or claim is not None and current >= claim:
            raise HourConflict(
                f"{label} was committed to table {name} by another run while this run was committing; "
                f"the hour holds that run's rows (see `fleetscore history --hour {label}`), this run's are "
                "not visible. Rerun the hour to replace them; runs of one hour should queue (README)")
        mine = current + 1 if claim is None else claim
        info = {METADATA_KEY: {**recorded(metadata, hour, mine), "table_files": len(files),
                               "table_rows": sum(f.rows for f in files)}}
        try:
            table.create_write_transaction(
                adds, mode="overwrite", schema=table.schema(), partition_by=list(layout.PARTITION_COLUMNS),
                partition_filters=filters,
                commit_properties=CommitProperties(custom_metadata=info,
                                                   app_transactions=[Transaction(_app_id(hour), mine)]))
            return mine
        except CommitFailedError:
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # jitter: racing commits do not retry in lockstep
            table.update_incremental()
    raise RuntimeError(f"could not commit {label} to table {name}: {attempts} attempts lost to concurrent "
                       "commits of the table; rerun the hour")


def commit_hour(store: Store, hour: datetime, files: Mapping[str, Sequence[DataFile]],
                metadata: Mapping[str, Any], attempts: int = 10) -> int:
    """Make an hour's files the hour's rows, one transaction per table, the first of ``layout.TABLE_NAMES`` first.

    Every table is opened (created, widened) before any commit, so a refused file commits
    no table. The first table's commit is the hour's claim; only once it is won are the
    other tables committed under its number, at once: each commit is a few storage round
    trips, during which delta-rs holds no GIL.

    Args:
        store: the store holding the tables.
        hour: the hour whose rows are replaced.
        files: for every table, the files written for the hour (at least one each: write an
            empty frame for a table without rows, so its schema is known).
        metadata: recorded in each commit (run id, model version, inputs read): no secrets.
        attempts: tries per table when other commits of the table keep winning.

    Returns:
        The hour's claim number: 1 for its first commit, then one more per rescoring.

    Raises:
        HourConflict: another run of the hour committed meanwhile; its rows are the hour's.
        RuntimeError: a file is missing from storage, or the table stayed too busy.
    """
    if unknown := set(files) - set(layout.TABLE_NAMES):
        raise ValueError(f"unknown tables {sorted(unknown)}: fleetscore's tables are {layout.TABLE_NAMES}")
    if empty := [n for n in layout.TABLE_NAMES if not files.get(n)]:
        raise ValueError(f"no file for table(s) {empty}: write an empty frame for a table without rows this hour")
    _check_present(store, hour, [f for n in layout.TABLE_NAMES for f in files[n]])
    first, *others = layout.TABLE_NAMES
    with ThreadPoolExecutor(len(layout.TABLE_NAMES)) as pool:
        ready = dict(zip(layout.TABLE_NAMES, pool.map(lambda n: _ready_table(store, n, files[n]), layout.TABLE_NAMES)))
        claim = _commit_table(ready[first], first, hour, files[first], None, metadata, attempts)
        list(pool.map(lambda n: _commit_table(ready[n], n, hour, files[n], claim, metadata, attempts), others))
    return claim


def committed(store: Store, hour: datetime) -> int | None:
    """The hour's claim number if its last commit reached every table, else ``None``."""
    claims = set()
    for name in layout.TABLE_NAMES:
        table = _open(store, name)
        claims.add(table and table.transaction_version(_app_id(hour)))
    return None if len(claims) != 1 else claims.pop()


# ---------------------------------------------------------------------------- reading

def _pandas_type(dtype: pa.DataType) -> Any:
    """Text as pandas' ``string`` dtype (missing is ``<NA>``), as fleetscore's frames do; the rest as Arrow maps."""
    if is_text(dtype):
        return pd.StringDtype()
    return None


def read_table(store: Store, name: str, hour: datetime) -> pd.DataFrame:
    """The committed rows of one hour of table ``name``, without the partition columns.

    Raises ``FileNotFoundError`` when the table holds no commit of the hour.
    """
    table = _open(store, name)
    if table is None or table.transaction_version(_app_id(hour)) is None:
        raise FileNotFoundError(f"{store.url_of(layout.table_dir(name))} has no commit of {layout.hour_label(hour)}")
    filters = [(column, "=", value) for column, value in layout.partition_values(hour).items()]
    frame = table.to_pandas(filters=filters, types_mapper=_pandas_type)
    return frame.drop(columns=list(layout.PARTITION_COLUMNS))


def history(store: Store, hour: datetime, name: str = "predictions") -> list[dict[str, Any]]:
    """The table versions that committed ``hour``, newest first, with the metadata each commit recorded.

    Read from the Delta log, so as far back as the log is kept (``delta.logRetentionDuration``, 30 days).
    """
    table = _open(store, name)
    label = layout.hour_label(hour)
    entries = [] if table is None else table.history()
    return [{"version": e["version"], "timestamp": pd.Timestamp(e["timestamp"], unit="ms", tz="UTC"),
             **e[METADATA_KEY]}
            for e in entries if isinstance(e.get(METADATA_KEY), dict) and e[METADATA_KEY].get("hour") == label]


def recorded(metadata: Mapping[str, Any], hour: datetime, claim: int) -> dict[str, Any]:
    """What commit ``claim`` of ``hour`` records beside each table's own counts, as :func:`commit_record` reads it.

    Through JSON, as the Delta log stores it: the committing run gets its record
    without reading its own commit back from the log.
    """
    return json.loads(json.dumps({**metadata, "hour": layout.hour_label(hour), "claim": claim}))


def commit_record(store: Store, hour: datetime, claim: int) -> dict[str, Any]:
    """What commit ``claim`` of ``hour`` recorded in the first table (the caller's metadata, hour, claim).

    Searched newest first in growing steps, so a recent hour costs a few log reads. Once the
    log has expired (30 days) only the hour and claim are known.
    """
    table = _open(store, layout.TABLE_NAMES[0])
    label = layout.hour_label(hour)
    for limit in (10, 200, None):
        entries = table.history(limit) if table is not None else []
        for entry in entries:
            info = entry.get(METADATA_KEY)
            if isinstance(info, dict) and info.get("hour") == label and info.get("claim") == claim:
                return {key: value for key, value in info.items() if not key.startswith("table_")}
        if limit is None or len(entries) < limit:
            break
    return {"hour": label, "claim": claim}


def hour_files(store: Store, hour: datetime) -> list[str]:
    """The layout paths of the data files every table's current version holds for ``hour``."""
    paths = []
    for name in layout.TABLE_NAMES:
        if (table := _open(store, name)) is not None:
            actions = pa.table(table.get_add_actions(flatten=True))
            part = layout.partition_values(hour)
            keep = pc.and_(pc.equal(actions["partition.date"], part["date"]), pc.equal(actions["partition.hour"],
                                                                                        part["hour"]))
            paths += [f"{layout.table_dir(name)}/{path}" for path in actions.filter(keep)["path"].to_pylist()]
    return sorted(paths)


# ---------------------------------------------------------------------------- housekeeping

def compact(store: Store, day: date | datetime) -> dict[str, dict[str, Any]]:
    """Merge each table's small files of one day into larger ones (a new version; same rows).

    Hours keep their claim numbers: compaction changes files, not rows.
    """
    value = f"{day:%Y-%m-%d}"
    metrics = {}
    for name in layout.TABLE_NAMES:
        if (table := _open(store, name)) is not None:
            metrics[name] = table.optimize.compact(partition_filters=[("date", "=", value)])
    return metrics


def vacuum(store: Store, retention: timedelta) -> dict[str, list[str]]:
    """Delete files that no version younger than ``retention`` needs; return them per table.

    Also deletes files never committed (a run that died before its commit) once older
    than ``retention``. That is why ``retention`` must exceed the longest run: a running
    hour's files are uncommitted too. Versions older than ``retention`` can no longer be read.
    """
    removed = {}
    for name in layout.TABLE_NAMES:
        if (table := _open(store, name)) is not None:
            removed[name] = table.vacuum(retention_hours=int(retention / timedelta(hours=1)), dry_run=False,
                                         enforce_retention_duration=False, full=True)
    return removed
