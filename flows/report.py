"""What a run tells its users: a summary dict, a log line, and Prefect artifacts for the UI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from cluster.config import setting
from flows.picture import heatmap_svg, markdown_image, minute_shares
from scoring import alerts, layout
from scoring.batch import BatchResult
from scoring.records import Failure
from scoring.store import Store

TOP_DEVICES = 20
DEVICES_PICTURED = 25
FAILURES_SHOWN = 50
ALERTS_NAMED = 10
ALERT_COLUMNS = ("device", "tag", "anomalies", "longest_run", "min_score", "coverage", "rows")


class TooManyFailures(RuntimeError):
    """More devices failed than the configured share allows; the hour is still committed."""


def device_hours(results: Sequence[BatchResult]) -> pd.DataFrame:
    """The hour's per-device-hour rows over all batches (one per model; see :mod:`scoring.alerts`)."""
    frames = [alerts.device_hours([]), *(r.device_hours for r in results)]  # typed even with no batch
    return pd.concat(frames, ignore_index=True).sort_values(["device", "tag"], ignore_index=True)


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The alert columns of some device-hours as JSON-ready records (missing values as ``None``)."""
    shown = rows[list(ALERT_COLUMNS)].astype(object)
    return shown.where(shown.notna(), None).to_dict("records")


def _named(devices: list[str]) -> str:
    """The first devices of a list, for a one-line summary field."""
    return ", ".join(devices[:ALERTS_NAMED]) + (" ..." if len(devices) > ALERTS_NAMED else "")


def in_alert(device_hours: pd.DataFrame) -> pd.DataFrame:
    """Rows in alert, the most anomalous first: what an operator looks at first."""
    rows = device_hours[device_hours["alert"]]
    return rows.sort_values(["longest_run", "anomalies", "min_score"], ascending=[False, False, True])


def silent(device_hours: pd.DataFrame) -> list[str]:
    """Devices with a model and not a single reading this hour."""
    return sorted(set(device_hours.loc[device_hours["status"] == "silent", "device"]))


def summary(store: Store, hour: datetime, marker: dict[str, Any], failures: Sequence[Failure],
            device_hours: pd.DataFrame, seconds: float, dashboard: str | None, peak_workers: int) -> dict[str, Any]:
    """The run's outcome as plain data, devices that need a look first: returned by the flow and shown in the UI.

    ``peak_workers`` is the largest cluster seen during the run: an adaptive
    cluster ends smaller than it grew, and the peak is what sizing needs.
    """
    alerting = list(dict.fromkeys(in_alert(device_hours)["device"]))
    quiet = silent(device_hours)
    scored = device_hours[device_hours["status"] == "scored"]
    return {
        "hour": layout.hour_label(hour),
        "devices_in_alert": len(alerting),
        "alerts": _named(alerting),
        "devices_silent": len(quiet),
        "silent": _named(quiet),
        "devices_scored": int(scored["device"].nunique()),
        "devices_failed": len({f.device for f in failures if f.device is not None} - set(quiet)),
        "files_unreadable": sum(f.device is None for f in failures),
        "mean_coverage": round(float(scored["coverage"].mean()), 4) if len(scored) else 0.0,
        "quarantined_rows": marker["quarantined_rows"],
        "models_scored": marker["models_scored"],
        "rows": marker["rows"],
        "anomalous_rows": marker["anomalies"],
        "predictions": store.url_of(layout.table_dir("predictions")),
        "seconds": round(seconds, 2),
        "largest_cluster_workers": peak_workers,
        "dashboard": dashboard,
    }


def one_line(summary: dict[str, Any]) -> str:
    return (
        f"{summary['hour']}: {summary['devices_in_alert']} devices in alert, {summary['devices_silent']} silent, "
        f"{summary['devices_scored']} scored (mean coverage {summary['mean_coverage']:.1%}), "
        f"{summary['devices_failed']} failed, {summary['seconds']:.1f}s; predictions in {summary['predictions']}"
    )


def _cell(key: str, value: Any) -> str:
    """A summary value as markdown; the dashboard as a link (it lives only as long as the cluster)."""
    if key == "dashboard" and value:
        return f"[{value}]({value}) (while the run lasted)"
    return str(value)


def _markdown(summary: dict[str, Any], device_hours: pd.DataFrame, failures: Sequence[Failure]) -> str:
    """The summary artifact: devices that need a look first, then the figures, then what failed."""
    alerting = in_alert(device_hours)
    lines = [f"# Fleet scoring {summary['hour']} UTC", "",
             f"**{summary['devices_in_alert']} devices in alert, {summary['devices_silent']} silent** "
             f"of {summary['devices_scored'] + summary['devices_failed'] + summary['devices_silent']}.", ""]
    if len(alerting):
        lines += [f"## In alert ({summary['devices_in_alert']} devices)", "", "| " + " | ".join(ALERT_COLUMNS) + " |",
                  "|" + "---|" * len(ALERT_COLUMNS)]
        lines += ["| " + " | ".join(_value(row[c]) for c in ALERT_COLUMNS) + " |"
                  for row in alerting.head(TOP_DEVICES).to_dict("records")]
    if summary["devices_silent"]:
        lines += ["", f"## Silent ({summary['devices_silent']})", "", "No reading this hour: " + summary["silent"]]
    lines += ["", "## Figures", "", "| | |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {_cell(k, v)} |" for k, v in summary.items()]
    if failures:
        lines += ["", f"## Failed ({len(failures)})", "", "| device | tag | file | reason |", "|---|---|---|---|"]
        lines += [f"| {(f.device if f.device is not None else '(file)')[:60]} | {f.tag or ''} | {f.file} | "
                  f"{f.reason[:200]} |" for f in failures[:FAILURES_SHOWN]]
    return "\n".join(lines)


def _value(value: Any) -> str:
    """A table cell: numbers short, missing values blank."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def pictured_devices(device_hours: pd.DataFrame) -> list[str]:
    """Devices shown in the picture: those in alert, each once (per-sensor models share a device)."""
    return list(dict.fromkeys(in_alert(device_hours)["device"]))[:DEVICES_PICTURED]


def anomaly_map(hour: datetime, device_hours: pd.DataFrame) -> str | None:
    """Markdown with a heat map of the devices in alert per minute over the hour; ``None`` when none is.

    Drawn from the device-hour rows alone, whatever the fleet size: nothing is read back.
    """
    devices = pictured_devices(device_hours)
    return _picture(hour, minute_shares(device_hours, devices)) if devices else None


def _picture(hour: datetime, shares: pd.DataFrame) -> str:
    """Markdown with the heat map of ``shares`` (devices by minute) over the hour."""
    label = layout.hour_label(hour)
    svg = heatmap_svg(shares, f"Share of anomalous rows per minute, {label} UTC, {len(shares)} devices in alert")
    return "\n".join([f"# Anomalies per device, {label} UTC", "",
                      markdown_image(svg, f"anomalies per device and minute in {label}"), "",
                      "Red: share of the minute's rows flagged; grey: normal; blank: no data."])


def publish(summary: dict[str, Any], device_hours: pd.DataFrame, failures: Sequence[Failure],
            picture: str | None = None) -> None:
    """Markdown summary, a table of the devices in alert and the picture, attached to the flow run."""
    key = f"score-{summary['hour'].lower().replace(':', '-')}"
    create_markdown_artifact(_markdown(summary, device_hours, failures), key=f"{key}-summary",
                             description=f"Fleet scoring summary for {summary['hour']}")
    create_table_artifact(_records(in_alert(device_hours).head(TOP_DEVICES)), key=f"{key}-devices-in-alert",
                          description=f"Devices in alert in {summary['hour']}")
    if picture:
        create_markdown_artifact(picture, key=f"{key}-anomaly-map",
                                 description=f"Anomalies per device and minute in {summary['hour']}")


def _per_device(rows: pd.DataFrame, limit: int) -> dict[str, list[dict[str, Any]]]:
    """The first ``limit`` devices of ``rows``, in their order, each with its models' alert columns."""
    devices = list(dict.fromkeys(rows["device"]))[:limit]
    models: dict[str, list[dict[str, Any]]] = {device: [] for device in devices}
    for record in _records(rows[rows["device"].isin(devices)]):  # one conversion, not one per device
        models[record["device"]].append(record)
    return models


def emit_alerts(summary: dict[str, Any], device_hours: pd.DataFrame, limit: int | None = None) -> None:
    """Prefect events an Automation can notify a team of: per device, and one for the fleet's hour.

    One ``fleetscore.device.alert`` per device in alert, the most anomalous first, and one
    ``fleetscore.device.silent`` per silent device, the device as the resource, up to ``limit``
    devices of each kind (default ``fleetscore.events.max-devices``): a run's events are a
    fixed cost, and an hour with thousands of devices in alert is one incident, not thousands of
    notifications. Then one ``fleetscore.fleet.hour`` with the hour's counts and how many
    devices had an event, so an Automation can also match on the fleet as a whole.
    """
    limit = setting("events.max-devices", limit)
    silent_rows = device_hours[device_hours["status"] == "silent"].sort_values("device")
    counts: dict[str, dict[str, int]] = {}
    for kind, rows in (("alert", in_alert(device_hours)), ("silent", silent_rows)):
        devices = _per_device(rows, limit)
        for device, models in devices.items():
            emit_event(
                event=f"fleetscore.device.{kind}",
                resource={"prefect.resource.id": f"fleetscore.device.{device}", "prefect.resource.name": device},
                payload={"hour": summary["hour"], "predictions": summary["predictions"], "models": models},
            )
        counts[kind] = {"devices": int(rows["device"].nunique()), "events": len(devices)}
    emit_event(
        event="fleetscore.fleet.hour",
        resource={"prefect.resource.id": "fleetscore.fleet", "prefect.resource.name": summary["predictions"]},
        payload={"hour": summary["hour"], "predictions": summary["predictions"],
                 "devices_in_alert": counts["alert"]["devices"], "alert_events": counts["alert"]["events"],
                 "devices_silent": counts["silent"]["devices"], "silent_events": counts["silent"]["events"]},
    )


def enforce_failure_share(summary: dict[str, Any], max_share: float) -> None:
    """Fail the run (after committing) when too many devices failed."""
    lost = summary["devices_failed"] + summary["devices_silent"]
    total = summary["devices_scored"] + lost
    if total and lost / total > max_share:
        raise TooManyFailures(
            f"{lost} of {total} devices failed or were silent in {summary['hour']}, "
            f"more than fleetscore.scoring.max-failed-share={max_share}"
        )
