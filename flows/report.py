"""What a run tells its users: a summary dict, a log line, and Prefect artifacts for the UI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.picture import heatmap_svg, markdown_image, minute_shares
from scoring import layout
from scoring.batch import STAT_COLUMNS, BatchResult
from scoring.records import Failure
from scoring.store import Store

TOP_DEVICES = 20
DEVICES_PICTURED = 25
FAILURES_SHOWN = 50


class TooManyFailures(RuntimeError):
    """More devices failed than the configured share allows; the hour is still committed."""


def model_stats(results: Sequence[BatchResult]) -> pd.DataFrame:
    """Per-model rows, anomalies and lowest score over all batches."""
    frames = [r.stats for r in results if r.scored]
    if not frames:
        return pd.DataFrame(columns=list(STAT_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def summary(store: Store, hour: datetime, marker: dict[str, Any], failures: Sequence[Failure],
            stats: pd.DataFrame, seconds: float, dashboard: str | None, peak_workers: int) -> dict[str, Any]:
    """The run's outcome as plain data: returned by the flow and shown in the UI.

    ``peak_workers`` is the largest cluster seen during the run: an adaptive
    cluster ends smaller than it grew, and the peak is what sizing needs.
    """
    failed_devices = {f.device for f in failures}
    return {
        "hour": layout.hour_label(hour),
        "predictions": store.url_of(layout.predictions_dir(hour)),
        "models_scored": marker["models_scored"],
        "devices_scored": int(stats["device"].nunique()),
        "devices_failed": len(failed_devices),
        "rows": marker["rows"],
        "anomalies": marker["anomalies"],
        "devices_with_anomalies": int((stats.groupby("device")["anomalies"].sum() > 0).sum()),
        "seconds": round(seconds, 2),
        "largest_cluster_workers": peak_workers,
        "dashboard": dashboard,
    }


def one_line(summary: dict[str, Any]) -> str:
    return (
        f"{summary['hour']}: {summary['devices_scored']} devices scored, "
        f"{summary['anomalies']} anomalous rows on {summary['devices_with_anomalies']} devices, "
        f"{summary['devices_failed']} devices failed, {summary['seconds']:.1f}s; "
        f"predictions in {summary['predictions']}"
    )


def _cell(key: str, value: Any) -> str:
    """A summary value as markdown; the dashboard as a link (it lives only as long as the cluster)."""
    if key == "dashboard" and value:
        return f"[{value}]({value}) (while the run lasted)"
    return str(value)


def _markdown(summary: dict[str, Any], failures: Sequence[Failure]) -> str:
    lines = [f"# Fleet scoring {summary['hour']} UTC", "", "| | |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {_cell(k, v)} |" for k, v in summary.items()]
    if failures:
        lines += ["", f"## Failed ({len(failures)})", "", "| device | tag | file | reason |", "|---|---|---|---|"]
        lines += [f"| {f.device[:60]} | {f.tag or ''} | {f.file} | {f.reason[:200]} |"
                  for f in failures[:FAILURES_SHOWN]]
    return "\n".join(lines)


def most_anomalous(stats: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` models with most anomalous rows, lowest score first among equals."""
    return stats.sort_values(["anomalies", "min_score"], ascending=[False, True]).head(n)


def pictured_devices(stats: pd.DataFrame) -> list[str]:
    """Devices shown in the picture: the most anomalous, each once (per-sensor models share a device)."""
    return list(dict.fromkeys(most_anomalous(stats, len(stats))["device"]))[:DEVICES_PICTURED]


def anomaly_picture(hour: datetime, predictions: pd.DataFrame, devices: Sequence[str]) -> str:
    """Markdown with a heat map of anomalies per device and minute over the hour."""
    label = layout.hour_label(hour)
    svg = heatmap_svg(minute_shares(predictions, hour, devices),
                      f"Share of anomalous rows per minute, {label} UTC, {len(devices)} most anomalous devices")
    return "\n".join([f"# Anomalies per device, {label} UTC", "",
                      markdown_image(svg, f"anomalies per device and minute in {label}"), "",
                      "Red: share of the minute's rows flagged; grey: normal; blank: no data."])


def publish(summary: dict[str, Any], stats: pd.DataFrame, failures: Sequence[Failure],
            picture: str | None = None) -> None:
    """Markdown summary, a table of the most anomalous devices and the picture, attached to the flow run."""
    key = f"score-{summary['hour'].lower().replace(':', '-')}"
    create_markdown_artifact(_markdown(summary, failures), key=f"{key}-summary",
                             description=f"Fleet scoring summary for {summary['hour']}")
    top = most_anomalous(stats, TOP_DEVICES)
    create_table_artifact(top.astype({"tag": "object"}).where(top.notna(), None).to_dict("records"),
                          key=f"{key}-top-devices",
                          description=f"Most anomalous devices in {summary['hour']}")
    if picture:
        create_markdown_artifact(picture, key=f"{key}-anomaly-map",
                                 description=f"Anomalies per device and minute in {summary['hour']}")


def enforce_failure_share(summary: dict[str, Any], max_share: float) -> None:
    """Fail the run (after committing) when too many devices failed."""
    total = summary["devices_scored"] + summary["devices_failed"]
    if total and summary["devices_failed"] / total > max_share:
        raise TooManyFailures(
            f"{summary['devices_failed']} of {total} devices failed in {summary['hour']}, "
            f"more than fleetscore.scoring.max-failed-share={max_share}"
        )
