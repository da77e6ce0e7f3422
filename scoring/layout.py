"""The storage layout of a fleetscore store, as documented in README "Storage layout".

Every path the code reads or writes is built here, relative to the store root,
so the contract lives in one place. Nothing in this module touches a file.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Device ids and tags become path segments, so they are checked against this first."""

TELEMETRY = "telemetry"
MODELS = "models"
MODELS_LIVE = f"{MODELS}/live.json"
"""The pointer to the live model version: the only model file ever overwritten, and written last."""
GENERATED = "generated"
TABLES = "tables"
TABLE_NAMES = ("predictions", "device_hours", "errors", "quarantine")
"""The Delta Lake tables of scored hours, in the order an hour's commit writes them (see scoring.tables)."""
PARTITION_COLUMNS = ("date", "hour")


def check_id(value: str, what: str = "device") -> str:
    """Return ``value`` if it is a safe device id or tag, else raise ``ValueError``.

    Ids end up in file names; ``../x``, empty or huge ids must never reach a path.
    """
    if not isinstance(value, str) or not DEVICE_ID.fullmatch(value) or ".." in value:
        shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
        raise ValueError(
            f"invalid {what} id {shown!r}: ids must match {DEVICE_ID.pattern} and not contain '..'"
        )
    return value


def parse_hour(value: str | datetime) -> datetime:
    """Parse ``YYYY-MM-DDTHH`` (or any ISO time, or a datetime) to the start of its UTC hour."""
    if isinstance(value, str):
        text = value.strip().replace(" ", "T")
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}", text):
            text += ":00"
        value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def last_full_hour(now: datetime | None = None) -> datetime:
    """The most recent hour that has fully passed, in UTC."""
    now = now or datetime.now(timezone.utc)
    return parse_hour(now) - timedelta(hours=1)


def hour_range(start: datetime, end: datetime) -> list[datetime]:
    """Hours from ``start`` to ``end`` inclusive."""
    start, end = parse_hour(start), parse_hour(end)
    if end < start:
        raise ValueError(f"hour range ends ({end:%Y-%m-%dT%H}) before it starts ({start:%Y-%m-%dT%H})")
    return [start + timedelta(hours=i) for i in range(int((end - start) / timedelta(hours=1)) + 1)]


def span(hours: list[datetime]) -> tuple[datetime, datetime]:
    """The window covered by some hours: start of the first, end (exclusive) of the last."""
    return min(hours), max(hours) + timedelta(hours=1)


def hour_label(hour: datetime) -> str:
    """``2026-11-27T13``: how an hour is named in logs, run names and parameters."""
    return f"{parse_hour(hour):%Y-%m-%dT%H}"


def partition_values(hour: datetime) -> dict[str, str]:
    """An hour's partition columns as strings: ``{"date": "YYYY-MM-DD", "hour": "HH"}``."""
    hour = parse_hour(hour)
    return dict(zip(PARTITION_COLUMNS, (f"{hour:%Y-%m-%d}", f"{hour:%H}")))


def partition(hour: datetime) -> str:
    """Hive-style partition of an hour: ``date=YYYY-MM-DD/hour=HH``."""
    return "/".join(f"{k}={v}" for k, v in partition_values(hour).items())


def telemetry_dir(hour: datetime) -> str:
    return f"{TELEMETRY}/{partition(hour)}"


def version_dir(version: str) -> str:
    """``models/v=<version>``: everything of one model version, written once, never rewritten."""
    return f"{MODELS}/v={check_id(version, 'model version')}"


def manifest_file(version: str) -> str:
    """A version's manifest, written after every model file it names."""
    return f"{version_dir(version)}/manifest.json"


def signature_file(version: str) -> str:
    """The signature of a version's manifest bytes, when a signing key is configured."""
    return f"{version_dir(version)}/manifest.sig"


def table_dir(name: str) -> str:
    """``tables/<name>``: the root of one Delta Lake table (its ``_delta_log`` and partitions)."""
    if name not in TABLE_NAMES:
        raise ValueError(f"unknown table {name!r}: fleetscore's tables are {', '.join(TABLE_NAMES)}")
    return f"{TABLES}/{name}"


def table_partition(name: str, hour: datetime) -> str:
    """``tables/<name>/date=.../hour=...``: the folder of an hour's data files, committed or not."""
    return f"{table_dir(name)}/{partition(hour)}"


def table_file(name: str, hour: datetime, digest: str) -> str:
    """``tables/<name>/date=.../hour=.../part-<digest>.parquet``: a data file named after its content.

    The same rows give the same name, so a batch run twice writes one file.
    """
    if not re.fullmatch(r"[0-9a-f]{16,64}", digest):
        raise ValueError(f"a data file is named by a hex digest of its content, got {digest!r}")
    return f"{table_partition(name, hour)}/part-{digest}.parquet"


def model_file(version: str, device: str, tag: str | None, suffix: str) -> str:
    """``models/v=<version>/<device><suffix>``, or ``.../<device>/<tag><suffix>`` for per-sensor models."""
    name = check_id(device) if tag is None else f"{check_id(device)}/{check_id(tag, 'tag')}"
    return f"{version_dir(version)}/{name}{suffix}"


def pack_file(version: str, shard: int) -> str:
    """A model pack: many models in one blob, so a batch reads its models in one request."""
    return f"{version_dir(version)}/packs/pack-{shard:05d}.zip"


def anomalies_file(hour: datetime) -> str:
    """Where ``fleetscore generate`` records the anomalies it injected into an hour."""
    return f"{GENERATED}/{partition(hour)}/anomalies.parquet"
